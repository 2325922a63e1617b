"""The mirror dispatcher: concurrency, queue and rate limits drop and count, never wait."""

from __future__ import annotations

import asyncio

from proxy.config.spec import MirrorLimits
from proxy.mirror import MirrorDispatcher, TokenBucket
from tests.processes import wait_for


def blocked_job(started: list[int], release: asyncio.Event, i: int):
    async def job() -> None:
        started.append(i)
        await release.wait()

    return job


async def test_concurrency_then_queue_then_drop():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=2, queue=3, rate=0)
    release, started = asyncio.Event(), list[int]()
    reasons = [
        dispatcher.submit("new-crm", limits, blocked_job(started, release, i)) for i in range(7)
    ]
    assert reasons == [None] * 5 + ["queue_full"] * 2
    await asyncio.sleep(0)  # let the started jobs run to their first await
    lane = dispatcher.lane("new-crm", limits)
    assert lane.in_flight == 2
    assert lane.queued == 3
    release.set()
    await wait_for(lambda: len(started) == 5, what="the queued jobs to run")
    assert await dispatcher.drain(timeout=5) == 0
    assert sorted(started) == [0, 1, 2, 3, 4]
    assert dispatcher.snapshot()["new-crm"]["dropped_queue_full"] == 2


async def test_a_failing_job_is_contained_and_frees_its_slot():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=1, queue=5, rate=0)
    done = asyncio.Event()

    async def boom() -> None:
        raise RuntimeError("secondary exploded")

    async def ok() -> None:
        done.set()

    assert dispatcher.submit("x", limits, boom) is None
    assert dispatcher.submit("x", limits, ok) is None
    await asyncio.wait_for(done.wait(), timeout=5)
    await dispatcher.drain(timeout=5)


async def test_submit_never_waits_even_when_jobs_hang():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=4, queue=10, rate=0)
    never = asyncio.Event()
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(10_000):
        dispatcher.submit("slow", limits, blocked_job([], never, i))
    assert loop.time() - began < 1.0
    snap = dispatcher.snapshot()["slow"]
    assert snap["in_flight"] == 4
    assert snap["queued"] == 10
    assert snap["dropped_queue_full"] == 10_000 - 14
    assert await dispatcher.drain(timeout=0.05) == 4  # hung jobs are cancelled at shutdown
    assert dispatcher.snapshot()["slow"]["dropped_closed"] == 10


async def test_closed_dispatcher_drops():
    dispatcher = MirrorDispatcher()
    await dispatcher.drain(timeout=1)

    async def job() -> None:
        raise AssertionError("must not run")

    assert dispatcher.submit("x", MirrorLimits(), job) == "closed"


def test_token_bucket_rate():
    bucket = TokenBucket(rate=10, burst=10)
    now = bucket.stamp
    assert sum(bucket.take(now) for _ in range(50)) == 10  # the burst
    assert not bucket.take(now + 0.05)
    assert bucket.take(now + 0.15)  # one token every 100 ms
    assert sum(bucket.take(now + 10) for _ in range(50)) == 10  # never more than the burst
    assert all(TokenBucket(rate=0, burst=1).take(now) for _ in range(100))


async def test_rate_budget_sheds_mirrors():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=100, queue=100, rate=5)
    done = []

    async def job() -> None:
        done.append(1)

    reasons = [dispatcher.submit("q", limits, job) for _ in range(20)]
    assert reasons.count(None) == 5
    assert reasons.count("rate") == 15
    await dispatcher.drain(timeout=5)
    assert len(done) == 5
