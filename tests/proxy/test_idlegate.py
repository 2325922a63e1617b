"""Secondary work yields to client requests (proxy.idlegate): on a real event loop, and wired
into the data path's HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from proxy.http1.server import HttpServer, Limits, Request, Responder
from proxy.idlegate import IdleGate
from proxy.supervisor import Supervisor
from tests.processes import wait_for
from tests.proxy.raw_http import read_response


def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return Supervisor("test").spawn(coro, name="piece")


class Passes:
    """Counts passes of the event loop: one tick per pass, from a task that yields each time."""

    def __init__(self) -> None:
        self.count = 0
        self._task = Supervisor("test").spawn(self._tick(), name="passes")

    async def _tick(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)

    def stop(self) -> None:
        self._task.cancel()


async def test_an_idle_loop_lets_a_piece_through_at_once():
    gate = IdleGate()
    await asyncio.wait_for(gate.turn(), timeout=1)
    assert (gate.idle, gate.overdue, gate.queued) == (0, 0, 0)  # it never waited


async def test_a_piece_waits_while_a_client_request_is_handled():
    gate = IdleGate(max_delay=30.0)  # only the request's end can let it through
    gate.enter()
    piece = spawn(gate.turn())
    await asyncio.sleep(0.05)
    assert not piece.done()
    assert gate.queued == 1
    gate.leave()
    await asyncio.wait_for(piece, timeout=1)
    assert (gate.idle, gate.overdue) == (1, 0)


async def test_a_piece_goes_after_max_delay_when_the_proxy_stays_busy():
    gate = IdleGate(max_delay=0.05)
    gate.enter()  # and never leaves: a saturated proxy still compares
    waited = asyncio.get_running_loop().time()
    await asyncio.wait_for(gate.turn(), timeout=2)
    assert asyncio.get_running_loop().time() - waited >= 0.04
    assert (gate.idle, gate.overdue) == (0, 1)


async def test_with_many_client_requests_in_flight_a_piece_goes_at_once():
    """No idle pass is coming (a saturated proxy, slow primaries holding requests open): waiting
    would only hold the comparison back and release it in a batch."""
    gate = IdleGate(max_delay=30.0, crowd=3)
    for _ in range(3):
        gate.enter()
    await asyncio.wait_for(gate.turn(), timeout=1)
    assert (gate.crowded, gate.queued, gate.overdue) == (1, 0, 0)
    gate.leave()  # two left: under the crowd, a piece waits again
    waiting = spawn(gate.turn())
    await wait_for(lambda: gate.queued == 1, what="the piece to queue")
    waiting.cancel()


async def test_waiting_pieces_run_one_per_pass_of_the_loop():
    """A clump of secondary work must not run back to back: between two pieces the loop polls
    its sockets, so a client request waits for one piece at most."""
    gate = IdleGate(max_delay=30.0)
    passes = Passes()
    ran_in: list[int] = []

    async def piece() -> None:
        await gate.turn()
        ran_in.append(passes.count)

    gate.enter()
    pieces = [spawn(piece()) for _ in range(20)]
    await wait_for(lambda: gate.queued == 20, what="the pieces to queue")
    gate.leave()
    await asyncio.wait_for(asyncio.gather(*pieces), timeout=5)
    passes.stop()
    assert len(ran_in) == 20
    assert len(set(ran_in)) == 20, f"two pieces ran in one pass: {ran_in}"
    assert gate.idle == 20


async def test_a_piece_woken_as_a_request_comes_in_waits_again():
    gate = IdleGate(max_delay=30.0)
    gate.enter()
    piece = spawn(gate.turn())
    await wait_for(lambda: gate.queued == 1, what="the piece to queue")
    gate.leave()
    await asyncio.sleep(0)  # the pump has woken it; it runs in the next pass ...
    gate.enter()  # ... but a client request came first: it looks again and waits
    await asyncio.sleep(0.05)
    assert not piece.done()
    assert gate.queued == 1
    gate.leave()
    await asyncio.wait_for(piece, timeout=1)


async def test_a_cancelled_piece_does_not_hold_up_the_others():
    gate = IdleGate(max_delay=30.0)
    gate.enter()
    first = spawn(gate.turn())
    second = spawn(gate.turn())
    await wait_for(lambda: gate.queued == 2, what="the pieces to queue")
    first.cancel()
    gate.leave()
    await asyncio.wait_for(second, timeout=1)
    assert first.cancelled()


async def test_the_http_server_tells_the_gate_while_it_handles_a_request():
    gate = IdleGate(max_delay=30.0)
    release = asyncio.Event()

    async def handler(request: Request, respond: Responder) -> None:
        await release.wait()
        respond.send(200, [], b"done")

    server = HttpServer(handler, Limits(), gate=gate)
    port = await server.start("127.0.0.1", 0, reuse_port=False)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_for(lambda: gate.busy == 1, what="the request to be handled")
        piece = spawn(gate.turn())
        await asyncio.sleep(0.05)
        assert not piece.done()  # the comparison waits for the client's answer
        release.set()
        response = await read_response(reader)
        assert response.status == 200
        await asyncio.wait_for(piece, timeout=1)
        assert gate.busy == 0
        writer.close()
    finally:
        await server.shutdown(1.0)
