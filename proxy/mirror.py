"""The bounded dispatcher for secondary traffic (shadow reads, noise probes, verification reads).

Each upstream has one lane with these limits from routes.yaml (`platforms.*.*.mirror`):
  concurrency  jobs in flight at once (also the size of the lane's own connection pool)
  slow_ratio   a secondary slower than this x the primary gets fewer slots (slow_limit)
  queue        jobs waiting for a free slot; fewer when the lane could not start them all
               within max_wait at the pace its jobs finish (a slow secondary)
  rate         jobs started per second (a token bucket), so mirroring never eats a vendor's quota
  max_wait     how long a job may wait for a slot; one that waited longer is dropped (`stale`)
Past any limit a job is dropped and counted with its reason, at once: `submit` never waits, so
the client's request never waits for the secondary. Queued jobs start paced (Lane._kick), so
that a slow secondary's answers do not come back in clumps.

A job is a coroutine factory; the lane runs it in one of its workers (tasks of the supervisor,
which owns and drains them at shutdown; a worker takes the next job when it is done). A job may
return a follow-up (a shadow read's comparison, which waits for an idle pass of the loop,
proxy/idlegate.py): the follow-up runs in the same task after the job's slot has gone to the
next job, because it no longer uses the upstream. Holding the slot through it (when the
comparison still waited for the primary's answer) let a saturated primary starve the lane: 32
slots, each held for a primary's 15 ms under load, capped shadow reads at ~2 100/s and dropped
40 % of them.

Each lane also has a circuit breaker. An upstream that cannot be reached (refused, reset,
timed out, garbage instead of HTTP) BREAKER_THRESHOLD times in a row gets no secondary work for
a cool-off (1 s, doubling to 30 s while it stays down); then one trial job goes through, and an
answer closes the circuit. Without it a down secondary costs every mirrored request a failed
connection: on the bench that was ~0.3 ms of CPU each and a primary p99 of 35-45 ms at 1 000
requests/s (bench/README.md); with it, a down secondary costs what a dropped mirror costs.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from proxy.config.spec import MirrorLimits
from proxy.supervisor import Supervisor

log = structlog.get_logger("cutover.mirror")

FollowUp = Callable[[], Awaitable[None]]
Job = Callable[[], Awaitable[FollowUp | None]]
DropReason = Literal["queue_full", "slow_secondary", "rate", "closed", "circuit_open", "stale"]

BREAKER_THRESHOLD = 5  # consecutive failures that open the circuit
BREAKER_COOL_OFF = 1.0  # seconds before the first trial
BREAKER_COOL_OFF_MAX = 30.0
#: the queue holds this share of what the lane can start within max_wait (see Lane._finished)
ROOM_MARGIN = 0.8
#: queued jobs start at most this share of a slot's time / concurrency apart (see Lane._kick)
PACE_MARGIN = 0.9
#: starts the pacer may catch up on at once, in seconds of its schedule (see Lane._kick)
PACE_CATCH_UP = 0.002
#: slots a slow secondary keeps whatever its pace, so that QA still gets a sample (slow_limit)
SLOW_FLOOR = 4
#: how often the rate of shadow reads offered to a lane is taken (seconds; see Lane._finished)
OFFERED_WINDOW = 1.0
#: a slow secondary is offered this x the reads its slots can take, by coin (Lane._by_coin);
#: the queue takes up what chance sends above that
ADMIT_MARGIN = 1.1


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, bursts up to `burst`; rate 0 means unlimited."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class Breaker:
    """Closed while the upstream answers; open (no work) for a cool-off after
    BREAKER_THRESHOLD failures in a row; one trial per cool-off while open."""

    failures: int = 0
    open_until: float = 0.0
    cool_off: float = 0.0
    trial: bool = False  # a trial job was let through and has not reported yet
    trips: int = 0

    @property
    def is_open(self) -> bool:
        return self.failures >= BREAKER_THRESHOLD

    def allow(self, now: float) -> bool:
        if not self.is_open:
            return True
        if now < self.open_until:
            return False
        # one trial; if it never reports (its job ended before reaching the upstream) the
        # next one goes after another cool-off
        self.trial = True
        self.open_until = now + self.cool_off
        return True

    def succeeded(self) -> bool:
        """An answer came back; True when that closed the circuit."""
        was_open = self.is_open
        self.failures = 0
        self.cool_off = 0.0
        self.trial = False
        return was_open

    def failed(self, now: float) -> bool:
        """The upstream could not be reached; True when that opened the circuit."""
        if self.is_open:
            if self.trial:  # the trial failed: wait longer before the next one
                self.trial = False
                self.cool_off = min(self.cool_off * 2, BREAKER_COOL_OFF_MAX)
                self.open_until = now + self.cool_off
            return False  # failures of jobs started before the circuit opened change nothing
        self.failures += 1
        if self.failures < BREAKER_THRESHOLD:
            return False
        self.cool_off = BREAKER_COOL_OFF
        self.open_until = now + self.cool_off
        self.trips += 1
        return True


def slow_limit(
    concurrency: int, slow_ratio: float, offered: float, primary_s: float | None, slot_s: float
) -> int:
    """Slots a lane keeps: `concurrency`, or, while its secondary answers more than slow_ratio x
    slower than the primary, only as many as a secondary that fast would hold.

    A shadow read costs the event loop the same whatever the secondary's pace, and a slow
    secondary held every slot: 128 slots of 500 ms compared 256 reads/s, and at 1 000 requests/s
    that put the primary's p99 up by 20-30 % over shadow off (bench/README.md). Little's law
    gives the yardstick: at `offered` reads/s, a secondary within slow_ratio x the primary's
    time holds offered x slow_ratio x primary_s slots. A slower one gets that many, so the share
    of reads it compares falls as it slows (slow_ratio x primary_s / slot_s), never below
    SLOW_FLOOR slots: it holds no more slots, connections and memory than a healthy one would,
    and a struggling new platform is not pressed harder by copies. As it recovers, its slot
    time falls and the slots come back. slow_ratio 0, or no primary time yet: `concurrency`."""
    if slow_ratio <= 0 or primary_s is None or slot_s <= slow_ratio * primary_s:
        return concurrency
    healthy = math.ceil(offered * slow_ratio * primary_s)
    return max(min(SLOW_FLOOR, concurrency), min(concurrency, healthy))


class Lane:
    """One upstream's secondary traffic."""

    def __init__(self, name: str, limits: MirrorLimits, supervisor: Supervisor) -> None:
        self.name = name
        self.limits = limits
        self._supervisor = supervisor
        self._bucket = TokenBucket(limits.rate, max(1.0, limits.rate))
        self._waiting: deque[tuple[float, Job]] = deque()
        self._slot_s: float | None = None  # how long a job holds its slot (moving average)
        self._room = limits.queue  # how many may wait: see _finished
        self._pace = 0.0  # seconds between starts of queued jobs: see _kick
        self._next_start = 0.0  # when the pacer lets the next queued job start (monotonic)
        self._pacer: asyncio.TimerHandle | None = None
        self.breaker = Breaker()
        self._task_name = f"mirror:{name}"
        self.limit = limits.concurrency  # slots in force: fewer while the secondary is slow
        self._primary_s: float | None = None  # the primary's time for the same reads (average)
        self._offered = 0.0  # shadow reads offered per second (see _count_offers)
        self._offers = 0
        self._offers_since = time.monotonic()
        self.in_flight = 0
        self.started = 0
        self.dropped: Counter[str] = Counter()
        self._idle: list[asyncio.Future[Job | None]] = []  # workers waiting for a job (_work)
        self._retired = False
        self._coin = random.Random().random  # noqa: S311 - a sample of traffic, not a secret

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job, closing: bool) -> DropReason | None:
        if closing:
            return self._drop("closed")
        now = time.monotonic()
        if not self.breaker.allow(now):
            return self._drop("circuit_open")
        if not self._bucket.take(now):
            return self._drop("rate")
        # a pacer is armed only while jobs wait: none wait, none is armed
        if self.in_flight < self.limit and not self._waiting:
            self._start(job)
            return None
        if len(self._waiting) >= self._room:
            return self._drop(self._full())
        self._waiting.append((now, job))
        self._kick()
        return None

    def turn_away(self, closing: bool) -> DropReason | None:
        """Drop now (counted) what `submit` would drop whatever the job: a closing dispatcher,
        an open circuit between trials, a full lane and queue. Asked before a job is built, so
        that a secondary that is down or saturated costs each request a few comparisons rather
        than a job's worth of objects; `submit` still decides (the rate budget, the trial)."""
        if closing:
            return self._drop("closed")
        now = time.monotonic()
        self._offers += 1
        if now - self._offers_since >= OFFERED_WINDOW:
            self._count_offers(now)
        breaker = self.breaker
        if breaker.is_open and now < breaker.open_until:
            return self._drop("circuit_open")
        if self.limit < self.limits.concurrency and self._by_coin():
            return self._drop("slow_secondary")
        if self.in_flight >= self.limit and len(self._waiting) >= self._room:
            return self._drop(self._full())
        return None

    def _by_coin(self) -> bool:
        """A slow secondary's share of the reads, each turned away by a coin (True) at the
        rate its slots can take them (ADMIT_MARGIN x slots / slot time / reads offered).

        Admitting the first read to find a free slot or a free place in the queue picked the
        reads that had waited behind a comparison: a place frees when a job ends, its
        comparison runs next, and the read that comes in meanwhile waits for it and then takes
        the place. Those ~1 % of reads were slower than the rest (tagged requests against the
        diff log, bench/README.md), enough to decide the primary's p99 at 1 000/s, and QA's
        sample was biased toward reads that came after a busy moment. By coin, the compared
        reads are a uniform sample of the traffic."""
        slot_s, offered = self._slot_s, self._offered
        if not slot_s or not offered:
            return False
        share = ADMIT_MARGIN * self.limit / (slot_s * offered)
        return share < 1.0 and self._coin() >= share

    def primary_took(self, seconds: float) -> None:
        """How long the primary took for a read this lane shadowed (the yardstick of slow_limit)."""
        self._primary_s = (
            seconds if self._primary_s is None else self._primary_s * 0.9 + seconds * 0.1
        )

    def _count_offers(self, now: float) -> None:
        rate = self._offers / (now - self._offers_since)
        self._offered = rate if not self._offered else (self._offered + rate) / 2
        self._offers = 0
        self._offers_since = now

    def _full(self) -> DropReason:
        return "slow_secondary" if self.limit < self.limits.concurrency else "queue_full"

    def report(self, reachable: bool) -> None:
        """What a job saw of the upstream: an answer (any status), or none at all."""
        if reachable:
            # no failure since the last answer: nothing to reset (the usual case)
            if self.breaker.failures and self.breaker.succeeded():
                log.info("mirror_circuit_closed", upstream=self.name)
        elif self.breaker.failed(time.monotonic()):
            log.warning(
                "mirror_circuit_open",
                upstream=self.name,
                failures=BREAKER_THRESHOLD,
                cool_off_s=self.breaker.cool_off,
            )
            self.shed_waiting("circuit_open")

    def shed_waiting(self, reason: DropReason = "closed") -> None:
        """Drop every job that has not started."""
        if self._waiting:
            self.dropped[reason] += len(self._waiting)
            self._waiting.clear()
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None

    def _drop(self, reason: DropReason) -> DropReason:
        self.dropped[reason] += 1
        return reason

    def _start(self, job: Job) -> None:
        self.in_flight += 1
        self.started += 1
        idle = self._idle
        while idle:
            waiter = idle.pop()
            if not waiter.done():  # (a worker cancelled at shutdown leaves a done one)
                waiter.set_result(job)
                return
        self._supervisor.spawn(self._work(job), name=self._task_name)

    async def _work(self, job: Job | None) -> None:
        """A worker: jobs one after the other, waiting in between, rather than a task per job
        (~3 µs each: asyncio's registry of tasks, the supervisor's done callback). A lane has at
        most as many as it ever ran jobs and follow-ups at once; they end when it retires."""
        loop = asyncio.get_running_loop()
        supervisor = self._supervisor
        while job is not None:
            # one job, inline rather than in a coroutine of its own: each level of coroutine
            # is resumed again whenever the job's innermost await wakes
            follow_up = None
            started = time.monotonic()
            try:
                follow_up = await job()
            except Exception:  # a secondary's failure must never surface anywhere but here
                log.exception("mirror_job_failed", upstream=self.name)
            finally:
                self.in_flight -= 1
                self._finished(time.monotonic() - started)
                if not supervisor.closing:
                    self._kick()
            if follow_up is not None:
                try:
                    await follow_up()
                except Exception:
                    log.exception("mirror_follow_up_failed", upstream=self.name)
            if self._retired or supervisor.closing:
                return
            waiter: asyncio.Future[Job | None] = loop.create_future()
            self._idle.append(waiter)
            job = await waiter

    def retire(self) -> None:
        """No more jobs (shutdown, or a reload replaced the lane): idle workers end."""
        self._retired = True
        idle, self._idle = self._idle, []
        for waiter in idle:
            if not waiter.done():
                waiter.set_result(None)

    def _finished(self, seconds: float) -> None:
        """Learn how long a job holds its slot; the queue holds what can start within max_wait.

        A 500 ms secondary with 128 slots starts 256 jobs/s: of a full 1 000-job queue half the
        jobs went stale after being built and holding their primary's answer for 2 s. Now the
        queue is cut to what the lane can start in time (with a margin), and the rest are turned
        away before a job is built."""
        self._slot_s = seconds if self._slot_s is None else self._slot_s * 0.9 + seconds * 0.1
        limits = self.limits
        # slots in force (see `slow_limit`), from the rate of shadow reads offered lately
        offered = self._offered
        if not offered:  # the first window has not closed yet
            offered = self._offers / max(time.monotonic() - self._offers_since, 0.1)
        self.limit = slow_limit(
            limits.concurrency, limits.slow_ratio, offered, self._primary_s, self._slot_s
        )
        fits = ROOM_MARGIN * self.limit * limits.max_wait / max(self._slot_s, 1e-6)
        self._room = min(limits.queue, int(fits))
        self._pace = PACE_MARGIN * self._slot_s / self.limit

    def _kick(self) -> None:
        """Start the oldest waiting job that is still fresh, once a slot is free and the pace
        allows; drop the stale ones before it.

        Queued jobs start paced, a little faster than slots free on average (PACE_MARGIN x the
        slot's time / concurrency), not the moment a slot frees. Otherwise a clump of answers
        frees a clump of slots, which sends a clump of requests, whose answers come back as a
        clump: with a steady 500 ms secondary, half the requests reached it within 0.12 ms of
        the one before, and each clump's comparisons held the event loop for a millisecond.
        Paced, the lane's throughput is the same (the slots bound it) and the work spreads out.

        The pacer keeps a schedule rather than a gap after the last start: when the event loop
        is busy its timer fires late, and the starts that fell due meanwhile go at once (up to
        PACE_CATCH_UP of the schedule; no credit is banked while the lane is idle). Starting
        one job per timer instead capped a saturated proxy's fast lane at one start per pass of
        the loop: ~320 shadow reads/s at 8 700 requests/s, the rest dropped."""
        if self._pacer is not None or self._supervisor.closing:
            return
        waiting = self._waiting
        now = time.monotonic()
        oldest = now - self.limits.max_wait
        while waiting and waiting[0][0] < oldest:
            waiting.popleft()
            self.dropped["stale"] += 1
        self._next_start = max(self._next_start, now - PACE_CATCH_UP)
        while waiting and self.in_flight < self.limit:
            if self._next_start > now:
                wait = self._next_start - now
                self._pacer = asyncio.get_running_loop().call_later(wait, self._paced)
                return
            self._start(waiting.popleft()[1])
            self._next_start += self._pace

    def _paced(self) -> None:
        self._pacer = None
        self._kick()


class MirrorDispatcher:
    def __init__(self, supervisor: Supervisor | None = None) -> None:
        self.supervisor = supervisor or Supervisor("mirror")
        self._lanes: dict[str, Lane] = {}
        self._closing = False

    def lane(self, name: str, limits: MirrorLimits) -> Lane:
        lane = self._lanes.get(name)
        # asked twice per shadowed read (turn_away, submit): the table's own limits object is
        # the usual case, and identity spares comparing the models field by field (~1 µs)
        if lane is None or (lane.limits is not limits and lane.limits != limits):
            # limits changed on reload: the new lane takes new work; jobs of the old one finish
            if lane is not None:
                lane.retire()
            lane = Lane(name, limits, self.supervisor)
            self._lanes[name] = lane
        return lane

    def submit(self, name: str, limits: MirrorLimits, job: Job) -> DropReason | None:
        """Start or queue `job` on the upstream's lane; the reason when it was dropped."""
        return self.lane(name, limits).submit(job, self._closing)

    def turn_away(self, name: str, limits: MirrorLimits) -> DropReason | None:
        """Before building a job for `name`: the reason it would be dropped anyway (counted)."""
        return self.lane(name, limits).turn_away(self._closing)

    def primary_took(self, name: str, seconds: float) -> None:
        """The primary's time for a read shadowed on upstream `name` (see slow_limit)."""
        lane = self._lanes.get(name)
        if lane is not None:
            lane.primary_took(seconds)

    def report(self, name: str, reachable: bool) -> None:
        """A job's view of upstream `name` (see Breaker); unknown names are ignored."""
        lane = self._lanes.get(name)
        if lane is not None:
            lane.report(reachable)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "in_flight": lane.in_flight,
                "limit": lane.limit,
                "queued": lane.queued,
                "started": lane.started,
                "circuit_open": int(lane.breaker.is_open),
                **{f"dropped_{k}": v for k, v in lane.dropped.items()},
            }
            for name, lane in self._lanes.items()
        }

    async def drain(self, timeout: float) -> int:
        """Shutdown: take no more work, drop what waits, let jobs in flight finish in `timeout`."""
        self._closing = True
        for lane in self._lanes.values():
            lane.shed_waiting()
            lane.retire()
        return await self.supervisor.drain(timeout)
