"""The Redis store against the real Redis at 127.0.0.1:6379: the contract, plus what a fleet
sharing one Redis needs (partition order, leases split and taken over, atomic commits).

Every test works under its own key prefix in db 11 and removes its keys afterwards. A Redis
that is not there fails the tests: it is part of the environment they pin.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.dualwrite.model import IdEntry
from proxy.dualwrite.redis_store import GROUP, RedisStore
from proxy.dualwrite.store import StoreError, open_store, partition_of
from tests.dualwrite.store_contract import StoreContract, entry, ready_all

pytestmark = pytest.mark.redis

URL = "redis://127.0.0.1:6379/11"
TTL = 0.4  # seconds: short leases, so takeovers happen within the test's time
Opener = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def raw() -> AsyncIterator[Redis]:
    """A plain client to look behind the store's back; fails loudly without Redis."""
    client = Redis.from_url(URL, decode_responses=True, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"the Redis these tests need is not reachable at {URL}: {exc!r}")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(raw: Redis) -> AsyncIterator[str]:
    name = f"cutover-test:{uuid.uuid4().hex}:"
    yield name
    keys = [key async for key in raw.scan_iter(match=f"{name}*", count=1000)]
    if keys:
        await raw.delete(*keys)


@pytest.fixture
async def opened(prefix: str) -> AsyncIterator[Opener]:
    """Opens stores on the test's prefix (one per "instance") and closes them all after."""
    stores: list[RedisStore] = []

    async def make(**kw: Any) -> RedisStore:
        store = RedisStore(URL, prefix=prefix, **kw)
        await store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


class TestRedisStore(StoreContract):
    """The contract on the fleet's layout: 8 partitions."""

    @pytest.fixture
    async def store(self, opened: Opener) -> RedisStore:
        return await opened()


class TestRedisStoreOnePartition(StoreContract):
    """The contract again with one partition, where commit order is one global order."""

    @pytest.fixture
    async def store(self, opened: Opener) -> RedisStore:
        return await opened(partitions=1)


def okeys_in(partition: int, count: int, partitions: int = 8) -> list[str]:
    """Order keys of different records that all land in `partition`."""
    found = [
        f"contact:old:{n}"
        for n in range(10_000)
        if partition_of(f"contact:old:{n}", partitions) == partition
    ]
    return found[:count]


async def eventually(check: Callable[[], Awaitable[bool]], deadline_s: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold before the deadline"
        await asyncio.sleep(0.02)


async def test_commit_order_holds_within_a_partition(opened: Opener) -> None:
    """Different records of one partition come back in the order the primary answered."""
    store = await opened()
    keys = okeys_in(3, 6)
    intents = [await store.journal(entry(n, okey=k)) for n, k in enumerate(keys)]
    for n in (4, 1, 5, 0, 3, 2):
        await store.commit(intents[n], entry(n, okey=keys[n]), None)
    [partition] = {partition_of(k, 8) for k in keys}
    await store.claim("w", 30)
    batch = await store.ready(partition, None, 100)
    assert [e.request_id for e in batch] == ["r4", "r1", "r5", "r0", "r3", "r2"]
    assert all(e.id.startswith("3-") for e in batch)
    # paging with `after` continues exactly behind the last entry seen
    assert [e.request_id for e in await store.ready(partition, batch[1].id, 2)] == ["r5", "r0"]
    with pytest.raises(StoreError):
        await store.ready(2, batch[0].id, 10)  # an id of another partition


async def test_revive_goes_behind_later_writes_of_its_record(opened: Opener) -> None:
    """The partitioned version of the contract's dead-letter scenario: one record's writes."""
    store = await opened()
    okey = "contact:old:1"
    for n in range(3):
        await store.commit(await store.journal(entry(n, okey=okey)), entry(n, okey=okey), None)
    first, second, third = await ready_all(store)
    await store.reschedule(first.with_(attempts=2, next_at=123.0, last_error="500"))
    await store.dead_letter(second.with_(attempts=4, last_error="422"), "422 phone")
    assert [(e.request_id, e.attempts) for e in await ready_all(store)] == [("r0", 2), ("r2", 0)]
    [dead] = await store.entries("dead", 10)
    assert (dead.id, dead.state, dead.attempts, dead.dead_reason) == (
        second.id,
        "dead",
        4,
        "422 phone",
    )
    assert await store.revive(None) == 1
    revived = await ready_all(store)
    assert [e.request_id for e in revived] == ["r0", "r2", "r1"]
    assert revived[2].id != second.id
    assert (revived[2].attempts, revived[2].last_error) == (0, None)
    assert await store.revive([second.id]) == 0  # its old id is gone
    assert await store.drop([third.id, revived[2].id]) == 2
    assert [e.request_id for e in await ready_all(store)] == ["r0"]
    assert (await store.stats()).ready == 1


async def test_two_instances_split_the_partitions(opened: Opener) -> None:
    """Leases are spread fairly and no partition is ever held by two instances at once."""
    a, b = await opened(), await opened()
    held = {"a": await a.claim("a", TTL)}
    assert held["a"] == list(range(8))  # alone: everything
    held["b"] = await b.claim("b", TTL)
    assert not set(held["a"]) & set(held["b"])

    async def balanced() -> bool:
        held["a"] = await a.claim("a", TTL)  # sheds what is over its share
        assert not set(held["a"]) & set(held["b"])
        held["b"] = await b.claim("b", TTL)  # takes what has run out
        assert not set(held["a"]) & set(held["b"])
        return len(held["a"]) == len(held["b"]) == 4

    await eventually(balanced)
    assert sorted(held["a"] + held["b"]) == list(range(8))


async def test_release_hands_the_partitions_over_at_once(opened: Opener) -> None:
    """A graceful stop frees its leases, shed ones included: nobody waits for a ttl."""
    a, b = await opened(), await opened()
    assert await a.claim("a", 30) == list(range(8))
    assert await b.claim("b", 30) == []
    assert await a.claim("a", 30) == [0, 1, 2, 3]  # over its share: 4..7 are shed
    assert await b.claim("b", 30) == []  # ... and run out only after a's 30 s
    await a.release("a")
    assert await b.claim("b", 30) == list(range(8))


async def test_an_owner_that_stops_renewing_loses_its_partitions_after_the_ttl(
    opened: Opener,
) -> None:
    """A crashed instance's partitions go to the survivor, but not before its leases run out."""
    a, b = await opened(), await opened()
    await a.claim("a", TTL)
    await b.claim("b", TTL)
    await eventually(lambda: _split(a, b))
    stopped = time.monotonic()
    mine = set(await a.claim("a", TTL))  # a's last renewal, then it "dies"
    assert not mine & set(await b.claim("b", TTL))

    async def took_over() -> bool:
        return await b.claim("b", TTL) == list(range(8))

    await eventually(took_over)
    assert time.monotonic() - stopped >= TTL * 0.9


async def _split(a: RedisStore, b: RedisStore) -> bool:
    one, two = await a.claim("a", TTL), await b.claim("b", TTL)
    return len(one) == len(two) == 4


async def test_entries_read_but_not_completed_reach_the_next_owner(
    opened: Opener, raw: Redis, prefix: str
) -> None:
    """What a dead owner had read and not confirmed is sent by the next one, in order."""
    a, b = await opened(), await opened()
    keys = okeys_in(5, 3)
    for n, key in enumerate(keys):
        await a.commit(await a.journal(entry(n, okey=key)), entry(n, okey=key), None)
    assert 5 in await a.claim("a", TTL)
    read = await a.ready(5, None, 10)
    assert [e.request_id for e in read] == ["r0", "r1", "r2"]
    stream = f"{prefix}out:5"
    assert (await raw.xpending(stream, GROUP))["consumers"] == [{"name": "a", "pending": 3}]
    await a.complete(read[0])  # one confirmed; a dies with the other two in flight

    async def b_holds_5() -> bool:
        return 5 in await b.claim("b", TTL)

    await eventually(b_holds_5)
    assert [e.request_id for e in await b.ready(5, None, 10)] == ["r1", "r2"]
    assert (await raw.xpending(stream, GROUP))["consumers"] == [{"name": "b", "pending": 2}]


async def test_commit_is_atomic(opened: Opener, raw: Redis, prefix: str) -> None:
    """At every instant each write is an intent or a ready entry, never both or neither."""
    store = await opened()
    count = 150
    intents = [await store.journal(entry(n)) for n in range(count)]
    streams = [f"{prefix}out:{p}" for p in range(8)]
    done = asyncio.Event()
    seen: list[tuple[int, int]] = []

    async def snapshot() -> tuple[int, int]:
        async with raw.pipeline(transaction=True) as pipe:  # MULTI/EXEC: one instant
            pipe.hlen(f"{prefix}intent")
            for stream in streams:
                pipe.xlen(stream)
            intents_left, *lengths = await pipe.execute()
        return intents_left, sum(lengths)

    async def observe() -> None:
        while not done.is_set():
            seen.append(await snapshot())
            await asyncio.sleep(0)

    async def commit_all() -> None:
        await asyncio.gather(*(store.commit(i, entry(n), None) for n, i in enumerate(intents)))
        done.set()

    await asyncio.gather(observe(), commit_all())
    seen.append(await snapshot())
    assert len(seen) > 2
    assert all(left + ready == count for left, ready in seen)
    assert seen[-1] == (0, count)


async def test_a_commit_that_fails_changes_nothing(opened: Opener, raw: Redis, prefix: str) -> None:
    """If the ready entry cannot be written, the intent stays and no id map record appears."""
    store = await opened()
    create = entry(1, create=True, okey="contact:new:CT-1")
    intent = await store.journal(create)
    stream = f"{prefix}out:{partition_of('contact:new:CT-1', 8)}"
    await raw.delete(stream)
    await raw.set(stream, "not a stream")
    with pytest.raises(StoreError, match="commit"):
        await store.commit(intent, create, IdEntry("contact", None, '"CT-1"', "new"))
    assert [e.id for e in await store.intents(time.time() + 1)] == [intent]
    assert await store.map_lookup("contact", "new", "CT-1") is None


async def test_an_unreachable_redis_is_a_store_error_at_once():
    """Nothing listens: open() fails fast with StoreError instead of retrying for seconds."""
    store = RedisStore("redis://127.0.0.1:1/0", prefix="cutover-test:unreachable:")
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1\b"):
        await store.open()
    assert time.monotonic() - started < 2
    with pytest.raises(StoreError, match="not open"):
        await store.journal(entry(1))


async def test_a_redis_that_never_answers_times_out():
    """A peer that accepts and stays silent: the call ends with StoreError after the timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match="Timeout"):
            await store.open()
        assert time.monotonic() - started < 3
    finally:
        server.close()
        await server.wait_closed()


async def test_data_survives_closing_and_reopening(opened: Opener, prefix: str) -> None:
    """Another store object on the same prefix (a restarted instance) finds everything."""
    store = await opened()
    salt = await store.instance_salt()
    await store.commit(await store.journal(entry(1)), entry(1), None)
    dead_id = await store.commit(await store.journal(entry(2)), entry(2), None)
    await store.journal(entry(3))
    await store.map_put([IdEntry("contact", "1001", '"CT-1"', "old")])
    [_, dead] = await ready_all(store)
    assert dead.id == dead_id
    await store.dead_letter(dead.with_(attempts=3, last_error="422"), "422 phone")
    await store.close()

    again = await opened()
    assert await again.instance_salt() == salt
    assert await again.last_commit(entry(2).order_key) is not None
    assert [e.request_id for e in await ready_all(again)] == ["r1"]
    assert [e.request_id for e in await again.intents(time.time() + 1)] == ["r3"]
    [dead] = await again.entries("dead", 10)
    assert (dead.id, dead.dead_reason, dead.attempts, dead.last_error) == (
        dead_id, "422 phone", 3, "422",
    )  # fmt: skip
    assert await again.map_lookup("contact", "new", "CT-1") == IdEntry(
        "contact", "1001", '"CT-1"', "old"
    )


async def test_a_different_partition_count_is_refused(opened: Opener) -> None:
    """Instances that disagree on partitions would split one record's writes over two streams."""
    await opened(partitions=8)
    with pytest.raises(StoreError, match="8 partitions"):
        await opened(partitions=4)


async def test_counts_per_target_follow_every_move(opened: Opener) -> None:
    """by_target is kept by the scripts themselves: commit, dead letter, revive, drop, complete."""
    store = await opened()
    for n in range(4):
        target = "new" if n % 2 else "old"
        await store.commit(
            await store.journal(entry(n, target=target)), entry(n, target=target), None
        )
    first, second, third, fourth = sorted(await ready_all(store), key=lambda e: e.request_id)
    assert (await store.stats()).by_target == {"old": 2, "new": 2}
    await store.dead_letter(first, "400")
    await store.complete(second)
    await store.complete(second)  # twice: counted once
    assert (await store.stats()).by_target == {"old": 1, "new": 1}
    assert await store.revive([first.id]) == 1
    assert await store.drop([third.id, fourth.id, third.id]) == 2
    stats = await store.stats()
    assert (stats.ready, stats.dead, stats.by_target) == (1, 0, {"old": 1})


async def test_drop_takes_intents_too_and_bad_ids_are_store_errors(opened: Opener) -> None:
    """An operator may drop an unknown-outcome intent; a mistyped id is an error, not a no-op."""
    store = await opened()
    intent = await store.journal(entry(1))
    assert await store.drop([intent]) == 1
    assert await store.intents(time.time() + 1) == []
    for bad in ("nonsense", "9-1-0", "3-x"):
        with pytest.raises(StoreError):
            await store.drop([bad])


async def test_map_put_moves_an_index_when_an_id_changes(opened: Opener) -> None:
    """A record whose new id is corrected no longer answers to the old new id."""
    store = await opened()
    await store.map_put([IdEntry("contact", "5", '"CT-OLD"', "old")])
    await store.map_put([IdEntry("contact", "5", '"CT-NEW"', "old")])
    assert await store.map_lookup("contact", "new", "CT-OLD") is None
    assert await store.map_lookup("contact", "new", "CT-NEW") == IdEntry(
        "contact", "5", '"CT-NEW"', "old"
    )
    assert [e async for e in store.map_scan("contact")] == [
        IdEntry("contact", "5", '"CT-NEW"', "old")
    ]


def test_open_store_names_the_redis_store(tmp_path: Path):
    store = open_store("redis://127.0.0.1:6379/11", tmp_path, partitions=4)
    assert isinstance(store, RedisStore)
    assert store.partitions == 4
