"""`cutover shift|rollback|resume|status|reload` against a real instance's admin API."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from proxy.demo.platforms import Simulators
from tests.conftest import doc_for
from tests.processes import CutoverProcess

pytestmark = pytest.mark.e2e


async def side(
    http: aiohttp.ClientSession, proxy: CutoverProcess, customer: str, channel: str
) -> str:
    async with http.get(
        f"{proxy.url}/api/contacts?limit=1",
        headers={"X-Customer-Id": customer, "X-Channel": channel},
    ) as response:
        return response.headers["X-Cutover-Platform"]


async def cli(proxy: CutoverProcess, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(proxy.cli, *args)
    return result.returncode, result.stdout, result.stderr


async def test_shift_rollback_status_resume(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    code, out, err = await cli(
        proxy,
        "shift",
        "contacts",
        "100",
        "--channel",
        "email",
        "--reason",
        "email pilot",
        "--by",
        "ana",
    )
    assert code == 0, err
    assert "contacts (email): 100% on new" in out
    assert await side(http, proxy, "C-9", "email") == "new"

    code, out, err = await cli(
        proxy, "rollback", "--route", "contacts", "--reason", "wait times up", "--wait", "--json"
    )
    assert code == 0, err
    result = orjson.loads(out)
    assert result["drained"] is True
    assert await side(http, proxy, "C-9", "email") == "old"

    code, out, err = await cli(proxy, "status", "--json")
    assert code == 0, err
    state = orjson.loads(out)
    [scope] = state["rollback"]["file"]
    assert (scope["route"], scope["reason"]) == ("contacts", "wait times up")
    assert scope["at"].endswith("Z")
    code, out, err = await cli(proxy, "status")
    assert "rollback (file): contacts/*/* (wait times up)" in out

    code, out, err = await cli(proxy, "resume", "--reason", "fixed")
    assert code == 0, err
    assert "1 rollback flag(s) lifted" in out
    assert await side(http, proxy, "C-9", "email") == "new"


async def test_refusals_and_unreachable_have_their_exit_codes(sims: Simulators, cutover):
    proxy = await cutover(doc_for(sims))
    code, _, err = await cli(proxy, "shift", "contacts", "140", "--reason", "x")
    assert code == 2
    assert "percent is a number 0-100" in err
    proxy.env["CUTOVER_ADMIN_TOKEN"] = "wrong"
    code, _, err = await cli(proxy, "rollback", "--reason", "x")
    assert code == 2
    assert "401" in err
    code, _, err = await cli(proxy, "status", "--admin", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot reach the admin API" in err


async def test_reload_command(sims: Simulators, cutover):
    proxy = await cutover(doc_for(sims))
    code, out, _ = await cli(proxy, "reload")
    assert (code, out.strip().endswith("(unchanged)")) == (0, True)
    broken = orjson.loads(proxy.config.read_text())
    broken["routes"][0]["weights"] = {"default": 140}
    proxy.config.write_bytes(orjson.dumps(broken))
    code, _, err = await cli(proxy, "reload")  # the CLI still finds the instance that refuses it
    assert code == 2
    assert "not valid" in err
    assert "140 is not a percentage" in err
