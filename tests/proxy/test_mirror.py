"""The mirror dispatcher: concurrency, queue and rate limits drop and count, never wait."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.spec import MirrorLimits
from proxy.mirror import (
    BREAKER_COOL_OFF,
    BREAKER_COOL_OFF_MAX,
    BREAKER_THRESHOLD,
    SLOW_FLOOR,
    Breaker,
    Lane,
    MirrorDispatcher,
    TokenBucket,
    slow_limit,
)
from tests.processes import wait_for


async def slow_lane(dispatcher: MirrorDispatcher, limits: MirrorLimits) -> Lane:
    """A lane that has learned its jobs hold their slot 0.1 s: one such job per slot, done."""
    lane = dispatcher.lane("new-crm", limits)

    async def slow_job() -> None:
        await asyncio.sleep(0.1)  # the secondary taking its time

    for _ in range(limits.concurrency):
        assert dispatcher.submit("new-crm", limits, slow_job) is None
    await wait_for(
        lambda: lane.started == limits.concurrency and lane.in_flight == 0, what="slow jobs"
    )
    return lane


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


async def test_jobs_run_in_the_lanes_workers_which_end_when_it_retires():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=2, queue=10, rate=0)
    tasks: list[asyncio.Task[object] | None] = []

    async def job() -> None:
        tasks.append(asyncio.current_task())

    for _ in range(6):  # one after the other: each finds the worker of the one before idle
        assert dispatcher.submit("new-crm", limits, job) is None
        await wait_for(lambda: dispatcher.lane("new-crm", limits).in_flight == 0, what="a job")
    assert len(tasks) == 6
    assert len(set(tasks)) == 1
    assert len(dispatcher.supervisor) == 1  # idle, waiting for the next job
    # a reload that changes the limits replaces the lane: the old lane's idle worker ends
    changed = MirrorLimits(concurrency=3, queue=10, rate=0)
    assert dispatcher.submit("new-crm", changed, job) is None
    await wait_for(lambda: len(tasks) == 7, what="the new lane's job")
    assert tasks[-1] is not tasks[0]
    await wait_for(lambda: len(dispatcher.supervisor) == 1, what="the old worker to end")
    assert await dispatcher.drain(timeout=5) == 0
    assert len(dispatcher.supervisor) == 0


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


def test_breaker_opens_after_consecutive_failures_and_lets_one_trial_through():
    breaker = Breaker()
    now = 100.0
    for _ in range(BREAKER_THRESHOLD - 1):
        assert not breaker.failed(now)
    assert breaker.succeeded() is False  # an answer in between resets the count
    opened = [breaker.failed(now) for _ in range(BREAKER_THRESHOLD)]
    assert opened == [False] * (BREAKER_THRESHOLD - 1) + [True]
    assert breaker.is_open
    assert not breaker.allow(now + BREAKER_COOL_OFF / 2)
    assert not breaker.failed(now + 0.1), "late failures of earlier jobs change nothing"
    assert breaker.open_until == now + BREAKER_COOL_OFF
    assert breaker.allow(now + BREAKER_COOL_OFF), "one trial after the cool-off"
    assert not breaker.allow(now + BREAKER_COOL_OFF + 0.01), "and only one"
    breaker.failed(now + BREAKER_COOL_OFF + 0.02)  # the trial failed: twice as long
    assert breaker.cool_off == 2 * BREAKER_COOL_OFF
    assert not breaker.allow(now + BREAKER_COOL_OFF + 1.5)
    assert breaker.allow(now + BREAKER_COOL_OFF + 2.1)
    assert breaker.succeeded() is True, "an answer closes the circuit"
    assert breaker.failures == 0  # closed (not `is_open`: mypy keeps the narrowing above)
    assert breaker.allow(now + 4)


def test_breaker_cool_off_is_capped():
    breaker = Breaker()
    now = 0.0
    for _ in range(BREAKER_THRESHOLD):
        breaker.failed(now)
    for _ in range(20):
        now = breaker.open_until
        assert breaker.allow(now)
        breaker.failed(now)
    assert breaker.cool_off == BREAKER_COOL_OFF_MAX


def test_a_trial_that_never_reports_does_not_keep_the_circuit_shut():
    breaker = Breaker()
    for _ in range(BREAKER_THRESHOLD):
        breaker.failed(0.0)
    assert breaker.allow(BREAKER_COOL_OFF)  # this trial's job ends without reaching anyone
    assert not breaker.allow(BREAKER_COOL_OFF + 0.5)
    assert breaker.allow(2 * BREAKER_COOL_OFF), "another trial after another cool-off"


async def test_an_unreachable_upstream_opens_its_lane_and_sheds_what_waits():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=1, queue=10, rate=0)
    release, started = asyncio.Event(), list[int]()
    for i in range(4):
        assert dispatcher.submit("new-crm", limits, blocked_job(started, release, i)) is None
    assert dispatcher.snapshot()["new-crm"]["queued"] == 3
    for _ in range(BREAKER_THRESHOLD):
        dispatcher.report("new-crm", reachable=False)
    snap = dispatcher.snapshot()["new-crm"]
    assert snap["circuit_open"] == 1
    assert snap["queued"] == 0
    assert snap["dropped_circuit_open"] == 3
    assert dispatcher.submit("new-crm", limits, blocked_job(started, release, 9)) == (
        "circuit_open"
    )
    dispatcher.report("other", reachable=False)  # an upstream without a lane: ignored
    dispatcher.report("new-crm", reachable=True)
    assert dispatcher.snapshot()["new-crm"]["circuit_open"] == 0
    release.set()
    await dispatcher.drain(timeout=5)
    assert started == [0]


async def test_a_job_that_waited_past_max_wait_is_dropped_as_stale():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=1, queue=10, rate=0, max_wait=0.05)
    release, started = asyncio.Event(), list[int]()
    for i in range(3):
        assert dispatcher.submit("new-crm", limits, blocked_job(started, release, i)) is None
    await asyncio.sleep(0.1)  # the queued jobs are now older than max_wait (that is the point)
    assert dispatcher.submit("new-crm", limits, blocked_job(started, release, 3)) is None
    release.set()
    await wait_for(lambda: started == [0, 3], what="the fresh job to run after the first")
    assert dispatcher.snapshot()["new-crm"]["dropped_stale"] == 2
    await dispatcher.drain(timeout=5)


async def test_turn_away_drops_before_a_job_exists_only_what_submit_would_drop():
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=1, queue=1, rate=0)
    release, started = asyncio.Event(), list[int]()
    assert dispatcher.turn_away("new-crm", limits) is None  # room: build the job
    assert dispatcher.submit("new-crm", limits, blocked_job(started, release, 0)) is None
    assert dispatcher.turn_away("new-crm", limits) is None  # the queue still has room
    assert dispatcher.submit("new-crm", limits, blocked_job(started, release, 1)) is None
    assert dispatcher.turn_away("new-crm", limits) == "queue_full"
    lane = dispatcher.lane("new-crm", limits)
    assert (lane.in_flight, lane.queued) == (1, 1)  # turning away touched no job
    for _ in range(BREAKER_THRESHOLD):
        dispatcher.report("new-crm", reachable=False)
    assert dispatcher.turn_away("new-crm", limits) == "circuit_open"
    lane.breaker.open_until = 0.0  # the cool-off is over: the trial is submit's to let through
    assert dispatcher.turn_away("new-crm", limits) is None
    assert dispatcher.submit("new-crm", limits, blocked_job(started, release, 2)) is None
    assert lane.breaker.trial
    assert dispatcher.snapshot()["new-crm"]["dropped_queue_full"] == 1
    assert dispatcher.snapshot()["new-crm"]["dropped_circuit_open"] == 2  # the shed one, too
    release.set()
    await dispatcher.drain(timeout=5)
    assert dispatcher.turn_away("new-crm", limits) == "closed"


async def test_a_slow_lane_queues_only_what_it_can_start_within_max_wait():
    """Jobs holding their slot 0.1 s, 2 slots: 20 start per second, so of a 100-job queue
    with max_wait 0.2 s only ~4 could start in time (80 % of it is kept: 3). The rest are
    turned away at once instead of being built, held and dropped as stale."""
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=2, queue=100, rate=0, max_wait=0.2)
    lane = await slow_lane(dispatcher, limits)
    release, started = asyncio.Event(), list[int]()
    reasons = [
        dispatcher.submit("new-crm", limits, blocked_job(started, release, i)) for i in range(12)
    ]
    queued = lane.queued
    assert 1 <= queued <= 3, queued
    assert reasons == [None] * (2 + queued) + ["queue_full"] * (10 - queued)
    assert dispatcher.turn_away("new-crm", limits) == "queue_full"
    release.set()
    await wait_for(lambda: len(started) == 2 + queued, what="the queued jobs to run")
    assert await dispatcher.drain(timeout=5) == 0
    assert dispatcher.snapshot()["new-crm"].get("dropped_stale", 0) == 0


async def test_slots_that_free_together_start_their_queued_jobs_paced():
    """A clump of answers frees a clump of slots; starting the queued jobs at once would send a
    clump of requests, whose answers come back as a clump and hold the event loop. Jobs that
    held their slot ~0.1 s, 4 slots: queued jobs start ~0.9 x 0.1 / 4 s apart, not within
    microseconds (the four quick jobs that free the slots pull the average down to ~0.066 s)."""
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=4, queue=100, rate=0, max_wait=5.0)
    lane = await slow_lane(dispatcher, limits)
    loop = asyncio.get_running_loop()
    first, queued, starts = asyncio.Event(), asyncio.Event(), list[float]()

    def job(release: asyncio.Event) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            starts.append(loop.time())
            await release.wait()

        return run

    assert [dispatcher.submit("new-crm", limits, job(first)) for _ in range(4)] == [None] * 4
    assert [dispatcher.submit("new-crm", limits, job(queued)) for _ in range(4)] == [None] * 4
    assert (lane.in_flight, lane.queued) == (4, 4)  # a free lane starts at once; then queue
    first.set()  # four slots free together
    await wait_for(lambda: len(starts) == 8, what="the queued jobs to start")
    gaps = [b - a for a, b in itertools.pairwise(starts[4:])]
    assert min(gaps) >= 0.01, gaps
    assert dispatcher.snapshot()["new-crm"].get("dropped_stale", 0) == 0
    queued.set()
    assert await dispatcher.drain(timeout=5) == 0


async def test_a_late_pacer_catches_up_rather_than_starting_one_job_per_pass():
    """A saturated proxy's loop takes long passes and the pacer's timer fires late: the starts
    that fell due meanwhile go at once. Starting one per timer capped a fast lane at one start
    per pass (~320 shadow reads/s at 8 700 requests/s on the bench)."""
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=100, queue=1000, rate=0, max_wait=5.0)
    lane = dispatcher.lane("new-crm", limits)

    async def quick_job() -> None:
        await asyncio.sleep(0.01)

    for _ in range(100):
        assert dispatcher.submit("new-crm", limits, quick_job) is None
    await wait_for(lambda: lane.started == 100 and lane.in_flight == 0, what="quick jobs")
    # pace now ~0.9 x 0.01 / 100 s = 90 µs
    first, queued, started = asyncio.Event(), asyncio.Event(), list[int]()
    for i in range(200):
        release = first if i < 100 else queued
        assert dispatcher.submit("new-crm", limits, blocked_job(started, release, i)) is None
    await wait_for(lambda: len(started) == 100, what="the first hundred")
    assert lane.queued == 100
    first.set()
    time.sleep(0.02)  # noqa: ASYNC251 - the point: one long pass of a busy event loop
    for _ in range(2):
        await asyncio.sleep(0)
    assert len(started) - 100 >= 10, f"only {len(started) - 100} queued jobs started"
    queued.set()
    assert await dispatcher.drain(timeout=5) == 0


@pytest.mark.parametrize(
    ("concurrency", "ratio", "offered", "primary_s", "slot_s", "expected"),
    [
        (128, 4, 1000, 0.0003, 0.5, SLOW_FLOOR),  # the bench: 0.3 ms primary, 500 ms secondary
        (128, 4, 1000, 0.1, 0.5, 128),  # 100 ms primary, 5x slower: would need 400, has 128
        (128, 4, 200, 0.1, 0.5, 80),  # 200 reads/s within 4 x 100 ms hold 80 slots
        (128, 4, 1000, 0.1, 0.35, 128),  # within 4 x the primary: not slow
        (128, 0, 1000, 0.0003, 0.5, 128),  # slow_ratio 0: never adapts
        (128, 4, 1000, None, 0.5, 128),  # no primary time learnt yet
        (2, 4, 1000, 0.0003, 0.5, 2),  # the floor is never above concurrency
    ],
)
def test_a_slow_secondary_keeps_the_slots_a_healthy_one_would_hold(
    concurrency: int,
    ratio: float,
    offered: float,
    primary_s: float | None,
    slot_s: float,
    expected: int,
):
    assert slow_limit(concurrency, ratio, offered, primary_s, slot_s) == expected


@given(
    concurrency=st.integers(1, 10_000),
    ratio=st.floats(0, 1000),
    offered=st.floats(0, 1e6),
    primary_s=st.floats(1e-6, 60),
    slot_s=st.floats(0, 600),
    slower=st.floats(1, 100),
)
def test_slow_limit_stays_in_bounds_and_never_grows_as_the_secondary_slows(
    concurrency: int, ratio: float, offered: float, primary_s: float, slot_s: float, slower: float
):
    limit = slow_limit(concurrency, ratio, offered, primary_s, slot_s)
    assert min(SLOW_FLOOR, concurrency) <= limit <= concurrency
    assert slow_limit(concurrency, ratio, offered, primary_s, slot_s * slower) <= limit
    if slot_s <= ratio * primary_s or ratio == 0:
        assert limit == concurrency


async def test_a_lane_whose_secondary_is_far_slower_than_the_primary_gives_up_slots_then_recovers():
    """Jobs of 50 ms against a 1 ms primary: the lane keeps SLOW_FLOOR slots and turns the rest
    away as `slow_secondary`; once its jobs are fast again every slot comes back."""
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=32, queue=0, rate=0, slow_ratio=4)
    lane = dispatcher.lane("new-crm", limits)

    async def slow_job() -> None:
        await asyncio.sleep(0.05)

    async def fast_job() -> None:
        return None

    for _ in range(8):
        assert dispatcher.turn_away("new-crm", limits) is None
        assert dispatcher.submit("new-crm", limits, slow_job) is None
        dispatcher.primary_took("new-crm", 0.001)
    await wait_for(lambda: lane.in_flight == 0, what="the slow jobs")
    assert lane.limit == SLOW_FLOOR
    assert dispatcher.snapshot()["new-crm"]["limit"] == SLOW_FLOOR
    release, started = asyncio.Event(), list[int]()
    reasons = [
        dispatcher.submit("new-crm", limits, blocked_job(started, release, i)) for i in range(10)
    ]
    assert reasons == [None] * SLOW_FLOOR + ["slow_secondary"] * (10 - SLOW_FLOOR)
    assert dispatcher.turn_away("new-crm", limits) == "slow_secondary"
    release.set()
    await wait_for(lambda: lane.in_flight == 0, what="the blocked jobs")

    async def recovered() -> bool:
        assert dispatcher.submit("new-crm", limits, fast_job) is None
        dispatcher.primary_took("new-crm", 0.001)
        await asyncio.sleep(0.001)
        return lane.limit == limits.concurrency

    await wait_for(recovered, interval=0, what="the slots to come back")
    assert await dispatcher.drain(timeout=5) == 0


async def test_a_slow_lane_takes_a_share_of_the_reads_by_coin_not_whoever_finds_a_free_slot(
    monkeypatch: pytest.MonkeyPatch,
):
    """With slots free, a slow lane still turns away all but its share: a uniform sample at the
    rate its slots can take (1.1 x 4 slots / 0.5 s = 8.8 reads/s of 1 000 offered), rather than
    whichever read comes first after a slot frees (one that had waited behind a comparison)."""
    monkeypatch.setattr("proxy.mirror.OFFERED_WINDOW", 3600.0)  # keep the rate set below
    dispatcher = MirrorDispatcher()
    limits = MirrorLimits(concurrency=32, queue=100, rate=0, slow_ratio=4)
    lane = dispatcher.lane("new-crm", limits)
    lane.limit, lane._slot_s, lane._offered = SLOW_FLOOR, 0.5, 1000.0
    reasons = [lane.turn_away(closing=False) for _ in range(20_000)]
    admitted = reasons.count(None)
    assert set(reasons) == {None, "slow_secondary"}
    assert 0.0088 * 20_000 * 0.6 < admitted < 0.0088 * 20_000 * 1.4
    assert lane.in_flight == 0, "every one of them found a free slot"
    lane.limit = limits.concurrency  # a healthy lane: no coin
    assert all(lane.turn_away(closing=False) is None for _ in range(1_000))
