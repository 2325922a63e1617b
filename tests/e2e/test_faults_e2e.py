"""A misbehaving platform on a real socket (tests/faultupstream.py) in front of a real cutover.

As the secondary (shadow 100 %), whatever it does — refuse, reset mid-body, hang, answer
something that is not HTTP, send 50 MB, send invalid JSON — clients get the primary's answer as
fast as ever, and every shadowed request is counted once, in /metrics and in the diff log.
As the primary, it costs the client a 502/504 problem answer within the route's timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.demo.platforms import Simulators
from tests.conftest import doc_for
from tests.faultupstream import FaultUpstream, Mode
from tests.processes import CutoverProcess, wait_for
from tests.scrape import diff_records, samples, shadow_results, total

pytestmark = pytest.mark.e2e

CLIENT_BUDGET_S = 1.0
"""A client's whole request, primary included: far below the secondary's 2 x 400 ms timeout."""


@pytest.fixture
async def fault() -> AsyncIterator[FaultUpstream]:
    upstream = FaultUpstream()
    yield upstream
    await upstream.stop()


async def timed_get(
    http: aiohttp.ClientSession, proxy: CutoverProcess, path: str
) -> tuple[int, str | None, float, bytes]:
    started = time.monotonic()
    async with http.get(proxy.url + path, headers={"X-Customer-Id": "C-1010"}) as response:
        body = await response.read()
        return (
            response.status,
            response.headers.get("X-Cutover-Platform"),
            time.monotonic() - started,
            body,
        )


# what the diff log says for each way of failing: (result, error kind if an error)
SECONDARY: dict[Mode, tuple[str, set[str | None]]] = {
    "refuse": ("error", {"upstream-unreachable"}),
    "reset": ("error", {"upstream-unreachable", "upstream-bad-response"}),
    "hang": ("error", {"upstream-timeout"}),
    "invalid_http": ("error", {"upstream-bad-response"}),
    "invalid_json": ("mismatch", {None}),
    "big_body": ("mismatch", {None}),
}


@pytest.mark.parametrize("mode", list(SECONDARY))
async def test_a_misbehaving_secondary_never_reaches_clients_and_is_counted(
    sims: Simulators, cutover, http, fault: FaultUpstream, mode: Mode
):
    """Each client gets the old CRM's 200 within its budget; each shadowed request is counted
    once (a result or a drop in /metrics, a record of the right kind in the diff log)."""
    fault.mode = mode
    await fault.start()
    big = mode == "big_body"
    doc = doc_for(sims)
    doc["platforms"]["new"]["crm"] = {"url": fault.url, "timeout": "10s" if big else "400ms"}
    doc["routes"][0].update(weights={"default": 0}, shadow_percent=100)
    proxy = await cutover(doc)
    before_kib = proxy.rss_peak_kib()
    count = 3 if big else 12

    answers = [await timed_get(http, proxy, f"/api/contacts/{1001 + n}") for n in range(count)]
    for status, platform, seconds, body in answers:
        assert (status, platform) == (200, "old"), body[:300]
        assert seconds < CLIENT_BUDGET_S, f"a client waited {seconds:.2f}s for a {mode} secondary"

    async def counted() -> dict[str, int] | None:
        results = shadow_results(await samples(http, proxy), "contacts")
        return results if sum(results.values()) >= count else None

    results = await wait_for(counted, timeout=30, interval=0.2, what="every shadow counted")
    assert sum(results.values()) == count, results
    expected, kinds = SECONDARY[mode]
    dropped = results.get("dropped", 0)
    assert results.get(expected, 0) + dropped == count, results
    assert results.get(expected, 0) >= 1, results
    found = await samples(http, proxy)
    # a secondary that cannot be reached opens its lane's circuit: the rest is shed, and counted
    assert total(found, "cutover_mirror_dropped_total") == dropped
    # secondary work that waited for an idle loop is counted by how it was let through
    deferred = {s.labels["result"] for s in found if s.name == "cutover_secondary_deferred_total"}
    assert deferred == {"idle", "overdue", "crowded"}

    directory = Path(doc["diff_log"]["dir"])
    records = await wait_for(
        lambda: len(diff_records(directory)) >= count - dropped and diff_records(directory),
        timeout=10,
        what="the diff log records",
    )
    assert len(records) == count - dropped
    for record in records:
        assert record["result"] == expected, record
        assert (record["error"] or {}).get("kind") in kinds, record
        if expected == "error":
            assert record["error"]["side"] == "new"
        if big:
            assert record["mode"] == "hash", record
    if mode != "refuse":
        assert fault.received, "the secondary was never asked"
    assert not [e for e in proxy.log_events() if e.get("event") == "mirror_job_failed"]
    if big:
        grown = (proxy.rss_peak_kib() - before_kib) / 1024
        assert grown < 40, f"cutover's peak memory grew {grown:.0f} MiB for 3 x 50 MB answers"
    async with http.get(proxy.url + "/api/contacts/1001") as response:
        assert response.status == 200  # and it keeps serving


PRIMARY_TIMEOUT_S = 1.0
MARGIN_S = 1.5


@pytest.mark.parametrize(
    ("mode", "status", "kind"),
    [
        ("hang", 504, "upstream-timeout"),
        ("invalid_http", 502, "upstream-bad-response"),
        ("reset", 502, None),
        ("refuse", 502, "upstream-unreachable"),
    ],
)
async def test_a_misbehaving_primary_is_a_problem_answer_within_its_timeout(
    sims: Simulators, cutover, http, fault: FaultUpstream, mode: Mode, status: int, kind: Any
):
    """The old CRM accepts and never answers, answers garbage, resets mid-body, or refuses."""
    fault.mode = mode
    await fault.start()
    doc = doc_for(sims)
    doc["platforms"]["old"]["crm"] = {"url": fault.url, "timeout": f"{PRIMARY_TIMEOUT_S}s"}
    proxy = await cutover(doc)
    started = time.monotonic()
    async with http.get(proxy.url + "/api/contacts/1001") as response:
        elapsed = time.monotonic() - started
        assert response.status == status
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["X-Cutover-Platform"] == "old"
        problem = await response.json(content_type=None)
    assert elapsed < PRIMARY_TIMEOUT_S + MARGIN_S, f"{elapsed:.2f}s"
    assert problem["route"] == "contacts"
    assert problem["platform"] == "old"
    if kind is not None:
        assert problem["type"].endswith(kind), problem
    found = await samples(http, proxy)
    assert total(found, "cutover_requests_total", route="contacts", code="5xx") == 1
    # and the other routes, on healthy upstreams, never noticed
    async with http.get(proxy.url + "/api/tickets?limit=1") as response:
        assert response.status == 200


async def test_many_clients_on_a_hanging_primary_all_get_504_in_time(
    sims: Simulators, cutover, http, fault: FaultUpstream
):
    """32 clients at once on an upstream that never answers: each one its 504 in time, none
    queued behind the others, and the process still serves the other routes meanwhile."""
    fault.mode = "hang"
    await fault.start()
    doc = doc_for(sims)
    doc["platforms"]["old"]["crm"] = {"url": fault.url, "timeout": f"{PRIMARY_TIMEOUT_S}s"}
    proxy = await cutover(doc)

    async def one() -> tuple[int, float]:
        started = time.monotonic()
        async with http.get(proxy.url + "/api/contacts/1001") as response:
            await response.read()
            return response.status, time.monotonic() - started

    hanging = asyncio.gather(*(one() for _ in range(32)))
    await wait_for(lambda: len(fault.received) >= 32, what="32 requests at the hanging upstream")
    started = time.monotonic()
    async with http.get(proxy.url + "/api/tickets?limit=1") as response:
        assert response.status == 200
    assert time.monotonic() - started < 0.5
    results = await hanging
    assert {status for status, _ in results} == {504}
    assert max(seconds for _, seconds in results) < PRIMARY_TIMEOUT_S + MARGIN_S
