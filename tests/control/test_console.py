"""The operator console's back end on a real admin listener (in process, loopback), in front of
the demo platforms: the page is public and locked down by its CSP, the data behind it needs the
token, and what the endpoints return is what the page draws."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ruamel.yaml import YAML

from proxy.config import parse_config
from proxy.control.console import CSP, load_static
from proxy.demo.platforms import Simulators
from proxy.demo.run import seeded_ids
from proxy.runner import Running, start
from tests.configs import demo_doc, dump
from tests.processes import wait_for

TOKEN = "console-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DATA_ENDPOINTS = (
    "/admin/state",
    "/admin/figures",
    "/admin/diffs",
    "/admin/diffs/some-request",
    "/admin/changes",
    "/admin/fleet",
)
STATIC = Path(__file__).resolve().parents[2] / "proxy" / "static" / "console"


@pytest.fixture
async def console(
    sims: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Running, str]]:
    """cutover in process on the demo's routes, with a token; yields it and its admin URL."""
    monkeypatch.setenv("CUTOVER_ADMIN_TOKEN", TOKEN)
    doc = demo_doc(sims)
    doc.update(
        state_dir=str(tmp_path / "state"),
        store=f"sqlite:///{tmp_path}/state/cutover.db",
        diff_log={"dir": str(tmp_path / "diffs")},
    )
    path = tmp_path / "routes.yaml"
    path.write_bytes(dump(doc))
    table = parse_config(path.read_bytes(), source=str(path), base_dir=tmp_path, env={})
    running = await start(table, config_path=path, preload_ids=seeded_ids(sims))
    try:
        yield running, f"http://127.0.0.1:{running.admin_port}"
    finally:
        await running.stop()


async def call(
    running: Running, path: str, customer: str, channel: str, segment: str = "consumer"
) -> str:
    headers = {"X-Customer-Id": customer, "X-Channel": channel, "X-Segment": segment}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{running.port}{path}", headers=headers) as response,
    ):
        await response.read()
        assert response.status == 200
        return response.headers["X-Cutover-Platform"]


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Any:
    async with http.get(url, headers=AUTH if headers is None else headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_the_page_is_public_and_locked_down_by_its_csp(console, http):
    """The page and its modules load without a token, each with the CSP; they hold no data."""
    _, admin = console
    async with http.get(admin + "/", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/console/"
    async with http.get(admin + "/console/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        page = await response.text()
    referenced = set(re.findall(r'(?:src|href)="([\w.-]+\.(?:js|css|svg))"', page))
    assert {"app.js", "console.css", "icon.svg"} <= referenced
    for name in sorted(referenced | {"api.js", "dom.js"}):
        async with http.get(f"{admin}/console/{name}") as response:
            assert response.status == 200, name
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.headers["Cache-Control"] == "no-cache"
    async with http.get(admin + "/console/nothing.js") as response:
        assert response.status == 404
    async with http.get(admin + "/console/../admin/state") as response:
        assert response.status in {401, 404}, "no way around the token through the page's path"


@pytest.mark.parametrize("path", DATA_ENDPOINTS)
async def test_the_data_behind_the_page_needs_the_token(console, http, path):
    _, admin = console
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"token={TOKEN}"}):
        async with http.get(admin + path, headers=headers) as response:
            assert response.status == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.headers["Cache-Control"] == "no-store"


def test_every_module_the_page_imports_ships_with_the_package():
    """load_static() (what the admin listener serves, from the installed package) has every
    file index.html and the modules name, so the page never meets a 404 halfway."""
    files = load_static()
    wanted = {"index.html"}
    todo = ["index.html"]
    while todo:
        text = files[todo.pop()][0].decode()
        for groups in re.findall(r'(?:src|href)="([\w.-]+\.\w+)"|from "\./([\w.-]+\.js)"', text):
            found = groups[0] or groups[1]
            if found not in wanted:
                wanted.add(found)
                if found.endswith(".js"):
                    todo.append(found)
    assert {"app.js", "api.js", "dom.js", "dialog.js", "overview.js", "console.css"} <= wanted
    assert wanted <= set(files), f"not shipped: {sorted(wanted - set(files))}"
    assert files["app.js"][1].startswith("text/javascript")


def test_the_page_never_turns_data_into_markup():
    """The CSP forbids inline code; the code must also never parse a value as HTML: every value
    of a diff record is upstream data."""
    for path in STATIC.iterdir():
        text = path.read_text()
        if path.suffix == ".js":
            for banned in (
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ):
                assert banned not in text, f"{path.name} uses {banned}"
            assert ".style." not in text and 'setAttribute("style"' not in text, path.name
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), "inline script"
            assert not re.search(r"\sstyle=|<style|\son\w+=", text), "inline style or handler"


async def test_figures_count_what_was_sent_per_route_and_cell(console, sims, http):
    running, admin = console
    for n in range(6):
        assert await call(running, f"/api/contacts/{1010 + n}", f"C-{1010 + n}", "email") == "old"
    assert await call(running, "/api/contacts/1001", "C-1001", "chat") == "new"  # pilot: 100 %

    async def counted() -> Any:
        data = await get_json(http, admin + "/admin/figures?window=60")
        contacts = data["routes"]["contacts"]
        return (
            data
            if contacts["recent"]["requests"] >= 7 and contacts["recent"]["compared"] >= 7
            else None
        )

    data = await wait_for(counted, what="the requests in the figures")
    assert set(data["routes"]) == {"contacts", "tickets", "attachments"}
    contacts = data["routes"]["contacts"]
    series = contacts["series"]
    assert len({len(v) for v in series.values()}) == 1, "every series has one value per slot"
    assert len(series["t"]) == int(60 // data["slot_s"]) + 1
    assert sum(series["new"]) > 0
    assert sum(series["old"]) > 0
    assert contacts["recent"]["old"] == 6
    assert contacts["recent"]["new"] == 1
    assert contacts["cells"]["email"]["everyone"]["old"] == 6
    assert contacts["cells"]["chat"]["pilot"]["share_new"] == 1.0
    assert contacts["recent"]["p95_old_ms"] is not None
    assert data["routes"]["attachments"]["cells"] == {}


async def test_diffs_filter_and_keep_redacted_values_redacted(console, sims, http):
    """A changed e-mail (a redacted path) and a seeded balance difference: the filters pick each,
    and neither the list nor the exchange ever holds the e-mail in clear."""
    running, admin = console
    new_id = next(new for kind, old, new in sims.id_map if kind == "contact" and old == 1003)
    secret = "moved.somewhere@example.com"
    async with http.patch(f"{sims.new_crm.url}/v2/contacts/{new_id}", json={"email": secret}) as r:
        assert r.status == 200, await r.text()
    await call(running, "/api/contacts/1003", "C-1003", "whatsapp")  # e-mail differs
    await call(running, "/api/contacts/1056", "C-1056", "phone", "business")  # balance differs
    await call(running, "/api/contacts/1010", "C-1010", "phone")  # matches

    async def three() -> Any:
        data = await get_json(http, admin + "/admin/diffs?limit=10")
        return data if len(data["records"]) >= 3 else None

    everything = await wait_for(three, what="three diff records")
    assert {r["result"] for r in everything["records"]} == {"match", "mismatch"}
    assert all("bodies" not in r and "customer" not in r for r in everything["records"])

    async def ids(query: str) -> list[str]:
        data = await get_json(http, f"{admin}/admin/diffs?{query}")
        return [r["path"] for r in data["records"]]

    assert await ids("result=mismatch&channel=whatsapp") == ["/api/contacts/1003"]
    assert await ids("result=mismatch&cohort=business") == ["/api/contacts/1056"]
    assert await ids("path=$.email") == ["/api/contacts/1003"]
    assert await ids("path=$.balance&route=contacts") == ["/api/contacts/1056"]
    assert await ids("route=tickets") == []
    assert sorted(await ids("result=mismatch&result=match")) == sorted(
        ["/api/contacts/1003", "/api/contacts/1056", "/api/contacts/1010"]
    )
    async with http.get(admin + "/admin/diffs?result=maybe", headers=AUTH) as response:
        assert response.status == 400
        assert "mismatch" in (await response.json())["detail"]

    listed = await get_json(http, f"{admin}/admin/diffs?channel=whatsapp")
    item = listed["records"][0]
    assert item["paths"] == ["$.email"]
    one = await get_json(http, f"{admin}/admin/diffs/{item['request_id']}")
    exchange = one["exchanges"][0]
    assert exchange["record"]["differences"] == [
        {"path": "$.email", "kind": "changed", "old": "***", "new": "***"}
    ]
    assert exchange["record"]["bodies"]["new"]["email"] == "***"
    marked = [row for row in exchange["rows"] if row["mark"] == "!"]
    assert [row["path"] for row in marked] == ["$.email"]
    assert '"***"' in marked[0]["old"] and '"***"' in marked[0]["new"]
    async with http.get(f"{admin}/admin/diffs/{item['request_id']}", headers=AUTH) as response:
        raw = await response.text()
    assert secret not in raw and "@example" not in raw, "an e-mail in clear"
    async with http.get(admin + "/admin/diffs/no-such-request", headers=AUTH) as response:
        assert response.status == 404


async def test_changes_and_fleet_say_who_why_and_whether_the_file_rules(console, http):
    running, admin = console
    async with http.put(
        admin + "/admin/routes/contacts/weights",
        json={
            "percent": 40,
            "channel": "email",
            "cohort": "everyone",
            "reason": "email wave 1",
            "by": "alice (console)",
        },
        headers=AUTH,
    ) as response:
        assert response.status == 200, await response.text()
    async with http.post(
        admin + "/admin/rollback",
        json={"reason": "wait times up", "by": "bob (console)"},
        headers=AUTH,
    ) as response:
        assert response.status == 200
    entries = (await get_json(http, admin + "/admin/changes"))["entries"]
    newest, older = entries[0], entries[1]
    assert (
        newest["by"],
        newest["action"],
        newest["scope"],
        newest["reason"],
        newest["result"],
    ) == ("bob (console)", "rollback", "*/*/*", "wait times up", "applied")
    assert (older["by"], older["action"], older["scope"], older["reason"]) == (
        "alice (console)",
        "weight",
        "contacts/email/everyone",
        "email wave 1",
    )
    assert older["detail"]["percent"] == 40
    assert older["detail"]["before"] == {"email/everyone": 0.0}

    fleet = await get_json(http, admin + "/admin/fleet")
    assert fleet["mode"] == "single"
    assert fleet["converged"] is True
    assert [i["instance"] for i in fleet["instances"]] == [running.parts.instance]
    assert fleet["self"]["version"] == running.parts.control.table.version

    control = running.parts.control
    assert control.path is not None
    control.path.write_text("version: 1\nmigration: [broken\n")

    async def refused() -> Any:
        data = await get_json(http, admin + "/admin/fleet")
        return data if data["self"]["last_reload_error"] else None

    fleet = await wait_for(refused, what="the broken file to be refused")
    assert fleet["converged"] is False
    assert fleet["self"]["file_in_sync"] is False
    assert fleet["self"]["version"] == control.table.version, "the running table stays"


async def test_the_openapi_document_names_every_path_the_admin_listener_serves(console, http):
    running, admin = console
    assert running.admin is not None
    served = {
        route.resource.canonical
        for route in running.admin.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    spec = YAML(typ="safe").load(
        await (await http.get(admin + "/admin/openapi.yaml", headers=AUTH)).text()
    )
    assert served <= set(spec["paths"]), (
        f"not in openapi.yaml: {sorted(served - set(spec['paths']))}"
    )
    public = {
        path
        for path, ops in spec["paths"].items()
        if any(op.get("security") == [] for op in ops.values())
    }
    assert public == {"/", "/console", "/console/", "/console/{name}", "/healthz", "/readyz"}
