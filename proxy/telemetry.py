"""What cutover counts: one cheap call per request or comparison, two consumers.

  - cumulative counters and latency histograms, exported to Prometheus at scrape time
    (proxy.metrics) — nothing on the hot path but dict increments;
  - sliding windows per route x channel x cohort cell, read by the guards (proxy.control.guard):
    requests and 5xx per platform, comparisons and mismatches, latency histograms per platform.

Labels are bounded: routes, channels and cohorts come from the table in force; anything else is
folded into `other`, so a label set can never grow with traffic.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config import RouteTable

#: latency histogram bounds in seconds (Prometheus-style `le`), fine around API latencies
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
)
OTHER = "other"
#: (route, channel, cohort) names remembered with their cell (Telemetry._cell)
_CELLS_KEPT = 1024
Cell = tuple[str, str, str]  # (route, channel, cohort)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.n += other.n

    def quantile(self, q: float) -> float | None:
        """An upper bound of the q-quantile (the bucket's bound; the last bucket's lower one)."""
        if self.n == 0:
            return None
        rank = q * self.n
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
        return BUCKETS[-1]


@dataclass
class Slot:
    """One time slice of one cell."""

    start: float
    requests: Counter[str] = field(default_factory=Counter)  # platform -> answered requests
    errors: Counter[str] = field(default_factory=Counter)  # platform -> 5xx and failures
    compared: int = 0
    mismatched: int = 0
    latency: dict[str, Histogram] = field(default_factory=dict)  # platform -> histogram

    def merge(self, other: Slot) -> None:
        self.requests.update(other.requests)
        self.errors.update(other.errors)
        self.compared += other.compared
        self.mismatched += other.mismatched
        for side, hist in other.latency.items():
            self.latency.setdefault(side, Histogram()).merge(hist)

    def figures(self, window_s: float) -> Figures:
        """This slot (or a merge of several) as the figures of a window of `window_s`."""
        old = self.latency.get("old") or Histogram()
        new = self.latency.get("new") or Histogram()
        return Figures(
            window_s=window_s,
            requests=sum(self.requests.values()),
            requests_new=self.requests["new"],
            errors_new=self.errors["new"],
            compared=self.compared,
            mismatched=self.mismatched,
            p95_old=old.quantile(0.95),
            p95_new=new.quantile(0.95),
            samples_old=old.n,
            samples_new=new.n,
        )


@dataclass(frozen=True, slots=True)
class Figures:
    """A cell over a window, as a guard judges it."""

    window_s: float
    requests: int
    requests_new: int
    errors_new: int
    compared: int
    mismatched: int
    p95_old: float | None
    p95_new: float | None
    samples_old: int
    samples_new: int

    @property
    def error_rate(self) -> float | None:
        return self.errors_new / self.requests_new if self.requests_new else None

    @property
    def mismatch_rate(self) -> float | None:
        return self.mismatched / self.compared if self.compared else None

    @property
    def latency_ratio(self) -> float | None:
        if self.p95_old is None or self.p95_new is None or self.p95_old <= 0:
            return None
        return self.p95_new / self.p95_old

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "window_s": self.window_s,
            "requests": self.requests,
            "requests_new": self.requests_new,
            "errors_new": self.errors_new,
            "error_rate": _round(self.error_rate),
            "compared": self.compared,
            "mismatched": self.mismatched,
            "mismatch_rate": _round(self.mismatch_rate),
            "p95_old_ms": _ms(self.p95_old),
            "p95_new_ms": _ms(self.p95_new),
            "latency_ratio": _round(self.latency_ratio),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


class CellWindow:
    """A ring of slots; slots older than the longest window asked for are dropped."""

    def __init__(self, slot_s: float, keep_s: float) -> None:
        self.slot_s = slot_s
        self.keep_s = keep_s
        self.slots: deque[Slot] = deque()

    def slot(self, now: float) -> Slot:
        start = now - (now % self.slot_s)
        if not self.slots or self.slots[-1].start != start:
            self.slots.append(Slot(start))
            while self.slots and self.slots[0].start < now - self.keep_s - self.slot_s:
                self.slots.popleft()
        return self.slots[-1]

    def figures(self, now: float, window_s: float) -> Figures:
        total = Slot(now)
        for slot in self.slots:
            if slot.start >= now - window_s:
                total.merge(slot)
        return total.figures(window_s)


class Telemetry:
    """Owned by the app; fed by the data path and the shadow jobs, read by metrics and guards."""

    def __init__(self, table: RouteTable, slot_s: float = 5.0) -> None:
        self.slot_s = slot_s
        self.requests: Counter[tuple[str, str, str, str, str]] = Counter()
        self.latency: dict[tuple[str, str, str], Histogram] = {}  # (route, platform, role)
        self.windows: dict[Cell, CellWindow] = {}
        self.started = time.time()
        self.retable(table)

    def retable(self, table: RouteTable) -> None:
        """Label values allowed from now on (call on every swap)."""
        self._routes = frozenset(r.name for r in table.routes)
        self._channels = table.channel_set
        self._cohorts = frozenset(table.cohort_names)
        guards = [r.spec.guard.window for r in table.routes if r.spec.guard is not None]
        self._keep_s = max(guards, default=300.0)
        self._cells: dict[tuple[str | None, str | None, str | None], tuple[Cell, CellWindow]] = {}

    def _cell(
        self, route: str | None, channel: str | None, cohort: str | None
    ) -> tuple[Cell, CellWindow]:
        """The labels of a request's cell and its window, looked up once per (route, channel,
        cohort) as the request names them: two calls fewer for every request and comparison."""
        key = (route, channel, cohort)
        found = self._cells.get(key)
        if found is None:
            if len(self._cells) >= _CELLS_KEPT:  # names the table does not know, all "other"
                self._cells.clear()
            cell = self._labels(route, channel, cohort)
            found = self._cells[key] = (cell, self._window(cell))
        return found

    def _labels(self, route: str | None, channel: str | None, cohort: str | None) -> Cell:
        return (
            route if route in self._routes else OTHER,
            channel if channel in self._channels else OTHER,
            cohort if cohort in self._cohorts else OTHER,
        )

    def _window(self, cell: Cell) -> CellWindow:
        window = self.windows.get(cell)
        if window is None:
            window = self.windows[cell] = CellWindow(self.slot_s, self._keep_s)
        return window

    def request(
        self,
        route: str | None,
        channel: str | None,
        cohort: str | None,
        platform: str | None,
        status: int,
        seconds: float,
    ) -> None:
        """A client's request was answered (by `platform`, or by cutover itself when None)."""
        cell, window = self._cell(route, channel, cohort)
        side = platform if platform in ("old", "new") else "none"
        code = f"{status // 100}xx" if 100 <= status < 600 else "error"
        self.requests[(*cell, side, code)] += 1
        if side == "none":
            return
        key = (cell[0], side, "primary")
        hist = self.latency.get(key)
        if hist is None:
            hist = self.latency[key] = Histogram()
        hist.observe(seconds)
        slot = window.slot(time.monotonic())
        slot.requests[side] += 1
        if status >= 500 or status < 100:
            slot.errors[side] += 1
        slot_hist = slot.latency.get(side)
        if slot_hist is None:
            slot_hist = slot.latency[side] = Histogram()
        slot_hist.observe(seconds)

    def compared(
        self,
        route: str,
        channel: str,
        cohort: str,
        result: str,
        secondary: tuple[str, float] | None = None,
    ) -> None:
        """A shadow comparison (outcome counts live in ShadowStats): the window learns the
        mismatch, and the secondary's latency counts for its platform, so a cell that is all on
        one platform still has the other's latency to compare with."""
        cell, window = self._cell(route, channel, cohort)
        slot = window.slot(time.monotonic())
        if result in ("match", "mismatch"):
            slot.compared += 1
            if result == "mismatch":
                slot.mismatched += 1
        if secondary is None:
            return
        side, seconds = secondary
        key = (cell[0], side, "secondary")
        hist = self.latency.get(key)
        if hist is None:
            hist = self.latency[key] = Histogram()
        hist.observe(seconds)
        slot_hist = slot.latency.get(side)
        if slot_hist is None:
            slot_hist = slot.latency[side] = Histogram()
        slot_hist.observe(seconds)

    def figures(self, cell: Cell, window_s: float) -> Figures:
        return self._window(cell).figures(time.monotonic(), window_s)

    def timeline(self, window_s: float) -> tuple[float, dict[Cell, list[Slot]]]:
        """(now, each cell's slots that began within `window_s`, oldest first), on the
        monotonic clock: the console's live charts. At most the longest guard window is kept
        (300 s without guards)."""
        now = time.monotonic()
        since = now - window_s - self.slot_s
        return now, {
            cell: [slot for slot in window.slots if slot.start >= since]
            for cell, window in self.windows.items()
        }

    def export(self) -> dict[str, object]:
        """The cumulative counters as JSON-able data (a worker's share for worker 0's /metrics)."""
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "latency": [[*k, h.counts, h.total, h.n] for k, h in self.latency.items()],
        }

    def absorb(self, data: Mapping[str, Any]) -> None:
        """Add another worker's export to these counters (on a copy made for one scrape)."""
        for route, channel, cohort, platform, code, value in data.get("requests", []):
            self.requests[(route, channel, cohort, platform, code)] += int(value)
        for route, platform, role, counts, total, n in data.get("latency", []):
            hist = self.latency.setdefault((route, platform, role), Histogram())
            for i, count in enumerate(counts[: len(hist.counts)]):
                hist.counts[i] += int(count)
            hist.total += float(total)
            hist.n += int(n)
