"""The behaviour every store must have, run against each implementation (test_store_*.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from proxy.dualwrite.model import IdEntry, OutboxEntry, RecordRef, order_key
from proxy.dualwrite.store import Store, StoreError


def entry(n: int = 0, *, okey: str | None = None, create: bool = False, **kw: Any) -> OutboxEntry:
    base: dict[str, Any] = {
        "route": "contacts",
        "method": "PATCH",
        "path": f"/api/contacts/{1000 + n}",
        "query": "",
        "body": b'{"full_name": "\xc3\xa9 n%d"}' % n,
        "content_type": "application/json",
        "target": "new",
        "order_key": okey if okey is not None else order_key("contact", "old", str(1000 + n)),
        "record": None if create else RecordRef("contact", "old", str(1000 + n)),
        "request_id": f"r{n}",
        "customer": "sha256:x",
        "created": time.time(),
        "idempotency_key": f"k{n}",
        "primary_key": f"p{n}",
    }
    base.update(kw)
    return OutboxEntry(**base)


async def ready_all(store: Store) -> list[OutboxEntry]:
    out: list[OutboxEntry] = []
    for partition in await store.claim("test", 30):
        after = None
        while batch := await store.ready(partition, after, 100):
            out.extend(batch)
            after = batch[-1].id
    return out


class StoreContract:
    """Subclasses provide an async `store` fixture (opened, empty, closed after)."""

    async def test_intent_commit_and_complete(self, store: Store):
        intent = await store.journal(entry(1))
        assert [e.request_id for e in await store.intents(time.time() + 1)] == ["r1"]
        ready_id = await store.commit(intent, entry(1), None)
        assert await store.intents(time.time() + 1) == []
        [ready] = await ready_all(store)
        assert ready.id == ready_id
        assert ready.state == "ready"
        assert ready.body == entry(1).body
        await store.complete(ready)
        assert await ready_all(store) == []
        assert (await store.stats()).ready == 0

    async def test_an_intent_commits_once(self, store: Store):
        intent = await store.journal(entry(1))
        await store.commit(intent, entry(1), None)
        with pytest.raises(StoreError):
            await store.commit(intent, entry(1), None)
        assert len(await ready_all(store)) == 1

    async def test_last_commit_per_record(self, store: Store):
        assert await store.last_commit("contact:old:1") is None
        early, late = (
            entry(1, okey="contact:old:1", created=100.0),
            entry(2, okey="contact:old:1", created=200.0),
        )
        await store.commit(await store.journal(late), late, None)
        await store.commit(await store.journal(early), early, None)
        assert await store.last_commit("contact:old:1") == 200.0
        assert await store.last_commit("contact:old:2") is None

    async def test_discard_forgets_the_intent(self, store: Store):
        intent = await store.journal(entry(1))
        await store.discard(intent)
        assert await store.intents(time.time() + 1) == []
        assert await ready_all(store) == []

    async def test_ready_entries_come_in_commit_order(self, store: Store):
        intents = [await store.journal(entry(n, okey="contact:old:1")) for n in range(5)]
        for n in (3, 0, 4, 1, 2):  # the primary answered in this order
            await store.commit(intents[n], entry(n, okey="contact:old:1"), None)
        assert [e.request_id for e in await ready_all(store)] == ["r3", "r0", "r4", "r1", "r2"]

    async def test_many_concurrent_commits_all_land(self, store: Store):
        async def one(n: int) -> None:
            intent = await store.journal(entry(n))
            await store.commit(intent, entry(n), None)

        await asyncio.gather(*(one(n) for n in range(200)))
        assert sorted(int(e.request_id[1:]) for e in await ready_all(store)) == list(range(200))

    async def test_reschedule_dead_letter_revive_drop(self, store: Store):
        """Three writes to one record: a revived dead letter goes behind the later ones."""
        one = "contact:old:1"
        ids = [
            await store.commit(await store.journal(entry(n, okey=one)), entry(n, okey=one), None)
            for n in range(3)
        ]
        first, second, third = await ready_all(store)
        await store.reschedule(first.with_(attempts=2, next_at=123.0, last_error="500"))
        again = (await ready_all(store))[0]
        assert (again.attempts, again.next_at, again.last_error) == (2, 123.0, "500")
        await store.dead_letter(
            second.with_(attempts=4, last_error="422"), "422 Unprocessable: phone"
        )
        assert [e.id for e in await ready_all(store)] == [ids[0], ids[2]]
        [dead] = await store.entries("dead", 10)
        assert dead.dead_reason == "422 Unprocessable: phone"
        assert (await store.stats()).dead == 1
        assert await store.revive(None) == 1
        assert [e.request_id for e in await ready_all(store)] == ["r0", "r2", "r1"]
        assert (await store.stats()).dead == 0
        assert await store.drop([third.id]) == 1
        assert [e.request_id for e in await ready_all(store)] == ["r0", "r1"]

    async def test_stats_count_and_age(self, store: Store):
        await store.journal(entry(9, created=time.time() - 30))
        await store.commit(await store.journal(entry(1)), entry(1), None)
        stats = await store.stats()
        assert (stats.ready, stats.intents, stats.dead) == (1, 1, 0)
        assert stats.oldest_age_s is not None
        assert stats.oldest_age_s >= 29
        assert stats.by_target == {"new": 1}

    async def test_stale_intents(self, store: Store):
        await store.journal(entry(1, created=time.time() - 120))
        await store.journal(entry(2))
        assert [e.request_id for e in await store.intents(time.time() - 60)] == ["r1"]

    async def test_id_map_both_ways_and_completion(self, store: Store):
        await store.map_put([IdEntry("contact", "1001", '"CT-AAAAAA"', "old")])
        by_old = await store.map_lookup("contact", "old", "1001")
        by_new = await store.map_lookup("contact", "new", "CT-AAAAAA")
        assert by_old == by_new == IdEntry("contact", "1001", '"CT-AAAAAA"', "old")
        assert by_old is not None
        assert by_old.value_on("old") == 1001
        assert await store.map_lookup("ticket", "old", "1001") is None
        # a record born on new, first single-sided, then completed by its secondary create
        await store.map_put([IdEntry("contact", None, '"CT-BBBBBB"', "new")])
        single = await store.map_lookup("contact", "new", "CT-BBBBBB")
        assert single is not None
        assert single.only_on == "new"
        await store.map_put([IdEntry("contact", "77", '"CT-BBBBBB"', "new")])
        done = await store.map_lookup("contact", "old", "77")
        assert done == IdEntry("contact", "77", '"CT-BBBBBB"', "new")
        assert done.order_key == "contact:new:CT-BBBBBB"

    async def test_commit_stores_the_single_sided_record(self, store: Store):
        create = entry(
            1, create=True, okey="contact:new:CT-CCCCCC", method="POST", path="/api/contacts"
        )
        await store.commit(
            await store.journal(create), create, IdEntry("contact", None, '"CT-CCCCCC"', "new")
        )
        found = await store.map_lookup("contact", "new", "CT-CCCCCC")
        assert found is not None
        assert found.only_on == "new"
        [ready] = await ready_all(store)
        assert ready.is_create

    async def test_map_scan_pages_through_everything(self, store: Store):
        await store.map_put(
            [IdEntry("contact", str(n), f'"CT-{n:06d}"', "old") for n in range(2500)]
        )
        await store.map_put([IdEntry("ticket", "1", '"TK-1"', "old")])
        seen = [e async for e in store.map_scan("contact")]
        assert len(seen) == 2500
        assert len({e.old for e in seen}) == 2500

    async def test_salt_is_stable(self, store: Store):
        assert await store.instance_salt() == await store.instance_salt()
        assert len(await store.instance_salt()) >= 8
