"""SIGTERM under load: a real cutover with shadow reads and dual-writes to a slow new platform,
16 clients of mixed reads and writes, and what each of them saw.

The shutdown order (STYLE.md §7): stop accepting, finish in-flight requests, drain mirrors,
flush the outbox (or leave it durable), say goodbye, close. Every request cutover has read must
be answered 2xx; every shadowed read ends in the diff log or is counted; every accepted write
reaches both platforms once the outbox is replayed after a restart.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.samples import Sample

from proxy.demo.platforms import Simulators
from tests.configs import demo_doc
from tests.conftest import doc_for
from tests.e2e.test_dualwrite_e2e import fast_outbox, outbox_drained
from tests.processes import CutoverProcess, port_open, wait_for
from tests.scrape import diff_records, samples, total

pytestmark = pytest.mark.e2e

EXIT_BUDGET_S = 45.0
"""The process's own shutdown budget: 30 s for requests in flight (proxy/runner.py), 5 s for
mirrors, 5 s for the outbox (proxy/app.py), and a margin. A quiet run exits in about a second."""


@dataclass(frozen=True)
class Outcome:
    kind: str  # read | patch | post
    request_id: str
    name: str
    status: int | str  # the HTTP status, or the client error
    started: float
    ended: float

    @property
    def ok(self) -> bool:
        return isinstance(self.status, int) and 200 <= self.status < 300


class MixedLoad:
    """Clients of mixed reads and writes, a fresh connection per request, until `stopped` or
    until a connection is refused."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.outcomes: list[Outcome] = []
        self.stopped = False
        self.next_contact = 1001

    async def run(self, clients: int = 16) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(clients)))

    def _next(self) -> tuple[str, str, str, Any, str]:
        """(kind, method, path, body, customer) of the next request."""
        n = self.sent
        self.sent += 1
        kind = ("read", "patch", "read", "post")[n % 4]
        if kind == "read":
            contact = 1001 + n % 300
            return kind, "GET", f"/api/contacts/{contact}", None, f"C-{contact}"
        name = f"Sigterm {kind} {n}"
        if kind == "patch":
            contact, self.next_contact = self.next_contact, self.next_contact + 1
            return kind, "PATCH", f"/api/contacts/{contact}", {"full_name": name}, f"C-{contact}"
        customer = f"C-9{n:05d}"
        return kind, "POST", "/api/contacts", {"customer": customer, "full_name": name}, customer

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stopped:
            request_id = f"load-{self.sent}"
            kind, method, path, body, customer = self._next()
            name = body["full_name"] if body else ""
            started = time.monotonic()
            try:
                async with session.request(
                    method,
                    self.url + path,
                    json=body,
                    headers={"X-Customer-Id": customer, "X-Request-ID": request_id},
                ) as response:
                    await response.read()
                    status: int | str = response.status
            except aiohttp.ClientConnectorError:
                self.stopped = True  # the listener is closed: this one never started
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = f"{type(exc).__name__}: {exc}"
            self.outcomes.append(Outcome(kind, request_id, name, status, started, time.monotonic()))


async def last_metrics(process: CutoverProcess) -> list[Sample]:
    """/metrics scraped until the admin listener goes away (it closes after the data path's
    shutdown, mirrors drained and outbox flushed): the last scrape holds the final counts."""
    found: list[Sample] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            try:
                found = await samples(http, process)
            except (aiohttp.ClientError, TimeoutError, AssertionError):
                return found
            await asyncio.sleep(0.02)  # a scrape interval, not synchronisation


async def test_sigterm_under_load_every_request_read_finishes_and_no_write_is_lost(
    sims: Simulators, cutover
):
    """Every request cutover read is answered 2xx, exit 0 in budget, shadowed reads logged or
    counted, and every accepted write on both platforms after the outbox is replayed."""
    doc = fast_outbox(demo_doc(sims), {"migration": "crm-2026"})  # demo_doc's own SQLite store
    process = await cutover(doc, ids=sims)
    sims.new_crm.set_faults("slow", delay_ms=300)  # mirrors and dual-writes in flight at SIGTERM
    load = MixedLoad(process.url)
    running = asyncio.ensure_future(load.run())  # noqa: TID251 - owned by this test
    await wait_for(lambda: len(load.outcomes) >= 120, timeout=60, what="120 requests answered")
    scraping = asyncio.ensure_future(last_metrics(process))  # noqa: TID251 - owned here
    # like a load balancer that has taken the instance out: nothing new after SIGTERM (what
    # arrives as SIGTERM comes is the two xfails below); what was sent before is in flight
    load.stopped = True
    signalled = time.monotonic()
    process.signal(signal.SIGTERM)
    assert await process.wait_exit(timeout=EXIT_BUDGET_S + 10) == 0, process.logs()[-3000:]
    exited = time.monotonic() - signalled
    await asyncio.wait_for(running, timeout=30)
    final = await scraping
    assert exited < EXIT_BUDGET_S, f"{exited:.1f}s to exit"

    # every request cutover answered was answered 2xx, those in flight at SIGTERM included
    answered = {e["request_id"] for e in process.log_events() if e.get("event") == "request"}
    failed = [o for o in load.outcomes if not o.ok]
    failed_answered = [o for o in failed if o.request_id in answered]
    assert not failed_answered, f"requests cutover answered, not 2xx: {failed_answered[:5]}"
    in_flight = [o for o in load.outcomes if o.started < signalled < o.ended and o.ok]
    assert in_flight, "no request was in flight at SIGTERM: the test proved nothing"
    # A request sent just before SIGTERM that cutover had not yet read may still be reset or
    # held until the shutdown timeout (the two xfails below): tolerated here, as long as none
    # of them reached a platform, so a client may retry them.
    platform_names = {str(c["full_name"]) for c in sims.old_crm.contacts()} | {
        str(c["name"]) for c in sims.new_crm.contacts()
    }
    written = [o for o in failed if o.name and o.name in platform_names]
    assert not written, f"writes that failed for the client but reached a platform: {written[:5]}"

    # every shadowed read was compared and logged, or dropped and counted (its lane's queue is
    # shed at shutdown), or cancelled and logged: none vanishes
    reads = sum(1 for o in load.outcomes if o.kind == "read" and o.ok)
    records = [r for r in diff_records(Path(doc["diff_log"]["dir"])) if r["kind"] == "shadow"]
    dropped = total(final, "cutover_mirror_dropped_total", upstream="new-crm")
    cancelled = sum(
        int(e.get("count", 0)) for e in process.log_events() if e.get("event") == "tasks_cancelled"
    )
    in_flight_at_last_scrape = total(final, "cutover_mirror_in_flight", upstream="new-crm")
    assert len(records) + dropped + cancelled == reads, (
        f"{reads} shadowed reads answered, {len(records)} diff records, {dropped} mirrors "
        f"dropped and {cancelled} cancelled (last /metrics with {in_flight_at_last_scrape} in "
        "flight)"
    )
    assert len(records) >= 1

    # the outbox, flushed or left durable, reaches the new platform after a restart
    sims.new_crm.set_faults("ok")
    restarted = await process.start()
    await wait_for(
        lambda: outbox_drained(restarted), timeout=60, interval=0.3, what="the outbox to drain"
    )
    assert await restarted.stop() == 0
    old = {str(c["full_name"]) for c in sims.old_crm.contacts()}
    new = {str(c["name"]) for c in sims.new_crm.contacts()}
    accepted = [o.name for o in load.outcomes if o.kind != "read" and o.ok]
    assert len(accepted) >= 50
    missing = [name for name in accepted if name not in old or name not in new]
    assert not missing, missing[:10]


async def test_a_request_arriving_as_sigterm_comes_is_still_answered(sims: Simulators, cutover):
    """Half a request head before SIGTERM, the rest once cutover has stopped accepting: the
    request was in flight, so it is answered."""
    process = await cutover(doc_for(sims))
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    writer.write(b"GET /api/contacts/1001 HTTP/1.1\r\nHo")
    await writer.drain()
    process.signal(signal.SIGTERM)
    await wait_for(lambda: not port_open(process.port), what="cutover to stop accepting")
    try:
        writer.write(b"st: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read(64)
    except ConnectionError as exc:
        answer = repr(exc).encode()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert await process.wait_exit() == 0


async def test_a_request_whose_body_arrives_after_sigterm_is_still_answered(
    sims: Simulators, cutover
):
    """A POST's head and part of its body before SIGTERM, the rest once cutover has stopped
    accepting: the request is in flight, so it is answered (201), at once."""
    process = await cutover(doc_for(sims))
    body = b'{"customer": "C-7777", "full_name": "Late Body"}'
    head = (
        b"POST /api/contacts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Customer-Id: C-7777\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    writer.write(head + body[:10])
    await writer.drain()
    process.signal(signal.SIGTERM)
    await wait_for(lambda: not port_open(process.port), what="cutover to stop accepting")
    try:
        writer.write(body[10:])
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read(64)
    except (ConnectionError, TimeoutError) as exc:
        answer = repr(exc).encode()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 201 "), answer
