"""The bounded dispatcher for secondary traffic (shadow reads, noise probes, verification reads).

Each upstream has one lane with three limits from routes.yaml (`platforms.*.*.mirror`):
  concurrency  jobs in flight at once (also the size of the lane's own connection pool)
  queue        jobs waiting for a free slot
  rate         jobs started per second (a token bucket), so mirroring never eats a vendor's quota
Past any limit a job is dropped and counted with its reason, at once: `submit` never waits, so
the client's request never waits for the secondary. A job is a coroutine factory; the lane runs
it under the supervisor, which owns and drains it at shutdown.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from proxy.config.spec import MirrorLimits
from proxy.supervisor import Supervisor

log = structlog.get_logger("cutover.mirror")

Job = Callable[[], Awaitable[None]]
DropReason = Literal["queue_full", "rate", "closed"]


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


class Lane:
    """One upstream's secondary traffic."""

    def __init__(self, name: str, limits: MirrorLimits, supervisor: Supervisor) -> None:
        self.name = name
        self.limits = limits
        self._supervisor = supervisor
        self._bucket = TokenBucket(limits.rate, max(1.0, limits.rate))
        self._waiting: deque[Job] = deque()
        self.in_flight = 0
        self.started = 0
        self.dropped: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job, closing: bool) -> DropReason | None:
        if closing:
            return self._drop("closed")
        if not self._bucket.take(time.monotonic()):
            return self._drop("rate")
        if self.in_flight < self.limits.concurrency:
            self._start(job)
            return None
        if len(self._waiting) >= self.limits.queue:
            return self._drop("queue_full")
        self._waiting.append(job)
        return None

    def shed_waiting(self) -> None:
        """Drop every job that has not started (counted as `closed`)."""
        self.dropped["closed"] += len(self._waiting)
        self._waiting.clear()

    def _drop(self, reason: DropReason) -> DropReason:
        self.dropped[reason] += 1
        return reason

    def _start(self, job: Job) -> None:
        self.in_flight += 1
        self.started += 1
        self._supervisor.spawn(self._run(job), name=f"mirror:{self.name}")

    async def _run(self, job: Job) -> None:
        try:
            await job()
        except Exception:  # a secondary's failure must never surface anywhere but here
            log.exception("mirror_job_failed", upstream=self.name)
        finally:
            self.in_flight -= 1
            if self._waiting and not self._supervisor.closing:
                self._start(self._waiting.popleft())


class MirrorDispatcher:
    def __init__(self, supervisor: Supervisor | None = None) -> None:
        self.supervisor = supervisor or Supervisor("mirror")
        self._lanes: dict[str, Lane] = {}
        self._closing = False

    def lane(self, name: str, limits: MirrorLimits) -> Lane:
        lane = self._lanes.get(name)
        if lane is None or lane.limits != limits:
            # limits changed on reload: the new lane takes new work; jobs of the old one finish
            lane = Lane(name, limits, self.supervisor)
            self._lanes[name] = lane
        return lane

    def submit(self, name: str, limits: MirrorLimits, job: Job) -> DropReason | None:
        """Start or queue `job` on the upstream's lane; the reason when it was dropped."""
        return self.lane(name, limits).submit(job, self._closing)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "in_flight": lane.in_flight,
                "queued": lane.queued,
                "started": lane.started,
                **{f"dropped_{k}": v for k, v in lane.dropped.items()},
            }
            for name, lane in self._lanes.items()
        }

    async def drain(self, timeout: float) -> int:
        """Shutdown: take no more work, drop what waits, let jobs in flight finish in `timeout`."""
        self._closing = True
        for lane in self._lanes.values():
            lane.shed_waiting()
        return await self.supervisor.drain(timeout)
