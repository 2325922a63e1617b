"""Reload and the admin API of a real cutover process."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.demo.platforms import Simulators
from tests.configs import REPO
from tests.conftest import doc_for
from tests.processes import CutoverProcess, port_open, wait_for

pytestmark = pytest.mark.e2e


async def platform_of(
    http: aiohttp.ClientSession, proxy: CutoverProcess, customer: str, channel: str = "web"
) -> str:
    async with http.get(
        f"{proxy.url}/api/contacts?limit=1",
        headers={"X-Customer-Id": customer, "X-Channel": channel},
    ) as response:
        assert response.status == 200
        return response.headers["X-Cutover-Platform"]


async def admin(
    http: aiohttp.ClientSession,
    proxy: CutoverProcess,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token if token is not None else proxy.token}"}
    payload = body if body is not None or method == "GET" else {}
    async with http.request(
        method, proxy.admin_url + path, json=payload, headers=headers
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_an_edited_routes_yaml_is_picked_up_and_a_broken_one_refused(
    sims: Simulators, cutover, http
):
    proxy = await cutover(doc_for(sims))
    assert await platform_of(http, proxy, "C-1", "web") == "old"
    text = proxy.config.read_text()
    doc = orjson.loads(text)
    doc["routes"][0]["weights"] = {"default": 100}
    proxy.config.write_bytes(orjson.dumps(doc))

    async def on_new() -> bool:
        return await platform_of(http, proxy, "C-1", "web") == "new"

    await wait_for(on_new, what="the edited weights to apply")
    proxy.config.write_text("version: 1\nmigration: [not, a, name]\n")
    _status, state = await wait_for(
        lambda: _state_with_error(http, proxy), what="the broken file to be refused"
    )
    assert "migration" in state["last_reload_error"]
    assert await platform_of(http, proxy, "C-1", "web") == "new", "the running table stays"


async def _state_with_error(http: aiohttp.ClientSession, proxy: CutoverProcess) -> Any:
    status, state = await admin(http, proxy, "GET", "/admin/state")
    return (status, state) if state.get("last_reload_error") else None


async def test_sighup_reloads(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    doc = orjson.loads(proxy.config.read_text())
    doc["rollback"] = True
    doc["routes"][0]["weights"] = {"default": 100}
    proxy.config.write_bytes(orjson.dumps(doc))
    proxy.signal(signal.SIGHUP)
    await wait_for(lambda: _state_version_is(http, proxy), what="SIGHUP to reload")
    assert await platform_of(http, proxy, "C-1") == "old"


async def _state_version_is(http: aiohttp.ClientSession, proxy: CutoverProcess) -> bool:
    _, state = await admin(http, proxy, "GET", "/admin/state")
    return bool(state["reloads"] >= 1)


async def test_reloads_under_steady_load_fail_no_request(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    failures: list[str] = []
    served = {"old": 0, "new": 0}
    stop = asyncio.Event()

    async def client(n: int) -> None:
        while not stop.is_set():
            try:
                async with http.get(
                    f"{proxy.url}/api/contacts?limit=1", headers={"X-Customer-Id": f"L-{n}"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(str(response.status))
                    served[response.headers.get("X-Cutover-Platform", "?")] += 1
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    clients = [asyncio.ensure_future(client(n)) for n in range(8)]  # noqa: TID251 - owned here
    doc = orjson.loads(proxy.config.read_text())
    for round_ in range(20):
        doc["routes"][0]["weights"] = {"default": (round_ % 2) * 100}
        doc["platforms"]["old"]["crm"]["timeout"] = f"{5 + round_ % 3}s"  # new sessions too
        status, _ = await admin(http, proxy, "POST", "/admin/reload")  # reloads from the file
        proxy.config.write_bytes(orjson.dumps(doc))
        status, result = await admin(http, proxy, "POST", "/admin/reload")
        assert status == 200, result
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    assert served["old"] > 0
    assert served["new"] > 0


async def test_bad_or_missing_token_is_401_and_changes_nothing(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    before = proxy.config.read_text()
    for token in ("wrong", ""):
        status, body = await admin(
            http, proxy, "POST", "/admin/rollback", {"reason": "x"}, token=token
        )
        assert status == 401
        assert body["status"] == 401
    async with http.post(proxy.admin_url + "/admin/rollback", json={"reason": "x"}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert proxy.config.read_text() == before
    async with http.get(proxy.admin_url + "/healthz") as response:
        assert response.status == 200  # probes need no token
    assert "wrong" not in proxy.logs()


async def test_changes_are_json_only(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    async with http.post(
        proxy.admin_url + "/admin/rollback",
        data="reason=x",
        headers={**proxy.admin_headers, "Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert response.status == 415


async def test_admin_changes_are_written_back_with_comments_and_survive_a_restart(
    sims: Simulators, cutover, http
):
    text = (REPO / "routes.yaml").read_text()
    for default, app in (
        (9001, sims.old_crm),
        (9002, sims.old_ticketing),
        (9101, sims.new_crm),
        (9102, sims.new_ticketing),
    ):
        text = text.replace(f"127.0.0.1:{default}", app.url.removeprefix("http://"))
    text = text.replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:${PORT}")
    text = text.replace("listen: 127.0.0.1:8081", "listen: 127.0.0.1:${ADMIN_PORT}")
    proxy = await cutover(text=text, ids=sims)
    original = proxy.config.read_text()

    status, result = await admin(
        http,
        proxy,
        "PUT",
        "/admin/routes/contacts/weights",
        {"channel": "email", "percent": 100, "reason": "email pilot", "by": "ana"},
    )
    assert status == 200, result
    assert await platform_of(http, proxy, "C-1200", "email") == "new"
    status, result = await admin(
        http,
        proxy,
        "POST",
        "/admin/rollback",
        {"route": "contacts", "channel": "email", "reason": "wait times up", "by": "ops"},
    )
    assert status == 200, result
    assert result["drained"] is True
    assert await platform_of(http, proxy, "C-1200", "email") == "old"

    after = proxy.config.read_text()
    for line in original.splitlines():
        if "#" in line and not line.startswith("rollback:"):
            assert line in after, f"comment line lost: {line!r}"
    assert "weights: { default: 0, chat: { default: 10, pilot: 100 }, email: 100 }" in after
    assert '{ route: contacts, channel: email, reason: "wait times up", by: ops, at: ' in after
    assert any(
        e.get("event") == "admin_change" and e.get("by") == "ana" for e in proxy.log_events()
    )

    assert await proxy.stop() == 0
    restarted = await proxy.start()
    assert await platform_of(http, restarted, "C-1200", "email") == "old"
    status, state = await admin(http, restarted, "GET", "/admin/state")
    assert status == 200
    assert state["routes"]["contacts"]["weights"]["email"]["everyone"] == 100
    assert ["email", "everyone"] in state["routes"]["contacts"]["rolled_back"]
    status, result = await admin(
        http,
        restarted,
        "POST",
        "/admin/resume",
        {"route": "contacts", "channel": "email", "reason": "fixed"},
    )
    assert (status, result["lifted"]) == (200, 1)
    assert await platform_of(http, restarted, "C-1200", "email") == "new"


async def test_an_invalid_change_is_refused_and_the_file_untouched(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    before = proxy.config.read_text()
    for body in (
        {"percent": 140, "reason": "x"},
        {"percent": 5},
        {"percent": 5, "channel": "fax", "reason": "x"},
    ):
        status, problem = await admin(http, proxy, "PUT", "/admin/routes/contacts/weights", body)
        assert status == 400, problem
    status, _ = await admin(
        http, proxy, "PUT", "/admin/routes/nope/weights", {"percent": 5, "reason": "x"}
    )
    assert status == 404
    assert proxy.config.read_text() == before


async def test_without_a_token_the_admin_listener_does_not_start(sims: Simulators, cutover):
    process = await cutover(doc_for(sims), env={"CUTOVER_ADMIN_TOKEN": ""}, wait_admin=False)
    assert not port_open(process.admin_port)
    assert any(e.get("event") == "admin_disabled" for e in process.log_events())


async def test_openapi_document_ships_and_names_every_route(sims: Simulators, cutover, http):
    from ruamel.yaml import YAML

    proxy = await cutover(doc_for(sims))
    async with http.get(
        proxy.admin_url + "/admin/openapi.yaml", headers=proxy.admin_headers
    ) as response:
        assert response.status == 200
        spec = YAML(typ="safe").load(await response.text())
    assert spec["openapi"].startswith("3.1")
    assert {
        "/admin/state",
        "/admin/routes/{route}/weights",
        "/admin/rollback",
        "/admin/resume",
        "/admin/reload",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
