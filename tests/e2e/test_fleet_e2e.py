"""A fleet of three real cutover processes controlled through the real Mosquitto."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiomqtt
import orjson
import pytest

from proxy.control.signing import sign
from proxy.demo.platforms import Simulators
from tests.brokers import BROKER_PORT, OwnBroker, clear_retained, require_broker
from tests.conftest import doc_for
from tests.processes import CutoverProcess, wait_for

pytestmark = pytest.mark.e2e
KEY = "test-fleet-key-0123456789abcdef"


class Fleet:
    def __init__(self, sims: Simulators, cutover: Any, broker_url: str) -> None:
        self.migration = f"fleet-{uuid.uuid4().hex[:8]}"
        self.sims = sims
        self.cutover = cutover
        self.broker_url = broker_url
        self.members: list[CutoverProcess] = []

    def doc(self) -> dict[str, Any]:
        doc = doc_for(self.sims)
        doc["migration"] = self.migration
        doc["routes"][0]["weights"] = {"default": 100}  # everyone on new, so a rollback shows
        doc["mqtt"] = {"url": self.broker_url, "key_env": "CUTOVER_CONTROL_KEY", "keepalive": "2s"}
        return doc

    async def start(self, count: int = 3) -> list[CutoverProcess]:
        for _ in range(count):
            self.members.append(await self.cutover(self.doc(), env={"CUTOVER_CONTROL_KEY": KEY}))
        await wait_for(self.all_online, timeout=15, what="every instance online on the broker")
        return self.members

    async def all_online(self) -> bool:
        _code, out, _ = await self.cli("status", "--json")
        if not out:
            return False
        view = orjson.loads(out)
        online = [i for i in view["instances"] if i.get("status") == "online"]
        return len(online) >= len([m for m in self.members if m.proc and m.proc.poll() is None])

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """`cutover ... --fleet`, allowed 20 s to confirm: these tests pin that the fleet
        converges, on a CI machine that may be busy; how fast it does is bench/rollback.py's."""
        result = await asyncio.to_thread(self.members[0].cli, *args, "--fleet", "--timeout", "20")
        return result.returncode, result.stdout, result.stderr


async def serving(
    http: aiohttp.ClientSession, member: CutoverProcess, customer: str = "C-5"
) -> str:
    async with http.get(
        f"{member.url}/api/contacts?limit=1", headers={"X-Customer-Id": customer}
    ) as r:
        assert r.status == 200
        return r.headers["X-Cutover-Platform"]


@pytest.fixture
async def fleet(sims: Simulators, cutover: Any) -> AsyncIterator[Fleet]:
    require_broker()
    f = Fleet(sims, cutover, f"mqtt://127.0.0.1:{BROKER_PORT}")
    yield f
    for member in f.members:
        member.kill()
    await clear_retained(f.migration)


async def test_a_rollback_reaches_all_three_and_status_shows_them_converged(fleet: Fleet, http):
    members = await fleet.start(3)
    assert {await serving(http, m) for m in members} == {"new"}
    code, out, err = await fleet.cli(
        "rollback", "--route", "contacts", "--reason", "wait times up", "--json"
    )
    assert code == 0, err
    result = orjson.loads(out)
    assert result["converged"] is True
    assert len([i for i in result["instances"].values() if i["status"] == "online"]) == 3
    assert {await serving(http, m) for m in members} == {"old"}
    code, out, err = await fleet.cli("status", "--json")
    assert code == 0, err
    view = orjson.loads(out)
    assert view["converged"] is True
    assert [s["route"] for s in view["rollback_scopes"]] == ["contacts"]
    code, out, err = await fleet.cli("resume", "--reason", "fixed")
    assert code == 0, err
    assert {await serving(http, m) for m in members} == {"new"}


async def test_forged_and_replayed_rollbacks_are_refused(fleet: Fleet, http):
    members = await fleet.start(3)
    topic = f"cutover/{fleet.migration}/rollback"
    everything = {
        "kind": "rollback",
        "seq": int(time.time() * 1000),
        "ts": time.time(),
        "scopes": [{}],
        "by": "mallory",
        "reason": "forged",
    }
    forged = sign(b"not-the-fleet-key-000000000000", topic, everything)
    unsigned = orjson.dumps({"payload": everything})
    old = sign(KEY.encode(), topic, {**everything, "seq": 1, "by": "ops", "reason": "old"})
    async with aiomqtt.Client("127.0.0.1", BROKER_PORT) as client:
        for message in (forged, unsigned):
            await client.publish(topic, message, qos=1)

    def refusals(member: CutoverProcess) -> set[str]:
        return {
            str(e.get("reason"))
            for e in member.log_events()
            if e.get("event") == "fleet_message_refused"
        }

    await wait_for(
        lambda: all({"bad_signature", "unsigned"} <= refusals(m) for m in members),
        what="every instance refusing the forgeries",
    )
    assert {await serving(http, m) for m in members} == {"new"}
    code, out, err = await fleet.cli("rollback", "--cohort", "everyone", "--reason", "real")
    assert code == 0, out + err
    code, out, err = await fleet.cli("resume", "--reason", "over")
    assert code == 0, out + err
    async with aiomqtt.Client("127.0.0.1", BROKER_PORT) as client:
        await client.publish(topic, old, qos=1)  # a captured, validly signed, older message
    await wait_for(lambda: all("replay" in refusals(m) for m in members), what="the replay refused")
    assert {await serving(http, m) for m in members} == {"new"}
    assert KEY not in "".join(m.logs() for m in members)


async def test_an_instance_restarted_after_a_rollback_comes_up_rolled_back(fleet: Fleet, http):
    members = await fleet.start(2)
    away = members[1]
    assert await away.stop() == 0
    code, _, err = await fleet.cli("rollback", "--reason", "while one was away")
    assert code == 0, err  # converged: the online instance confirmed; the other is offline
    restarted = await away.start()
    assert await serving(http, restarted) == "old"  # retained on the broker
    assert await serving(http, members[0]) == "old"


async def test_broker_down_serving_never_stops_and_control_resumes(
    sims: Simulators, cutover, http, tmp_path
):
    """The broker killed and started again under load: not one request fails, the instance
    republishes its status (online again) and takes a rollback through the new broker."""
    broker = OwnBroker(tmp_path)
    await broker.start()
    fleet = Fleet(sims, cutover, broker.url)
    try:
        [member] = await fleet.start(1)
        failures: list[str] = []
        stop = asyncio.Event()

        async def load() -> int:
            count = 0
            while not stop.is_set():
                try:
                    await serving(http, member)
                    count += 1
                except (AssertionError, aiohttp.ClientError) as exc:
                    failures.append(repr(exc))
            return count

        running = asyncio.ensure_future(load())  # noqa: TID251 - owned by this test
        await broker.kill()  # killed, not stopped: the instance learns it from its keepalive
        await wait_for(
            lambda: any(e.get("event") == "fleet_disconnected" for e in member.log_events()),
            what="the instance to notice",
        )
        await broker.start()
        await wait_for(fleet.all_online, timeout=20, what="the instance back on the broker")
        code, _, err = await fleet.cli("rollback", "--reason", "after the broker came back")
        assert code == 0, err
        assert await serving(http, member) == "old"
        stop.set()
        served = await running
        assert failures == []
        assert served > 50
        # and without the broker it stays rolled back across a restart (its state file)
        await broker.stop()
        assert await member.stop() == 0
        restarted = await member.start()
        assert await serving(http, restarted) == "old"
    finally:
        for m in fleet.members:
            m.kill()
        await broker.stop()


async def test_shift_and_publish_reach_every_instance(fleet: Fleet, http):
    from ruamel.yaml import YAML

    members = await fleet.start(3)
    code, out, err = await fleet.cli("shift", "contacts", "0", "--reason", "back to 0 %", "--json")
    assert code == 0, err
    assert orjson.loads(out)["converged"] is True
    assert {await serving(http, m) for m in members} == {"old"}
    texts = {m.config.read_text() for m in members}
    assert len(texts) == 1, "every instance wrote the published text to its routes.yaml"
    doc = YAML(typ="safe").load(texts.pop())
    assert doc["routes"][0]["weights"] == {"default": 0}

    doc["routes"][0]["weights"] = {"default": 100}
    published = members[0].workdir / "next.yaml"
    published.write_bytes(orjson.dumps(doc))
    code, out, err = await fleet.cli("publish", str(published), "--json")
    assert code == 0, err + out
    assert orjson.loads(out)["converged"] is True
    assert {await serving(http, m) for m in members} == {"new"}
    code, out, err = await fleet.cli("status", "--json")
    view = orjson.loads(out)
    assert view["converged"] is True
    assert {i["version"] for i in view["instances"]} == {view["config_version"]}


async def test_the_console_sees_the_fleet_converge_on_a_fleet_rollback(fleet: Fleet, http):
    """What the console's Fleet view, banner and audit list read from one instance."""
    members = await fleet.start(2)
    first = members[0]
    code, _, err = await fleet.cli(
        "rollback", "--route", "contacts", "--reason", "wait times up", "--by", "carol"
    )
    assert code == 0, err

    async def fleet_view() -> Any:
        async with http.get(first.admin_url + "/admin/fleet", headers=first.admin_headers) as r:
            assert r.status == 200
            view = await r.json()
        return view if view["rollback_scopes"] and view["converged"] else None

    view = await wait_for(fleet_view, what="the fleet view to show the rollback, converged")
    assert view["mode"] == "fleet"
    online = [i for i in view["instances"] if i["status"] == "online"]
    assert len(online) == 2 and all(i["converged"] for i in online)
    assert view["self"]["version"] in {i["version"] for i in online}
    assert view["config_version"] is None, "no config published: each runs its own file"
    async with http.get(first.admin_url + "/admin/state", headers=first.admin_headers) as r:
        state = await r.json()
    assert [s["route"] for s in state["rollback"]["fleet"]["scopes"]] == ["contacts"]
    assert state["routes"]["contacts"]["rolled_back"], "the grid shows the cells held"
    async with http.get(first.admin_url + "/admin/changes", headers=first.admin_headers) as r:
        entries = (await r.json())["entries"]
    fleet_entry = next(e for e in entries if e["action"] == "fleet rollback")
    assert (fleet_entry["by"], fleet_entry["reason"]) == ("carol", "wait times up")


async def test_a_guard_trip_on_one_instance_rolls_the_cell_back_on_every_instance(
    fleet: Fleet, sims: Simulators, http
):
    """Only the first instance sees traffic, and the new platform fails half of it: its guard
    rolls the cell back through the fleet's rollback flags, so the second instance, which saw
    nothing, serves that customer from old too; other cells stay on new everywhere."""
    doc = fleet.doc()
    doc["routes"][0]["guard"] = {
        "window": "60s",
        "interval": "0.2s",
        "min_requests": 20,
        "max_error_rate": 0.1,
    }
    fleet.doc = lambda: doc  # type: ignore[method-assign]
    busy, quiet = await fleet.start(2)
    assert {await serving(http, m, "C-7") for m in (busy, quiet)} == {"new"}
    sims.new_crm.set_faults(mode="flaky", error_rate=0.5, methods=["GET"])

    async def busy_served_by_old() -> bool:
        async with http.get(
            f"{busy.url}/api/contacts?limit=1", headers={"X-Customer-Id": "C-7"}
        ) as r:
            await r.read()
            return bool(r.headers.get("X-Cutover-Platform") == "old")

    def tripped(member: CutoverProcess) -> list[dict[str, Any]]:
        return [
            e
            for e in member.log_events()
            if e.get("event") == "control_event" and e.get("kind") == "guard_tripped"
        ]

    await wait_for(busy_served_by_old, timeout=20, what="the guard to roll the cell back")
    [event] = await wait_for(lambda: tripped(busy), what="the guard_tripped event")
    sims.new_crm.set_faults(mode="ok")
    assert await serving(http, quiet, "C-7") == "old"  # the fleet followed
    other = "email" if event["channel"] != "email" else "phone"
    for member in (busy, quiet):  # another channel is another cell: still on new
        async with http.get(
            f"{member.url}/api/contacts?limit=1",
            headers={"X-Customer-Id": "C-7", "X-Channel": other},
        ) as r:
            assert r.status == 200
            assert r.headers["X-Cutover-Platform"] == "new"
    code, out, err = await fleet.cli("status", "--json")
    assert code == 0, err
    view = orjson.loads(out)
    assert view["converged"] is True
    [scope] = view["rollback_scopes"]
    assert scope["route"] == "contacts"
    assert (scope["channel"], scope["cohort"]) == (event["channel"], event["cohort"])
    assert scope["by"] == "guard"
    assert tripped(quiet) == [], "the quiet instance had nothing to judge: it followed the fleet"
