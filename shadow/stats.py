"""Shadow outcomes counted in memory per route x channel x cohort, for the admin state, the
metrics exporter and the guards. Plain integers on the event loop: no locks, no allocation per
request beyond the first of a cell."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["match", "mismatch", "error", "dropped", "aborted"]
OUTCOMES: tuple[Outcome, ...] = ("match", "mismatch", "error", "dropped", "aborted")
Cell = tuple[str, str, str]  # (route, channel, cohort)


@dataclass(slots=True)
class CellStats:
    match: int = 0
    mismatch: int = 0
    error: int = 0
    dropped: int = 0
    aborted: int = 0
    noise: int = 0  # comparisons that had differences at learnt noise paths

    @property
    def compared(self) -> int:
        return self.match + self.mismatch


@dataclass
class ShadowStats:
    cells: dict[Cell, CellStats] = field(default_factory=dict)
    drop_reasons: Counter[str] = field(default_factory=Counter)
    differing_paths: dict[str, Counter[str]] = field(default_factory=dict)  # route -> path -> n
    max_paths_per_route: int = 1000
    verified: Counter[bool] = field(default_factory=Counter)  # verify reads: match -> count

    def cell(self, route: str, channel: str, cohort: str) -> CellStats:
        key = (route, channel, cohort)
        stats = self.cells.get(key)
        if stats is None:
            stats = self.cells[key] = CellStats()
        return stats

    def count(self, cell: Cell, outcome: Outcome, *, noisy: bool = False) -> None:
        stats = self.cell(*cell)
        setattr(stats, outcome, getattr(stats, outcome) + 1)
        if noisy:
            stats.noise += 1

    def dropped(self, cell: Cell, reason: str) -> None:
        self.count(cell, "dropped")
        self.drop_reasons[reason] += 1

    def paths(self, route: str, paths: list[str]) -> None:
        counter = self.differing_paths.setdefault(route, Counter())
        for path in paths:
            if path in counter or len(counter) < self.max_paths_per_route:
                counter[path] += 1
            else:
                counter["(other paths)"] += 1

    def export(self) -> list[list[object]]:
        """Per cell: the outcome counts (a worker's share for worker 0's /metrics)."""
        return [
            [*cell, *(getattr(s, o) for o in (*OUTCOMES, "noise"))]
            for cell, s in self.cells.items()
        ]

    def absorb(self, rows: list[list[Any]]) -> None:
        for route, channel, cohort, *counts in rows:
            stats = self.cell(route, channel, cohort)
            for name, count in zip((*OUTCOMES, "noise"), counts, strict=False):
                setattr(stats, name, getattr(stats, name) + int(count))

    def snapshot(self) -> dict[str, object]:
        routes: dict[str, dict[str, int]] = {}
        for (route, _, _), stats in self.cells.items():
            total = routes.setdefault(route, dict.fromkeys((*OUTCOMES, "noise"), 0))
            for name in (*OUTCOMES, "noise"):
                total[name] += getattr(stats, name)
        return {
            "routes": routes,
            "cells": [
                {
                    "route": r,
                    "channel": ch,
                    "cohort": co,
                    "compared": s.compared,
                    "match": s.match,
                    "mismatch": s.mismatch,
                    "error": s.error,
                    "dropped": s.dropped,
                    "aborted": s.aborted,
                    "noise": s.noise,
                }
                for (r, ch, co), s in sorted(self.cells.items())
            ],
            "drop_reasons": dict(self.drop_reasons),
            "top_paths": {
                route: counter.most_common(10) for route, counter in self.differing_paths.items()
            },
        }
