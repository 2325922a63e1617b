"""Shadow reads through an in-process cutover in front of the demo platforms (real sockets):
the client gets the primary's answer whatever the secondary does; comparisons are recorded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import parse_config
from proxy.demo.platforms import Simulators
from proxy.demo.run import seeded_ids
from proxy.mirror import BREAKER_THRESHOLD, SLOW_FLOOR
from proxy.runner import Running, start
from tests.configs import base_doc, demo_doc, dump
from tests.faultupstream import FaultUpstream
from tests.processes import wait_for


class Sink(list[dict[str, Any]]):
    def submit(self, record: dict[str, Any]) -> bool:
        self.append(record)
        return True


def demo_text(sims: Simulators, state: Path) -> str:
    doc = demo_doc(sims)
    doc["store"] = f"sqlite:///{state}/cutover.db"
    return dump(doc).decode()


async def start_demo(sims: Simulators, text: str, sink: Sink) -> Running:
    """cutover in process on the demo's routes, with the seeded id map preloaded."""
    return await start(parse_config(text, env={}), sink=sink, preload_ids=seeded_ids(sims))


@pytest.fixture
async def demo(sims: Simulators, tmp_path: Path) -> AsyncIterator[tuple[Running, Sink]]:
    sink = Sink()
    running = await start_demo(sims, demo_text(sims, tmp_path), sink)
    yield running, sink
    await running.stop()


async def get(running: Running, path: str, **headers: str) -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{running.port}{path}", headers=headers) as response,
    ):
        await response.read()
        return response


async def serve_apps(*apps: web.Application) -> tuple[list[web.AppRunner], list[int]]:
    """Each app on a port of its own (the tests' small platforms): their runners and ports."""
    runners, ports = [], []
    for app in apps:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        ports.append(runner.addresses[0][1])
    return runners, ports


def stats(running: Running) -> dict[str, Any]:
    assert running.proxy.shadowing is not None
    return running.proxy.shadowing.stats.snapshot()["routes"]  # type: ignore[return-value]


async def test_contract_rules_line_the_two_schemas_up(sims: Simulators, demo):
    """With the demo's contract and compare rules, a customer without seeded discrepancies
    matches, and the seeded ones show exactly their field."""
    running, sink = demo
    await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
    await get(running, "/api/contacts?customer=C-1002", **{"X-Customer-Id": "C-1002"})
    await wait_for(lambda: len(sink) == 2, what="two diff records")
    by_query = {r["customer"]: r for r in sink}
    assert len(by_query) == 2
    results = sorted((r["result"], [d["path"] for d in r["differences"]]) for r in sink)
    assert results == [("match", []), ("mismatch", ["$.items[0].balance"])]
    seen = sims.new_crm.requests()[-1]
    assert seen.header("X-Cutover-Mirror") == "shadow"
    assert seen.path.startswith("/v2/contacts?customer=C-10")


async def test_without_rules_the_schema_differences_show(sims: Simulators):
    doc = base_doc(
        sims.old_crm.url, sims.new_crm.url, sims.old_ticketing.url, sims.new_ticketing.url
    )
    doc["routes"][0].update(shadow_percent=100, contract={"new_path": "/v2/contacts"})
    sink = Sink()
    running = await start(parse_config(dump(doc), env={}), sink=sink)
    try:
        await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
        await wait_for(lambda: sink, what="a diff record")
    finally:
        await running.stop()
    paths = {d["path"] for d in sink[0]["differences"]}
    assert {"$.items", "$.data", "$.total", "$.meta"} <= paths
    assert sink[0]["result"] == "mismatch"


async def test_the_client_never_waits_for_a_slow_secondary(sims: Simulators, demo):
    """With the new platform 2 s slow, the client's answer arrives while the comparison still waits."""
    running, sink = demo
    sims.new_crm.set_faults("slow", delay_ms=2000)
    since = sims.new_crm.last_seq
    response = await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
    assert response.status == 200
    assert response.headers["X-Cutover-Platform"] == "old"
    assert sink == [], "the comparison had not finished when the client was answered"
    await wait_for(lambda: sims.new_crm.requests(since), what="the shadow read")
    await wait_for(lambda: sink, timeout=10, what="the late comparison")
    assert sink[0]["result"] == "match"
    assert sink[0]["latency_ms"]["new"] >= 2000


async def test_the_shadow_read_leaves_once_the_client_has_its_answer(sims: Simulators, demo):
    """The copy is built and sent after the primary's answer has gone to the client, so the
    read being shadowed never waits for it (a 0.1 ms primary used to wait ~0.2 ms for it)."""
    running, sink = demo
    sims.old_crm.set_faults("slow", delay_ms=300)
    since = sims.new_crm.last_seq
    response = await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
    answered = time.time()
    assert response.status == 200
    assert response.headers["X-Cutover-Platform"] == "old"
    await wait_for(lambda: sink, what="the comparison")
    (copy,) = sims.new_crm.requests(since)
    assert copy.header("X-Cutover-Mirror") == "shadow"
    assert copy.at >= answered - 0.05, "the copy left while the primary was still answering"
    assert sink[0]["result"] == "match"
    assert sink[0]["latency_ms"]["old"] >= 300


async def test_a_failed_primary_is_still_compared_with_the_secondary(sims: Simulators, demo):
    """The primary down: the client gets cutover's 502, and the copy, sent after it, is
    recorded against the failure."""
    running, sink = demo
    await sims.old_crm.go_down()
    response = await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
    assert response.status == 502
    await wait_for(lambda: sink, what="the error record")
    assert sink[0]["result"] == "error"
    assert sink[0]["error"] == {"side": "old", "kind": "upstream-unreachable"}
    assert sink[0]["status"] == {"old": None, "new": 200}


async def test_a_client_gone_before_its_answer_sends_no_copy(sims: Simulators, tmp_path: Path):
    """The old CRM streams a 50 MB answer and the client hangs up after its first bytes: no
    copy goes to the new CRM, and the read counts as aborted."""
    fault = await FaultUpstream(mode="big_body").start()
    doc = demo_doc(sims)
    doc["platforms"]["old"]["crm"]["url"] = fault.url
    doc["store"] = f"sqlite:///{tmp_path}/cutover.db"
    running = await start_demo(sims, dump(doc).decode(), Sink())
    try:
        since = sims.new_crm.last_seq
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(
            b"GET /api/contacts?customer=C-1010 HTTP/1.1\r\nHost: x\r\n"
            b"X-Customer-Id: C-1010\r\n\r\n"
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.transport.abort()
        await wait_for(
            lambda: stats(running).get("contacts", {}).get("aborted"), what="the aborted count"
        )
        assert sims.new_crm.requests(since) == [], "no copy for a client that went away"
    finally:
        await running.stop()
        await fault.stop()


async def test_secondary_down_reset_or_garbage_never_reaches_the_client(sims: Simulators, demo):
    running, sink = demo
    expected = await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
    await wait_for(lambda: len(sink) == 1, what="baseline record")
    for fault in ("garbage", "reset", "down"):
        if fault == "down":
            await sims.new_crm.go_down()
        else:
            sims.new_crm.set_faults(fault)
        response = await get(
            running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"}
        )
        assert response.status == expected.status
        assert response.headers["Content-Length"] == expected.headers["Content-Length"]
    await wait_for(lambda: len(sink) == 4, what="three more records")
    assert [r["result"] for r in sink[1:]] == ["mismatch", "error", "error"]
    assert sink[1]["differences"][0]["kind"] == "type"
    assert sink[2]["error"] == {"side": "new", "kind": "upstream-unreachable"}
    assert stats(running)["contacts"]["error"] == 2


async def test_mirrors_past_the_limits_are_dropped_and_counted(sims: Simulators):
    doc = demo_doc(sims)
    doc["platforms"]["new"]["crm"]["mirror"] = {"concurrency": 1, "queue": 1}
    text = dump(doc).decode()
    sink = Sink()
    running = await start_demo(sims, text, sink)
    try:
        await sims.new_crm.go_down()
        sims.new_crm.set_faults("slow", delay_ms=3000)
        for _ in range(10):
            response = await get(
                running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"}
            )
            assert response.status == 200
        assert stats(running)["contacts"]["dropped"] == 8
        assert running.proxy.shadowing is not None
        assert running.proxy.shadowing.stats.drop_reasons["queue_full"] == 8
    finally:
        await running.stop()


async def test_a_slow_secondary_gets_fewer_shadow_reads_until_it_recovers(sims: Simulators):
    """The new CRM 300 ms slow behind a fast old one: its lane keeps SLOW_FLOOR of its 16 slots
    and turns further reads away as `slow_secondary`; the client is answered by old throughout;
    when the new CRM is fast again the lane gets every slot back."""
    doc = demo_doc(sims)
    doc["platforms"]["new"]["crm"]["mirror"] = {"concurrency": 16, "queue": 0}
    sink = Sink()
    running = await start_demo(sims, dump(doc).decode(), sink)
    assert running.proxy.shadowing is not None
    dispatcher = running.proxy.shadowing.dispatcher
    reasons = running.proxy.shadowing.stats.drop_reasons

    def lane() -> dict[str, int]:
        return next(v for k, v in dispatcher.snapshot().items() if "new" in k)

    async def read() -> None:
        response = await get(
            running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"}
        )
        assert response.status == 200
        assert response.headers["X-Cutover-Platform"] == "old"

    try:
        sims.new_crm.set_faults("slow", delay_ms=300)

        async def backed_off() -> bool:
            await read()
            return lane()["limit"] == SLOW_FLOOR and reasons["slow_secondary"] > 0

        await wait_for(backed_off, interval=0.005, what="the lane to give up slots")

        async def within_the_floor() -> bool:  # what started before the back-off has ended
            await read()
            return lane()["in_flight"] <= SLOW_FLOOR

        await wait_for(within_the_floor, interval=0.005, what="only SLOW_FLOOR reads in flight")
        sims.new_crm.set_faults("ok")

        async def recovered() -> bool:
            await read()
            return lane()["limit"] == 16

        await wait_for(recovered, interval=0.005, what="the slots to come back")
        assert any(r["result"] == "match" for r in sink)
    finally:
        await running.stop()


async def test_writes_are_not_shadowed(sims: Simulators, tmp_path: Path):
    """Shadowing copies reads only; a write reaches the secondary only through dual-write."""
    doc = demo_doc(sims)
    doc["routes"][0]["dual_write"] = False
    doc["store"] = f"sqlite:///{tmp_path}/cutover.db"
    running = await start_demo(sims, dump(doc).decode(), Sink())
    since = sims.new_crm.last_seq
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{running.port}/api/contacts",
            json={"customer": "C-9999", "full_name": "New Person"},
            headers={"X-Customer-Id": "C-9999"},
        ) as response,
    ):
        assert response.status == 201
    await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
    await wait_for(lambda: sims.new_crm.requests(since), what="the shadow read")
    await running.stop()
    assert [r.method for r in sims.new_crm.requests(since)] == ["GET"]


async def test_secondary_gets_its_own_credentials_never_the_clients(sims: Simulators):
    doc = demo_doc(sims)
    doc["platforms"]["new"]["crm"]["headers"] = {"Authorization": "Bearer new-key"}
    text = dump(doc).decode()
    running = await start_demo(sims, text, Sink())
    try:
        since = sims.new_crm.last_seq
        await get(
            running,
            "/api/contacts?customer=C-1010",
            **{"X-Customer-Id": "C-1010", "Authorization": "Bearer client-secret"},
        )
        seen = await wait_for(lambda: sims.new_crm.requests(since), what="the shadow read")
    finally:
        await running.stop()
    assert seen[0].header("Authorization") == "Bearer new-key"
    assert sims.old_crm.requests()[-1].header("Authorization") == "Bearer client-secret"


async def test_new_primary_is_compared_as_old_against_new(sims: Simulators, demo):
    """A pilot customer on chat is served by new; the record still reads old vs new."""
    running, sink = demo
    response = await get(
        running, "/api/contacts?customer=C-1002", **{"X-Customer-Id": "C-1002", "X-Channel": "chat"}
    )
    assert response.headers["X-Cutover-Platform"] == "new"
    await wait_for(lambda: sink, what="a diff record")
    record = sink[0]
    assert record["primary"] == "new"
    assert record["cohort"] == "pilot"
    [difference] = record["differences"]
    assert difference["path"] == "$.items[0].balance"
    wrong = next(d for d in sims.discrepancies if d.old_id == 1002)
    assert (difference["old"], difference["new"]) == (wrong.old_value, wrong.new_value)


async def test_redacted_fields_never_reach_the_record(sims: Simulators, demo):
    running, sink = demo
    sims.new_crm.set_faults("wrong_field", field="email", value="leak@example.com")
    await get(running, "/api/contacts?customer=C-1010", **{"X-Customer-Id": "C-1010"})
    await wait_for(lambda: sink, what="a diff record")
    record = sink[0]
    assert record["differences"] == [
        {"path": "$.items[0].email", "kind": "changed", "old": "***", "new": "***"}
    ]
    text = repr(record)
    assert "leak@example.com" not in text
    assert "C-1010" not in text
    assert record["bodies"]["new"]["items"][0]["email"] == "***"
    assert record["bodies"]["old"]["items"][0]["phone"] == "***"


async def test_noise_probe_learns_fields_that_differ_between_two_answers_of_one_platform():
    """Diffy's idea: what changes between two calls of the same platform is noise, reported apart."""
    served = {"old": 0, "new": 0}

    def platform(side: str, name: str) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            served[side] += 1
            return web.json_response({"id": 1, "name": name, "served": served[side]})

        app = web.Application()
        app.router.add_get("/api/contacts", handler)
        return app

    runners, ports = await serve_apps(platform("old", "Ada"), platform("new", "Ada L."))
    doc = base_doc(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    doc["routes"][0].update(shadow_percent=100, compare={"noise_probe_percent": 100})
    sink = Sink()
    running = await start(parse_config(dump(doc), env={}), sink=sink)
    try:
        shadowing = running.proxy.shadowing
        assert shadowing is not None
        for n in range(1, 4):
            await get(running, "/api/contacts", **{"X-Customer-Id": "C-1"})
            await wait_for(lambda: len(sink) == n, what=f"record {n}")  # noqa: B023 - awaited here
        await wait_for(lambda: shadowing.noise_report().get("contacts"), what="noise learnt")
        await get(running, "/api/contacts", **{"X-Customer-Id": "C-1"})
        await wait_for(lambda: len(sink) == 4, what="the fourth record")
    finally:
        await running.stop()
        for runner in runners:
            await runner.cleanup()
    last = sink[-1]
    assert [d["path"] for d in last["differences"]] == ["$.name"]
    assert [d["path"] for d in last["noise"]] == ["$.served"]
    assert shadowing.noise_report()["contacts"]["$.served"] >= 1


async def test_large_answers_are_compared_off_the_loop_and_small_ones_on_it(monkeypatch):
    """Over COMPARE_OFF_LOOP a comparison runs in the worker thread (the loop keeps serving);
    under it, on the loop without a coroutine. Both find the one field that differs."""
    import threading

    import shadow.compare
    from proxy.shadowing import COMPARE_OFF_LOOP

    threads: list[str] = []
    real_compare = shadow.compare.compare

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_compare(*args, **kwargs)

    monkeypatch.setattr("proxy.shadowing.compare", spy)
    filler = "x" * (COMPARE_OFF_LOOP + 1000)

    def platform(tier: str) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            big = request.query.get("size") == "big"
            return web.json_response({"tier": tier, "notes": filler if big else "short"})

        app = web.Application()
        app.router.add_get("/api/contacts", handler)
        return app

    runners, ports = await serve_apps(platform("gold"), platform("silver"))
    doc = base_doc(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    doc["routes"][0].update(shadow_percent=100, compare={"max_body": "1MB"})
    sink = Sink()
    running = await start(parse_config(dump(doc), env={}), sink=sink)
    try:
        await get(running, "/api/contacts?size=big", **{"X-Customer-Id": "C-1"})
        await wait_for(lambda: len(sink) == 1, what="the large comparison")
        await get(running, "/api/contacts?size=small", **{"X-Customer-Id": "C-1"})
        await wait_for(lambda: len(sink) == 2, what="the small comparison")
    finally:
        await running.stop()
        for runner in runners:
            await runner.cleanup()
    assert [[d["path"] for d in r["differences"]] for r in sink] == [["$.tier"], ["$.tier"]]
    assert threads[0].startswith("cutover-compare")
    assert threads[1] == threading.main_thread().name


async def test_a_down_secondary_is_skipped_until_it_answers_again(sims: Simulators, demo):
    """The circuit breaker: after BREAKER_THRESHOLD unreachable tries, shadow reads to the new
    platform are dropped (counted) instead of tried; once it is back, a trial closes it."""
    running, sink = demo
    assert running.proxy.shadowing is not None
    dispatcher = running.proxy.shadowing.dispatcher
    await sims.new_crm.go_down()
    path, who = "/api/contacts?customer=C-1010", {"X-Customer-Id": "C-1010"}
    for _ in range(BREAKER_THRESHOLD):
        assert (await get(running, path, **who)).status == 200
    await wait_for(lambda: len(sink) == BREAKER_THRESHOLD, what="the failed comparisons")
    await wait_for(
        lambda: dispatcher.snapshot()["new-crm"]["circuit_open"] == 1, what="the open circuit"
    )
    for _ in range(10):
        response = await get(running, path, **who)
        assert response.status == 200
        assert response.headers["X-Cutover-Platform"] == "old"
    assert running.proxy.shadowing.stats.drop_reasons["circuit_open"] == 10
    assert stats(running)["contacts"]["error"] == BREAKER_THRESHOLD
    assert len(sink) == BREAKER_THRESHOLD, "nothing was tried while the circuit was open"
    await sims.new_crm.come_up()

    async def matched() -> bool:
        await get(running, path, **who)
        return any(r["result"] == "match" for r in sink)

    await wait_for(matched, timeout=10, what="a trial after the cool-off to match")
    assert dispatcher.snapshot()["new-crm"]["circuit_open"] == 0


async def test_a_copy_that_fails_to_start_never_reaches_the_client(
    sims: Simulators, demo, monkeypatch: pytest.MonkeyPatch
):
    """A bug in building the copy (forced here) happens after the client's answer: the client
    keeps its 200 and its connection, and the read counts as a shadow error."""
    running, sink = demo
    assert running.proxy.shadowing is not None

    def broken(*_: object) -> str:
        raise RuntimeError("forced")

    monkeypatch.setattr(running.proxy.shadowing.dispatcher, "submit", broken)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the same keep-alive connection serves the second one
            async with session.get(
                f"http://127.0.0.1:{running.port}/api/contacts?customer=C-1010",
                headers={"X-Customer-Id": "C-1010"},
            ) as response:
                assert response.status == 200
                assert (await response.json())["items"]
    assert stats(running)["contacts"]["error"] == 2
    assert sink == []
