"""Dual-write through an in-process cutover in front of the demo platforms, with a real SQLite
outbox: writes reach both platforms under their own ids, in order, whatever the secondary does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import parse_config
from proxy.demo.platforms import Simulators
from proxy.demo.run import seeded_ids
from proxy.runner import Running, start
from tests.configs import demo_doc, dump
from tests.processes import wait_for


class Sink(list[dict[str, Any]]):
    def submit(self, record: dict[str, Any]) -> bool:
        self.append(record)
        return True


Starter = Callable[..., Any]


@pytest.fixture
async def demo(
    sims: Simulators, tmp_path: Path, store_choice: dict[str, str]
) -> AsyncIterator[Starter]:
    """cutover in process on the demo routes, against SQLite and against the real Redis."""
    started: list[Running] = []

    async def make(
        change: Callable[[dict[str, Any]], None] | None = None, sink: Sink | None = None
    ) -> Running:
        doc = demo_doc(sims)
        doc.update(store_choice)
        doc["outbox"] = {"backoff_min": "20ms", "backoff_max": "200ms", "intent_timeout": "1s"}
        if change is not None:
            change(doc)
        running = await start(
            parse_config(dump(doc), env={}, base_dir=tmp_path),
            sink=sink if sink is not None else Sink(),
            preload_ids=seeded_ids(sims),
        )
        started.append(running)
        return running

    yield make
    for running in started:
        await running.stop()


async def call(
    running: Running,
    method: str,
    path: str,
    customer: str,
    channel: str = "phone",
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str]:
    hdrs = {"X-Customer-Id": customer, "X-Channel": channel, **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://127.0.0.1:{running.port}{path}", json=json, headers=hdrs
        ) as response,
    ):
        body = await response.json() if response.content_type.endswith("json") else None
        return response.status, body, response.headers["X-Cutover-Platform"]


def outbox_empty(running: Running) -> Callable[[], Any]:
    async def check() -> bool:
        assert running.parts.store is not None
        stats = await running.parts.store.stats()
        return stats.ready == 0 and stats.intents == 0

    return check


async def test_create_update_delete_reach_both_platforms_under_their_own_ids(
    sims: Simulators, demo
):
    running = await demo()
    status, created, side = await call(
        running,
        "POST",
        "/api/contacts",
        "C-2001",
        json={
            "customer": "C-2001",
            "full_name": "Grace Hopper",
            "phone": "020 7946 0999",
            "status": "open",
        },
    )
    assert (status, side) == (201, "old")
    old_id = created["id"]
    assert isinstance(old_id, int)
    await wait_for(outbox_empty(running), what="the create to reach new")
    [on_new] = [c for c in sims.new_crm.contacts() if c["customer"] == "C-2001"]
    assert on_new["name"] == "Grace Hopper"
    assert on_new["phone_e164"] == "+442079460999" or on_new["phone_e164"].startswith("+")
    assert str(on_new["id"]).startswith("CT-")

    status, updated, _ = await call(
        running,
        "PATCH",
        f"/api/contacts/{old_id}",
        "C-2001",
        json={"status": "closed", "full_name": "Grace B. Hopper"},
    )
    assert status == 200
    assert updated["status"] == "closed"
    await wait_for(outbox_empty(running), what="the update to reach new")
    new_record = sims.new_crm.contact(on_new["id"])
    assert new_record is not None
    assert (new_record["status"], new_record["name"]) == ("RESOLVED", "Grace B. Hopper")

    status, _, _ = await call(running, "DELETE", f"/api/contacts/{old_id}", "C-2001")
    assert status == 204
    await wait_for(outbox_empty(running), what="the delete to reach new")
    assert sims.old_crm.contact(old_id) is None
    assert sims.new_crm.contact(on_new["id"]) is None
    mirrored = [r for r in sims.new_crm.requests() if r.header("X-Cutover-Mirror") == "dual-write"]
    assert [r.method for r in mirrored] == ["POST", "PATCH", "DELETE"]
    assert len({r.header("Idempotency-Key") for r in mirrored}) == 3


async def test_a_customer_on_new_writes_new_first_and_reads_old_ids(sims: Simulators, demo):
    """A pilot chat customer is served by new; the client still sees the old contract."""
    running = await demo()
    status, body, side = await call(
        running, "PATCH", "/api/contacts/1001", "C-1001", "chat", json={"full_name": "Ada Pilot"}
    )
    assert (status, side) == (200, "new")
    assert body["id"] == 1001  # the old id, translated back from CT-…
    assert body["full_name"] == "Ada Pilot"  # the old contract's field name
    await wait_for(outbox_empty(running), what="the write to reach old")
    old = sims.old_crm.contact(1001)
    assert old is not None
    assert old["full_name"] == "Ada Pilot"
    # a create on new: the client gets the new id until the old platform has the record too
    status, made, side = await call(
        running,
        "POST",
        "/api/contacts",
        "C-1001",
        "chat",
        json={"customer": "C-1001", "full_name": "Second Ada"},
    )
    assert (status, side) == (201, "new")
    assert str(made["id"]).startswith("CT-")
    await wait_for(outbox_empty(running), what="the create to reach old")
    status, again, _ = await call(running, "GET", f"/api/contacts/{made['id']}", "C-1001", "chat")
    assert status == 200
    assert isinstance(again["id"], int), "once both platforms hold it, the client sees the old id"


async def test_secondary_down_then_back_every_write_arrives_in_order(sims: Simulators, demo):
    running = await demo()
    await sims.new_crm.go_down()
    for n in range(8):
        status, _, _ = await call(
            running, "PATCH", "/api/contacts/1010", "C-1010", json={"full_name": f"Version {n}"}
        )
        assert status == 200
    assert running.parts.store is not None
    assert (await running.parts.store.stats()).ready == 8
    await sims.new_crm.come_up()
    await wait_for(outbox_empty(running), timeout=20, what="the backlog to drain")
    new_id = sims.new_id("contact", 1010)
    patches = [
        r for r in sims.new_crm.requests() if r.method == "PATCH" and r.path.endswith(str(new_id))
    ]
    assert len(patches) >= 8
    assert new_id is not None
    record = sims.new_crm.contact(new_id)
    assert record is not None
    assert record["name"] == "Version 7"


async def test_writes_to_one_record_reach_the_primary_one_at_a_time(sims: Simulators, demo):
    """Two writes to one record in flight at once: the second waits for the first to settle, so
    both platforms end with the second (they used to be able to settle in the other order than
    the primary applied them). A write to another record does not wait."""
    running = await demo()
    sims.old_crm.set_faults("slow", delay_ms=300, methods=["PATCH"])

    def patches(old_id: int) -> list[Any]:
        return [
            r
            for r in sims.old_crm.requests()
            if r.method == "PATCH" and r.path.endswith(f"/{old_id}")
        ]

    def patch(old_id: int, name: str) -> asyncio.Future[tuple[int, Any, str]]:
        return asyncio.ensure_future(  # noqa: TID251 - the test owns it
            call(
                running, "PATCH", f"/api/contacts/{old_id}", f"C-{old_id}", json={"full_name": name}
            )
        )

    first = patch(1014, "First")
    await wait_for(lambda: patches(1014), what="the first write at the old CRM")
    second, other = patch(1014, "Second"), patch(1015, "Other")
    results = await asyncio.gather(first, second, other)
    assert [status for status, _, _ in results] == [200, 200, 200]
    [at_first, at_second] = [r.at for r in patches(1014)]
    [at_other] = [r.at for r in patches(1015)]
    assert at_second - at_first >= 0.29  # sent once the first was answered (300 ms) and settled
    assert at_other - at_first < 0.25  # another record's write went meanwhile
    await wait_for(outbox_empty(running), timeout=20, what="both writes on the new CRM")
    old, new_id = sims.old_crm.contact(1014), sims.new_id("contact", 1014)
    assert old is not None
    assert new_id is not None
    new = sims.new_crm.contact(new_id)
    assert new is not None
    assert (old["full_name"], new["name"]) == ("Second", "Second")
    assert running.parts.proxy.dual is not None
    assert len(running.parts.proxy.dual.turns) == 0  # no lock left behind


async def test_500s_are_retried_and_422_is_a_dead_letter_with_its_reason(sims: Simulators, demo):
    running = await demo()
    sims.new_crm.set_faults("flaky", error_rate=0.5, methods=["PATCH"])
    status, _, _ = await call(
        running, "PATCH", "/api/contacts/1011", "C-1011", json={"full_name": "Retried"}
    )
    assert status == 200
    await wait_for(outbox_empty(running), what="the retried write")
    new_id = sims.new_id("contact", 1011)
    assert new_id is not None
    record = sims.new_crm.contact(new_id)
    assert record is not None
    assert record["name"] == "Retried"
    sims.new_crm.set_faults("status", status=422)
    await call(running, "PATCH", "/api/contacts/1012", "C-1012", json={"full_name": "Refused"})
    store = running.parts.store
    assert store is not None

    async def dead() -> Any:
        return await store.entries("dead", 10)

    [letter] = await wait_for(dead, what="a dead letter")
    assert letter.dead_reason is not None
    assert letter.dead_reason.startswith("422")
    assert letter.path == "/api/contacts/1012"


async def test_the_primary_failing_means_nothing_is_replayed(sims: Simulators, demo):
    running = await demo()
    sims.old_crm.set_faults("status", status=422)
    status, _, _ = await call(
        running, "PATCH", "/api/contacts/1013", "C-1013", json={"full_name": "x"}
    )
    assert status == 422
    assert running.parts.store is not None
    stats = await running.parts.store.stats()
    assert (stats.ready, stats.intents) == (0, 0)
    assert not [r for r in sims.new_crm.requests() if r.method == "PATCH"]


async def test_tickets_refer_to_contacts_by_each_platforms_id(sims: Simulators, demo):
    running = await demo()
    status, ticket, _ = await call(
        running,
        "POST",
        "/api/tickets",
        "C-1020",
        json={"contact_id": 1020, "subject": "Broken router", "priority": "high"},
    )
    assert status == 201
    await wait_for(outbox_empty(running), what="the ticket to reach new")
    [on_new] = [t for t in sims.new_ticketing.tickets() if t["title"] == "Broken router"]
    assert on_new["contact"] == sims.new_id("contact", 1020)
    assert on_new["priority"] == "HIGH"
    status, listed, _ = await call(running, "GET", "/api/tickets?contact_id=1020", "C-1020", "chat")
    assert status == 200
    assert ticket["id"] in [t["id"] for t in listed["items"]]


async def test_a_write_on_dual_write_routes_is_refused_when_it_cannot_be_journaled(
    sims: Simulators, demo
):
    running = await demo()
    assert running.parts.store is not None
    await running.parts.store.close()
    status, body, _ = await call(
        running, "PATCH", "/api/contacts/1014", "C-1014", json={"full_name": "x"}
    )
    assert status == 503
    assert body["type"].endswith("outbox-unavailable")
    assert not [r for r in sims.old_crm.requests() if r.method == "PATCH"], "nothing was sent"


async def test_verify_after_reads_the_record_back_on_both(sims: Simulators, demo):
    """verify_after: once both platforms confirmed, the record is read on both and compared."""
    sink = Sink()

    def verify(doc: dict[str, Any]) -> None:
        doc["routes"][0]["verify_after"] = "100ms"

    running = await demo(verify, sink=sink)
    status, _, _ = await call(
        running, "PATCH", "/api/contacts/1015", "C-1015", json={"full_name": "Verified Person"}
    )
    assert status == 200

    def verified() -> list[dict[str, Any]]:
        return [r for r in sink if r["kind"] == "verify"]

    [good] = await wait_for(verified, what="a verify record")
    assert good["result"] == "match"
    assert good["path"] == "/api/contacts/1015"
    # an automation on new changes the record after the write: the read-back shows it
    sims.new_crm.set_faults(
        "wrong_field", field="name", value="Renamed By Automation", methods=["GET"]
    )
    await call(running, "PATCH", "/api/contacts/1016", "C-1016", json={"full_name": "Another"})
    await wait_for(lambda: len(verified()) == 2, what="a second verify record")
    bad = verified()[1]
    assert bad["result"] == "mismatch"
    assert [d["path"] for d in bad["differences"]] == ["$.full_name"]
    assert "bodies" not in bad


async def test_a_customer_moved_to_new_and_rolled_back_keeps_what_was_written_on_new(
    sims: Simulators, demo
):
    def on_new(doc: dict[str, Any]) -> None:
        doc["routes"][0]["weights"] = {"default": 100}

    running = await demo(on_new)
    status, made, side = await call(
        running,
        "POST",
        "/api/contacts",
        "C-2100",
        json={"customer": "C-2100", "full_name": "Written On New"},
    )
    assert (status, side) == (201, "new")
    status, _, side = await call(
        running, "PATCH", "/api/contacts/1030", "C-1030", json={"full_name": "Changed On New"}
    )
    assert (status, side) == (200, "new")
    await wait_for(outbox_empty(running), what="the writes to reach old")
    await running.stop()

    def rolled_back(doc: dict[str, Any]) -> None:
        doc["routes"][0]["weights"] = {"default": 100}
        doc["rollback"] = True

    back = await demo(rolled_back)
    status, body, side = await call(back, "GET", "/api/contacts/1030", "C-1030")
    assert (status, side, body["full_name"]) == (200, "old", "Changed On New")
    status, listed, side = await call(back, "GET", "/api/contacts?customer=C-2100", "C-2100")
    assert (status, side) == (200, "old")
    assert [c["full_name"] for c in listed["items"]] == ["Written On New"]
    status, again, side = await call(back, "GET", f"/api/contacts/{made['id']}", "C-2100")
    assert (status, side) == (200, "old"), "the new id the client kept still finds the record"
    assert again["full_name"] == "Written On New"


async def test_a_record_on_one_platform_only_is_served_by_it_whatever_the_weights(
    sims: Simulators, demo
):
    """Record affinity: created on new while dual-write was off, it stays reachable when the
    customer's weights say old, and writes to it are not replayed to old (a dead letter says why)."""

    def new_without_dual_write(doc: dict[str, Any]) -> None:
        doc["routes"][0]["weights"] = {"default": 100}
        doc["routes"][0]["dual_write"] = False

    running = await demo(new_without_dual_write)
    status, made, side = await call(
        running,
        "POST",
        "/api/contacts",
        "C-2200",
        json={"customer": "C-2200", "full_name": "Only On New"},
    )
    assert (status, side) == (201, "new")
    await running.stop()

    running = await demo()  # the demo's weights: this customer on old, dual-write on
    status, body, side = await call(running, "GET", f"/api/contacts/{made['id']}", "C-2200")
    assert (status, side, body["full_name"]) == (200, "new", "Only On New")
    status, _, side = await call(
        running,
        "PATCH",
        f"/api/contacts/{made['id']}",
        "C-2200",
        json={"full_name": "Still Only On New"},
    )
    assert (status, side) == (200, "new")
    store = running.parts.store
    assert store is not None

    async def dead() -> Any:
        return await store.entries("dead", 10)

    [letter] = await wait_for(dead, what="the write to old refused as a dead letter")
    assert letter.dead_reason is not None
    assert "exists on new only" in letter.dead_reason
    assert not [c for c in sims.old_crm.contacts() if c["customer"] == "C-2200"]
