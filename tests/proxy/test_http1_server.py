"""The data path's listener (proxy.http1.server) on a real socket: framing, keep-alive,
pipelining, refusals before any handler runs, limits and deadlines, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from proxy.errors import ClientGone, RequestRejected
from proxy.http1.server import HttpServer, Limits, Request, Responder
from tests.processes import wait_for
from tests.proxy.raw_http import closed, read_head, read_response


@dataclass
class App:
    """A handler with a few behaviours picked by path, and what it saw."""

    seen: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: list[str] = field(default_factory=list)

    async def __call__(self, request: Request, respond: Responder) -> None:
        self.seen.append(f"{request.method} {request.target}")
        path = request.path
        try:
            if path == "/echo":
                body = await request.read(10_000_000)
                doc = {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "version": request.version,
                    "length": len(body),
                    "body": body.decode("latin-1")[:100],
                }
                respond.send(200, [("Content-Type", "application/json")], orjson.dumps(doc))
            elif path == "/stream":
                respond.start(200, [("Content-Type", "text/plain")], length=None)
                for part in (b"one,", b"two,", b"three"):
                    await respond.write(part)
                await respond.end()
            elif path == "/block":
                await self.release.wait()
                respond.send(200, [], b"released")
            elif path == "/late":
                await self.release.wait()
                respond.start(200, [], length=None)
                for _ in range(100):
                    await respond.write(b"x" * 65536)
                await respond.end()
            elif path == "/big":
                respond.start(200, [], length=None)
                for _ in range(2000):  # 128 MB if anyone read it
                    await respond.write(b"y" * 65536)
                await respond.end()
            else:
                respond.send(200, [("Content-Type", "text/plain")], b"hello")
            self.outcomes.append("answered")
        except RequestRejected as exc:
            self.outcomes.append(exc.kind)
            respond.send(exc.status, [], str(exc).encode())
        except ClientGone:
            self.outcomes.append("client-gone")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    servers: list[HttpServer] = []

    async def start(limits: Limits | None = None) -> tuple[HttpServer, App, int]:
        app = App()
        server = HttpServer(app, limits or Limits())
        port = await server.start("127.0.0.1", 0, reuse_port=False)
        servers.append(server)
        return server, app, port

    yield start
    for server in servers:
        await server.shutdown(1.0)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_keep_alive_serves_several_requests_on_one_connection(serve):
    _, app, port = await serve()
    reader, writer = await connect(port)
    for n in range(3):
        writer.write(f"GET /echo?n={n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = await read_response(reader)
        assert response.status == 200
        assert orjson.loads(response.body)["query"] == f"n={n}"
        assert response.header("Connection") is None
    assert app.seen == ["GET /echo?n=0", "GET /echo?n=1", "GET /echo?n=2"]
    writer.close()


async def test_pipelined_requests_are_answered_in_order(serve):
    _, app, port = await serve()
    reader, writer = await connect(port)
    writer.write(
        b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await wait_for(lambda: app.seen == ["GET /block"], what="the first request")
    assert app.seen == ["GET /block"], "the next ones wait for the first answer"
    app.release.set()
    first = await read_response(reader)
    second = await read_response(reader)
    third = await read_response(reader)
    assert first.body == b"released"
    assert orjson.loads(second.body)["body"] == "abc"
    assert third.body == b"hello"
    assert app.seen == ["GET /block", "POST /echo", "GET /other"]
    writer.close()


async def test_expect_100_continue_is_answered_when_the_body_is_read(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    status, _, _ = await read_head(reader)
    assert status == 100
    writer.write(b"hello")
    response = await read_response(reader)
    assert orjson.loads(response.body)["body"] == "hello"
    writer.close()


async def test_chunked_request_bodies_are_read_whole(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    )
    response = await read_response(reader)
    assert orjson.loads(response.body) | {"length": 7, "body": "abcdefg"} == orjson.loads(
        response.body
    )
    writer.close()


async def test_head_announces_the_length_without_a_body(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await read_response(reader, head_only=True)
    assert head.header("Content-Length") == "5"
    get = await read_response(reader)  # the next answer starts right after the head
    assert get.body == b"hello"
    writer.close()


async def test_streamed_answers_are_chunked_or_end_with_the_connection_for_http10(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert response.header("Transfer-Encoding") == "chunked"
    assert response.body == b"one,two,three"
    writer.close()
    reader, writer = await connect(port)
    writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
    response = await read_response(reader)
    assert response.header("Transfer-Encoding") is None
    assert response.header("Connection") == "close"
    assert response.body == b"one,two,three"
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: b\r\n folded\r\n\r\n",
        b"GET /echo HTTP/1.1\nHost: x\n\n",
        b"GET /echo HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\x01\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET http://internal.example/admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /echo#fragment HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=[
        "cl-and-te",
        "duplicate-cl",
        "obs-fold",
        "bare-lf",
        "space-in-name",
        "control-char",
        "space-in-target",
        "te-not-chunked",
        "cl-with-sign",
        "connect",
        "tls-hello",
        "absolute-form",
        "asterisk-form",
        "fragment",
        "raw-utf8-in-path",
    ],
)
async def test_malformed_requests_get_400_and_never_reach_the_handler(serve, raw):
    server, app, port = await serve()
    reader, writer = await connect(port)
    writer.write(raw)
    response = await read_response(reader)
    assert response.status == 400
    assert response.header("Connection") == "close"
    assert response.header("Content-Type") == "application/problem+json"
    assert orjson.loads(response.body)["status"] == 400
    assert await closed(reader)
    assert app.seen == []
    assert server.refused["malformed"] == 1
    writer.close()


async def test_header_limits_answer_431_and_a_long_target_414(serve):
    server, app, port = await serve(Limits(max_headers=5, max_header_bytes=2000))
    reader, writer = await connect(port)
    writer.write(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(6)) + b"\r\n")
    assert (await read_response(reader)).status == 431
    writer.close()
    reader, writer = await connect(port)
    writer.write(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 414
    writer.close()
    assert app.seen == []
    assert server.refused["headers"] == 2


async def test_body_limits_answer_413(serve):
    server, app, port = await serve(Limits(max_body=10))
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 413, "refused on the declared length, before a byte of body"
    assert app.seen == []
    assert server.refused["body"] == 1
    writer.close()
    reader, writer = await connect(port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    )
    response = await read_response(reader)
    assert response.status == 413
    assert app.outcomes == ["payload-too-large"]
    assert response.header("Connection") == "close"
    writer.close()


async def test_a_slow_head_gets_408_and_a_silent_connection_is_closed(serve):
    server, app, port = await serve(Limits(header_timeout=0.3))
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    response = await read_response(reader)
    assert response.status == 408
    assert await closed(reader)
    silent_reader, silent = await connect(port)
    assert await closed(silent_reader, timeout=3), "a connection that never speaks is closed"
    assert server.refused["slow_head"] == 1
    assert app.seen == []
    writer.close()
    silent.close()


async def test_an_idle_keep_alive_connection_is_closed(serve):
    _, _, port = await serve(Limits(keepalive_timeout=0.3))
    reader, writer = await connect(port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 200
    assert await closed(reader, timeout=3)
    writer.close()


async def test_a_stalled_body_gets_408(serve):
    server, app, port = await serve(Limits(body_timeout=0.3))
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    response = await read_response(reader)
    assert response.status == 408
    assert app.outcomes == ["request-timeout"]
    assert server.refused["slow_body"] == 1
    writer.close()


async def test_a_client_that_does_not_read_is_cut_off(serve):
    server, app, port = await serve(Limits(body_timeout=0.5))
    _, writer = await connect(port)
    writer.transport.set_write_buffer_limits(0)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
    await wait_for(lambda: app.outcomes == ["client-gone"], timeout=10, what="the cut")
    assert server.refused["slow_reader"] == 1
    writer.close()


async def test_past_max_in_flight_the_answer_is_503_with_retry_after(serve):
    server, app, port = await serve(Limits(max_in_flight=1))
    busy_reader, busy = await connect(port)
    busy.write(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: server.in_flight == 1, what="one request in flight")
    reader, writer = await connect(port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 503
    assert response.header("Retry-After") == "1"
    assert app.seen == ["GET /block"]
    app.release.set()
    assert (await read_response(busy_reader)).body == b"released"
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).status == 200, "the refusal kept the connection"
    writer.close()
    busy.close()


async def test_past_max_connections_a_new_connection_gets_503_and_is_closed(serve):
    server, _, port = await serve(Limits(max_connections=1))
    first_reader, first = await connect(port)
    first.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(first_reader)).status == 200
    reader, writer = await connect(port)
    response = await read_response(reader)
    assert response.status == 503
    assert await closed(reader)
    assert server.refused["connections"] == 1
    writer.close()
    first.close()


async def test_a_client_that_leaves_does_not_cancel_its_request(serve):
    """The handler runs to its end (a write must still be settled), and learns the client is
    gone when it writes."""
    _, app, port = await serve()
    _, writer = await connect(port)
    writer.write(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: app.seen == ["GET /late"], what="the request")
    writer.transport.abort()
    await asyncio.sleep(0)  # the reset reaches the server's loop before the handler goes on
    app.release.set()
    await wait_for(lambda: app.outcomes == ["client-gone"], what="the handler to finish")


async def test_an_upgrade_offer_is_answered_as_http11_then_closed(serve):
    _, app, port = await serve()
    reader, writer = await connect(port)
    writer.write(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    response = await read_response(reader)
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert await closed(reader)
    assert app.seen == ["GET /echo"]
    writer.close()


async def test_a_kept_alive_connection_is_served_by_one_task_that_ends_with_it(serve):
    server, app, port = await serve()
    reader, writer = await connect(port)
    tasks = set()
    for n in range(4):
        writer.write(f"GET /echo?n={n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await read_response(reader)).status == 200
        assert len(server.tasks) == 1  # waiting for the next request, not one task a request
        tasks |= server.tasks
    assert len(tasks) == 1
    # pipelined: the worker takes the next request itself as it finishes the one before
    writer.write(b"GET /echo?n=4 HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    for _ in range(2):
        assert (await read_response(reader)).status == 200
    assert server.tasks == tasks
    writer.close()
    await wait_for(lambda: not server.tasks, what="the worker to end with its connection")
    assert len(app.seen) == 6
    assert server.in_flight == 0


async def test_shutdown_finishes_requests_in_flight_and_closes_idle_connections(serve):
    server, app, port = await serve()
    idle_reader, idle = await connect(port)
    idle.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(idle_reader)).status == 200
    busy_reader, busy = await connect(port)
    busy.write(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: server.in_flight == 1, what="one request in flight")
    stopping = asyncio.get_running_loop().create_task(server.shutdown(5.0))
    assert await closed(idle_reader)
    app.release.set()
    response = await read_response(busy_reader)
    assert response.body == b"released"
    assert response.header("Connection") == "close"
    assert await stopping == 0
    with pytest.raises(OSError):
        await connect(port)
    idle.close()
    busy.close()
