"""Guards: the moment the new platform misbehaves for a cell, that cell goes back to old.

Every `guard.interval`, each route x channel x cohort cell of a route with a `guard` is judged
over its `guard.window` (proxy.telemetry keeps the windows):

  mismatch rate   shadow comparisons that differed / comparisons        > max_mismatch_rate
  error rate      new-platform 5xx and failures / new-platform answers   > max_error_rate
  latency ratio   p95 of new / p95 of old (answers and shadow reads)     > max_latency_ratio

Each figure is judged only when its own denominator reached `min_requests` (a 5xx rate of 1 in 3
is not evidence). A breach in a cell that sends customers to new rolls that cell back at once
through proxy.control.changes (the fleet's rollback flags when in a fleet, so every instance
follows), with an event carrying the figures and their window; the cell stays rolled back
until someone resumes it. The verdicts also gate the phased plans (proxy.control.plan).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from proxy.config import RouteTable
from proxy.config.spec import GuardSpec
from proxy.control.changes import Changes
from proxy.control.live import Control
from proxy.routing import is_rolled_back
from proxy.telemetry import Cell, Figures, Telemetry

log = structlog.get_logger("cutover.guard")
DEFAULT_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class Verdict:
    cell: Cell
    figures: Figures
    breaches: tuple[str, ...]  # what went over its limit, in words
    judged: bool  # at least one figure had enough data to be judged
    on_new: bool  # the cell sends some customers to new (a rollback would change something)
    rolled_back: bool

    def as_dict(self) -> dict[str, object]:
        route, channel, cohort = self.cell
        return {
            "route": route,
            "channel": channel,
            "cohort": cohort,
            "judged": self.judged,
            "breaches": list(self.breaches),
            "on_new": self.on_new,
            "rolled_back": self.rolled_back,
            "figures": self.figures.as_dict(),
        }


def judge(
    cell: Cell, figures: Figures, guard: GuardSpec, *, on_new: bool, rolled_back: bool
) -> Verdict:
    """Pure: the figures of one cell against the route's limits."""
    breaches: list[str] = []
    judged = False
    enough = guard.min_requests
    if guard.max_mismatch_rate is not None and figures.compared >= enough:
        judged = True
        rate = figures.mismatch_rate or 0.0
        if rate > guard.max_mismatch_rate:
            breaches.append(
                f"mismatch rate {rate:.1%} > {guard.max_mismatch_rate:.1%} "
                f"({figures.mismatched} of {figures.compared} comparisons)"
            )
    if guard.max_error_rate is not None and figures.requests_new >= enough:
        judged = True
        rate = figures.error_rate or 0.0
        if rate > guard.max_error_rate:
            breaches.append(
                f"new-platform error rate {rate:.1%} > {guard.max_error_rate:.1%} "
                f"({figures.errors_new} of {figures.requests_new} answers)"
            )
    if (
        guard.max_latency_ratio is not None
        and figures.samples_old >= enough
        and figures.samples_new >= enough
    ):
        judged = True
        ratio = figures.latency_ratio
        if ratio is not None and ratio > guard.max_latency_ratio:
            new_ms, old_ms = (figures.p95_new or 0) * 1000, (figures.p95_old or 0) * 1000
            breaches.append(
                f"p95 latency new/old {ratio:.2f} > {guard.max_latency_ratio:.2f} "
                f"({new_ms:.0f} ms vs {old_ms:.0f} ms)"
            )
    return Verdict(cell, figures, tuple(breaches), judged, on_new, rolled_back)


class Guardian:
    def __init__(self, control: Control, telemetry: Telemetry, changes: Changes) -> None:
        self.control = control
        self.telemetry = telemetry
        self.changes = changes
        self.trips: Counter[Cell] = Counter()
        self.verdicts: dict[Cell, Verdict] = {}
        self.after_tick: list[Callable[[dict[Cell, Verdict]], Awaitable[None]]] = []
        self._stopping = False
        self._wake = asyncio.Event()

    def interval(self, table: RouteTable) -> float:
        guards = [r.spec.guard.interval for r in table.routes if r.spec.guard is not None]
        return max(min(guards, default=DEFAULT_INTERVAL), 0.05)

    def evaluate(self) -> dict[Cell, Verdict]:
        table = self.control.table
        overlay = self.control.tables.overlay
        verdicts: dict[Cell, Verdict] = {}
        for route in table.routes:
            guard = route.spec.guard
            if guard is None:
                continue
            for channel in table.channels:
                for cohort in table.cohort_names:
                    cell = (route.name, channel, cohort)
                    held = is_rolled_back(table.rollback, *cell) or is_rolled_back(overlay, *cell)
                    verdicts[cell] = judge(
                        cell,
                        self.telemetry.figures(cell, guard.window),
                        guard,
                        on_new=route.weight_bp(channel, cohort) > 0,
                        rolled_back=held,
                    )
        self.verdicts = verdicts
        return verdicts

    async def tick(self) -> None:
        verdicts = self.evaluate()
        for verdict in verdicts.values():
            if verdict.breaches and verdict.on_new and not verdict.rolled_back:
                await self.trip(verdict)
        for hook in self.after_tick:
            await hook(verdicts)

    async def trip(self, verdict: Verdict) -> None:
        route, channel, cohort = verdict.cell
        reason = "guard: " + "; ".join(verdict.breaches) + f" over {verdict.figures.window_s:g}s"
        how = await self.changes.rollback(
            route=route, channel=channel, cohort=cohort, reason=reason[:400], by="guard"
        )
        self.trips[verdict.cell] += 1
        log.warning(
            "guard_tripped",
            route=route,
            channel=channel,
            cohort=cohort,
            how=how,
            breaches=list(verdict.breaches),
            figures=verdict.figures.as_dict(),
        )
        self.control.event(
            "guard_tripped",
            route=route,
            channel=channel,
            cohort=cohort,
            breaches=list(verdict.breaches),
            figures=verdict.figures.as_dict(),
            window_s=verdict.figures.window_s,
            applied_through=how,
        )

    async def run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:  # a guard failing must never take the process down with it
                log.exception("guard_tick_failed")
            wait = self.interval(self.control.table) - (time.monotonic() - started)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.01))

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def snapshot(self) -> list[dict[str, object]]:
        return [v.as_dict() for v in self.verdicts.values() if v.judged or v.breaches]
