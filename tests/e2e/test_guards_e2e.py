"""Guards trip, plans advance, metrics count: through real cutover processes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from proxy.demo.platforms import Simulators
from tests.configs import demo_doc
from tests.processes import CutoverProcess, wait_for

pytestmark = pytest.mark.e2e
INTERVAL = 0.2


def guarded(sims: Simulators, **guard: Any) -> dict[str, Any]:
    """The demo's routes with web customers on new and a guard on contacts."""
    doc = demo_doc(sims)
    contacts = doc["routes"][0]
    contacts["weights"] = {"default": 0, "web": 100}
    contacts["guard"] = {"window": "60s", "interval": f"{INTERVAL}s", "min_requests": 20, **guard}
    return doc


async def read(http: aiohttp.ClientSession, proxy: CutoverProcess, n: int) -> tuple[int, str]:
    customer = 1010 + n % 290  # outside the pilot cohort: one cell, (contacts, web, everyone)
    async with http.get(
        f"{proxy.url}/api/contacts/{customer}",
        headers={"X-Customer-Id": f"C-{customer}", "X-Channel": "web"},
    ) as r:
        await r.read()
        return r.status, r.headers["X-Cutover-Platform"]


async def drive_until_old(
    http: aiohttp.ClientSession, proxy: CutoverProcess, limit: int = 400
) -> int:
    """Read until a web customer is served by old; how many reads that took."""
    for n in range(limit):
        _, side = await read(http, proxy, n)
        if side == "old":
            return n
    raise AssertionError(f"still on new after {limit} reads")


def tripped(proxy: CutoverProcess) -> dict[str, Any] | None:
    return next(
        (
            e
            for e in proxy.log_events()
            if e.get("event") == "control_event" and e.get("kind") == "guard_tripped"
        ),
        None,
    )


def file_rollback(proxy: CutoverProcess) -> list[dict[str, Any]]:
    scopes = YAML(typ="safe").load(proxy.config.read_text()).get("rollback") or []
    return scopes if isinstance(scopes, list) else []


@pytest.mark.parametrize(
    ("fault", "guard", "breach"),
    [
        (
            {"mode": "flaky", "error_rate": 0.5, "methods": ["GET"]},
            {"max_error_rate": 0.1},
            "new-platform error rate",
        ),
        (
            {"mode": "slow", "delay_ms": 60, "methods": ["GET"]},
            {"max_latency_ratio": 3.0},
            "p95 latency new/old",
        ),
        (
            {"mode": "wrong_field", "field": "name", "value": "Wrong Name", "methods": ["GET"]},
            {"max_mismatch_rate": 0.2},
            "mismatch rate",
        ),
    ],
    ids=["flaky", "slow", "wrong-field"],
)
async def test_the_guard_rolls_the_cell_back_with_its_figures(
    sims: Simulators, cutover, http, fault, guard, breach
):
    proxy = await cutover(guarded(sims, **guard), ids=sims)
    assert (await read(http, proxy, 0))[1] == "new"
    sims.new_crm.set_faults(**fault)
    await drive_until_old(http, proxy)
    event = await wait_for(lambda: tripped(proxy), what="the guard_tripped event")
    assert (event["route"], event["channel"]) == ("contacts", "web")
    assert any(b.startswith(breach) for b in event["breaches"]), event["breaches"]
    assert event["window_s"] == 60
    assert event["figures"]["requests"] >= 20
    [scope] = file_rollback(proxy)
    assert (scope["route"], scope["channel"], scope["by"]) == ("contacts", "web", "guard")
    assert scope["reason"].startswith("guard: " + breach)
    for n in range(20):  # it stays rolled back
        assert (await read(http, proxy, n))[1] == "old"
    other = await read_channel(http, proxy, "web", 1001)  # (web, pilot): another cell, untouched
    assert other == "new"


async def read_channel(
    http: aiohttp.ClientSession, proxy: CutoverProcess, channel: str, customer: int
) -> str:
    async with http.get(
        f"{proxy.url}/api/contacts/{customer}",
        headers={"X-Customer-Id": f"C-{customer}", "X-Channel": channel},
    ) as r:
        return r.headers["X-Cutover-Platform"]


def planned(sims: Simulators, *, auto: bool, hold: str = "0s") -> dict[str, Any]:
    doc = demo_doc(sims)
    contacts = doc["routes"][0]
    contacts["weights"] = {"default": 0}
    contacts["guard"] = {
        "window": "60s",
        "interval": f"{INTERVAL}s",
        "min_requests": 10,
        "max_mismatch_rate": 0.5,
        "max_error_rate": 0.2,
    }
    contacts["plan"] = {
        "auto": auto,
        "step": 0,
        "steps": [
            {"weights": {"default": 0}, "hold": hold},
            {"weights": {"default": 0, "web": 100}, "hold": hold},
            {"weights": {"default": 100}, "shadow_percent": 10},
        ],
    }
    return doc


async def admin(
    http: aiohttp.ClientSession,
    proxy: CutoverProcess,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    async with http.request(
        method,
        proxy.admin_url + path,
        json=body if method != "GET" else None,
        headers=proxy.admin_headers,
    ) as r:
        return r.status, await r.json(content_type=None)


async def test_a_plan_advances_by_command_and_stops_when_a_gate_fails(
    sims: Simulators, cutover, http
):
    proxy = await cutover(planned(sims, auto=False), ids=sims)
    status, refused = await admin(
        http, proxy, "POST", "/admin/routes/contacts/advance", {"reason": "go"}
    )
    assert status == 409
    assert "not seen enough requests" in refused["detail"]
    for n in range(15):  # shadow reads give the guard its evidence
        await read(http, proxy, n)

    async def gates_open() -> bool:
        _, state = await admin(http, proxy, "GET", "/admin/state")
        return bool(state["plans"]["contacts"]["can_advance"])

    await wait_for(gates_open, what="the gates to open")
    result = await asyncio.to_thread(
        proxy.cli, "advance", "contacts", "--reason", "pilot looks good"
    )
    assert result.returncode == 0, result.stderr
    assert "step 1" in result.stdout
    assert (await read(http, proxy, 1))[1] == "new"  # web is on new at step 1
    assert YAML(typ="safe").load(proxy.config.read_text())["routes"][0]["plan"]["step"] == 1

    # the step and its history survive a restart, and `cutover status` shows them
    assert await proxy.stop() == 0
    proxy = await proxy.start()
    _, state = await admin(http, proxy, "GET", "/admin/state")
    plan = state["plans"]["contacts"]
    assert plan["step"] == 1
    advanced = [h for h in plan["history"] if h.get("by") != "routes.yaml"]
    assert [(h["step"], h["reason"]) for h in advanced] == [(1, "pilot looks good")]
    shown = await asyncio.to_thread(proxy.cli, "status")
    assert shown.returncode == 0, shown.stderr
    assert "plan contacts: step 1 of 2 (by command)" in shown.stdout, shown.stdout
    assert "step 1 by" in shown.stdout and "(pilot looks good)" in shown.stdout

    sims.new_crm.set_faults("flaky", error_rate=0.5, methods=["GET"])
    for n in range(40):
        await read(http, proxy, n)
    await wait_for(lambda: tripped(proxy), what="the guard to trip")
    status, refused = await admin(
        http, proxy, "POST", "/admin/routes/contacts/advance", {"reason": "go"}
    )
    assert status == 409
    assert "guard was breached" in refused["detail"]
    _, state = await admin(http, proxy, "GET", "/admin/state")
    plan = state["plans"]["contacts"]
    assert (plan["step"], plan["guard"]) == (1, "breached")
    assert [h["step"] for h in plan["history"] if h.get("by") != "routes.yaml"] == [1]


async def test_an_automatic_plan_advances_by_itself_while_gates_hold(
    sims: Simulators, cutover, http
):
    proxy = await cutover(planned(sims, auto=True, hold="300ms"), ids=sims)
    stop = asyncio.Event()

    async def traffic() -> None:
        n = 0
        while not stop.is_set():
            await read(http, proxy, n)
            n += 1

    task = asyncio.ensure_future(traffic())  # noqa: TID251 - owned by this test

    def step() -> int:
        return int(YAML(typ="safe").load(proxy.config.read_text())["routes"][0]["plan"]["step"])

    try:
        await wait_for(lambda: step() == 2, timeout=30, what="the plan to reach its last step")
    finally:
        stop.set()
        await task
    _, state = await admin(http, proxy, "GET", "/admin/state")
    history = [h for h in state["plans"]["contacts"]["history"] if h["by"] == "plan"]
    assert [h["step"] for h in history] == [1, 2]
    assert YAML(typ="safe").load(proxy.config.read_text())["routes"][0]["weights"] == {
        "default": 100
    }


async def test_metrics_parse_and_count_what_was_sent(sims: Simulators, cutover, http):
    doc = demo_doc(sims)
    doc["routes"][0]["shadow_percent"] = 0
    proxy = await cutover(doc, ids=sims)
    for n in range(12):
        await read_channel(http, proxy, "phone", 1001 + n)  # old
    for n in range(5):
        await read_channel(http, proxy, "chat", 1001 + n % 5)  # pilot customers: new
    for _ in range(3):
        async with http.get(f"{proxy.url}/nope") as r:
            assert r.status == 404
    async with http.get(proxy.admin_url + "/metrics", headers=proxy.admin_headers) as r:
        assert r.status == 200
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        tuple(sorted(s.labels.items())): s.value
        for s in families["cutover_requests"].samples
        if s.name == "cutover_requests_total"
    }

    def count(**labels: str) -> float:
        return sum(v for k, v in requests.items() if all((n, labels[n]) in k for n in labels))

    assert count(platform="old", channel="phone", code="2xx") == 12
    assert count(platform="new", channel="chat", cohort="pilot", code="2xx") == 5
    assert count(platform="none", code="4xx") == 3
    assert count() == 20
    latency = [
        s
        for s in families["cutover_upstream_seconds"].samples
        if s.name == "cutover_upstream_seconds_count" and s.labels["role"] == "primary"
    ]
    assert sum(s.value for s in latency) == 17
    info = list(families["cutover_config_info"].samples)
    assert info[0].labels["migration"] == "crm-2026"
    async with http.get(proxy.admin_url + "/metrics") as r:
        assert r.status == 401
    assert orjson.loads(orjson.dumps(list(families)))  # every family has a name
