"""QA's summary of a diff log: pure aggregation over records, then text or JSON.

`Summary.add(record)` folds one record into per-route counters whose size does not grow with
the number of records: differing paths are generalised (`$.comments[3].body` counts as
`$.comments[*].body`) and capped per route (the rest is counted as "other paths"), latencies go
into fixed log-scale histograms, and channel, cohort and status-pair tables are capped too.
`Summary.report()` turns the counters into plain JSON; `render_text` lays that out for an
80-column terminal, and `suggestions_yaml` prints the suggested ignore rules ready to paste.

Rates: `compared` counts exchanges where both platforms answered (match + mismatch); an error
(the secondary failed) is counted apart and is in no rate. A path's rate is the share of its
route's compared exchanges in which it differed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from shadow.logread import PathGeneralizer

__all__ = [
    "DEFAULT_MAX_PATHS",
    "DEFAULT_TOP",
    "Histogram",
    "Summary",
    "render_text",
    "suggestions_yaml",
]

DEFAULT_TOP: Final = 10
DEFAULT_MAX_PATHS: Final = 5000
SUGGEST_RATE: Final = 0.95
SUGGEST_MIN: Final = 20
MAX_ROUTES: Final = 1000
MAX_CELLS: Final = 200  # channels, cohorts, status pairs, error kinds per route
OTHER: Final = "(other)"

SIDES: Final = ("old", "new")


# --- bounded building blocks -------------------------------------------------------------------


class Histogram:
    """Latencies in fixed log-scale buckets (4 % wide): quantiles within ~2 %, memory fixed."""

    __slots__ = ("buckets", "count", "max", "min", "total")

    BASE: Final = 1.04
    FLOOR: Final = 0.01  # ms; anything faster shares the first bucket
    SIZE: Final = 640  # up to ~ 0.01 ms * 1.04**640, about 12 days
    _LOG_BASE: Final = math.log(1.04)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            return
        if value <= self.FLOOR:
            index = 0
        else:
            index = min(self.SIZE - 1, int(math.log(value / self.FLOOR) / self._LOG_BASE) + 1)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                if index == 0:
                    return self.min
                low = self.FLOOR * self.BASE ** (index - 1)
                middle = low * math.sqrt(self.BASE)
                return min(self.max, max(self.min, middle))
        return self.max  # pragma: no cover - the loop always reaches the rank

    def describe(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "p50": None, "p95": None, "mean": None, "max": None}
        return {
            "count": self.count,
            "p50": _round(self.quantile(0.50)),
            "p95": _round(self.quantile(0.95)),
            "mean": _round(self.total / self.count),
            "max": _round(self.max),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def _capped_key(table: Mapping[Any, Any], key: Any, limit: int, other: Any) -> Any:
    """`key` itself while the table has room (or already holds it), else the fold-over key."""
    if key in table or len(table) < limit:
        return key
    return other


@dataclass(slots=True)
class _Cell:
    """One channel's or cohort's share of a route."""

    exchanges: int = 0
    compared: int = 0
    mismatched: int = 0
    errors: int = 0


@dataclass(slots=True)
class _PathStats:
    records: int = 0  # exchanges in which the path differed (once per exchange)
    occurrences: int = 0  # differences at the path (several per exchange for list elements)
    valued: int = 0  # exchanges where every difference there was a change between two values
    kinds: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _RouteStats:
    exchanges: int = 0
    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    errors: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    paths: dict[str, _PathStats] = field(default_factory=dict)
    untracked_differences: int = 0
    untracked_records: int = 0
    noise: dict[str, int] = field(default_factory=dict)
    untracked_noise: int = 0
    channels: dict[str, _Cell] = field(default_factory=dict)
    cohorts: dict[str, _Cell] = field(default_factory=dict)
    error_kinds: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(
        default_factory=lambda: {side: Histogram() for side in SIDES}
    )
    status_pairs: dict[tuple[Any, Any], int] = field(default_factory=dict)


# --- the aggregator ----------------------------------------------------------------------------


class Summary:
    """Folds records into bounded counters; `report()` gives the JSON QA and scripts read."""

    def __init__(
        self,
        *,
        top: int = DEFAULT_TOP,
        max_paths: int = DEFAULT_MAX_PATHS,
        suggest_rate: float = SUGGEST_RATE,
        suggest_min: int = SUGGEST_MIN,
        max_routes: int = MAX_ROUTES,
    ) -> None:
        self.top = top
        self.max_paths = max_paths
        self.suggest_rate = suggest_rate
        self.suggest_min = suggest_min
        self.max_routes = max_routes
        self._routes: dict[str, _RouteStats] = {}
        self._general = PathGeneralizer()
        self.first_ts: str | None = None
        self.last_ts: str | None = None

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> Summary:
        for record in records:
            self.add(record)
        return self

    def add(self, record: Mapping[str, Any]) -> None:
        ts = record.get("ts")
        if isinstance(ts, str):
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
        name = str(record.get("route"))
        route = self._routes.get(name)
        if route is None:
            name = _capped_key(self._routes, name, self.max_routes, OTHER)
            route = self._routes.setdefault(name, _RouteStats())

        result = record.get("result")
        kind = str(record.get("kind", "shadow"))
        route.exchanges += 1
        route.kinds[kind] = route.kinds.get(kind, 0) + 1
        cells = (
            self._cell(route.channels, record.get("channel")),
            self._cell(route.cohorts, record.get("cohort")),
        )
        for cell in cells:
            cell.exchanges += 1
        if result == "error":
            route.errors += 1
            for cell in cells:
                cell.errors += 1
            error = record.get("error")
            side, what = "?", "unknown"
            if isinstance(error, Mapping):
                side = str(error.get("side") or "?")
                what = str(error.get("kind") or "unknown")
            key = _capped_key(route.error_kinds, (side, what), MAX_CELLS, ("?", OTHER))
            route.error_kinds[key] = route.error_kinds.get(key, 0) + 1
        else:
            route.compared += 1
            for cell in cells:
                cell.compared += 1
            if result == "match":
                route.matched += 1
            else:
                route.mismatched += 1
                for cell in cells:
                    cell.mismatched += 1

        latency = record.get("latency_ms")
        if isinstance(latency, Mapping):
            for side in SIDES:
                value = latency.get(side)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    route.latency[side].add(float(value))

        status = record.get("status")
        if isinstance(status, Mapping):
            old, new = status.get("old"), status.get("new")
            if isinstance(old, int) and isinstance(new, int) and old != new:
                pair = _capped_key(route.status_pairs, (old, new), MAX_CELLS, (OTHER, OTHER))
                route.status_pairs[pair] = route.status_pairs.get(pair, 0) + 1

        differences = record.get("differences")
        if differences:
            self._add_differences(route, differences)
        noise = record.get("noise")
        if noise:
            self._add_noise(route, noise)

    def _cell(self, table: dict[str, _Cell], name: Any) -> _Cell:
        key = _capped_key(table, "(none)" if name is None else str(name), MAX_CELLS, OTHER)
        cell = table.get(key)
        if cell is None:
            cell = table[key] = _Cell()
        return cell

    def _add_differences(self, route: _RouteStats, differences: Iterable[Any]) -> None:
        seen: dict[str, tuple[int, bool, set[str]]] = {}
        for difference in differences:
            if not isinstance(difference, Mapping) or not isinstance(difference.get("path"), str):
                continue
            path = self._general(difference["path"])
            kind = str(difference.get("kind"))
            valued = (
                kind == "changed"
                and difference.get("old") is not None
                and difference.get("new") is not None
            )
            count, all_valued, kinds = seen.get(path, (0, True, set()))
            kinds.add(kind)
            seen[path] = (count + 1, all_valued and valued, kinds)
        untracked = False
        for path, (count, all_valued, kinds) in seen.items():
            stats = route.paths.get(path)
            if stats is None:
                if len(route.paths) >= self.max_paths:
                    route.untracked_differences += count
                    untracked = True
                    continue
                stats = route.paths[path] = _PathStats()
            stats.records += 1
            stats.occurrences += count
            stats.valued += all_valued
            stats.kinds |= kinds
        route.untracked_records += untracked

    def _add_noise(self, route: _RouteStats, noise: Iterable[Any]) -> None:
        paths = {
            self._general(entry["path"])
            for entry in noise
            if isinstance(entry, Mapping) and isinstance(entry.get("path"), str)
        }
        for path in paths:
            if path in route.noise or len(route.noise) < self.max_paths:
                route.noise[path] = route.noise.get(path, 0) + 1
            else:
                route.untracked_noise += 1

    # --- the report ----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Plain JSON: totals, then one entry per route (most exchanges first)."""
        routes = sorted(self._routes.items(), key=lambda item: (-item[1].exchanges, item[0]))
        totals = {"exchanges": 0, "compared": 0, "matched": 0, "mismatched": 0, "errors": 0}
        for _, stats in routes:
            totals["exchanges"] += stats.exchanges
            totals["compared"] += stats.compared
            totals["matched"] += stats.matched
            totals["mismatched"] += stats.mismatched
            totals["errors"] += stats.errors
        out_routes = [self._route_report(name, stats) for name, stats in routes]
        report: dict[str, Any] = {
            "totals": {**totals, "match_rate": _rate(totals["matched"], totals["compared"])},
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "routes": out_routes,
            "settings": {
                "top": self.top,
                "max_paths": self.max_paths,
                "suggest_rate": self.suggest_rate,
                "suggest_min": self.suggest_min,
            },
        }
        report["suggestions_yaml"] = suggestions_yaml(report)
        return report

    def _route_report(self, name: str, stats: _RouteStats) -> dict[str, Any]:
        compared = stats.compared
        paths = sorted(stats.paths.items(), key=lambda item: (-item[1].records, item[0]))
        noise = sorted(stats.noise.items(), key=lambda item: (-item[1], item[0]))
        return {
            "route": name,
            "exchanges": stats.exchanges,
            "compared": compared,
            "matched": stats.matched,
            "mismatched": stats.mismatched,
            "errors": stats.errors,
            "match_rate": _rate(stats.matched, compared),
            "kinds": dict(sorted(stats.kinds.items())),
            "paths": [
                {
                    "path": path,
                    "count": p.records,
                    "rate": _rate(p.records, compared),
                    "occurrences": p.occurrences,
                    "kinds": sorted(p.kinds),
                }
                for path, p in paths[: self.top]
            ],
            "paths_total": len(paths),
            "paths_untracked": (
                {
                    "limit": self.max_paths,
                    "differences": stats.untracked_differences,
                    "exchanges": stats.untracked_records,
                }
                if stats.untracked_differences
                else None
            ),
            "channels": _cells(stats.channels, "channel"),
            "cohorts": _cells(stats.cohorts, "cohort"),
            "noise": [
                {"path": path, "count": count, "rate": _rate(count, compared)}
                for path, count in noise[: self.top]
            ],
            "noise_total": len(noise),
            "noise_untracked": stats.untracked_noise,
            "errors_by": [
                {"side": side, "kind": kind, "count": count}
                for (side, kind), count in sorted(
                    stats.error_kinds.items(), key=lambda item: (-item[1], item[0])
                )
            ],
            "latency_ms": {side: stats.latency[side].describe() for side in SIDES},
            "status_pairs": [
                {"old": old, "new": new, "count": count}
                for (old, new), count in sorted(
                    stats.status_pairs.items(), key=lambda item: (-item[1], str(item[0]))
                )
            ],
            "suggestions": self._suggestions(stats, paths, noise),
        }

    def _suggestions(
        self,
        stats: _RouteStats,
        paths: list[tuple[str, _PathStats]],
        noise: list[tuple[str, int]],
    ) -> list[dict[str, Any]]:
        """Paths that behave like noise: learnt noise, and values that differ nearly always."""
        out: dict[str, dict[str, Any]] = {}
        for path, count in noise:
            if _suggestible(path):
                out[path] = {"path": path, "reason": "noise", "count": count}
        compared = stats.compared
        if compared >= self.suggest_min:
            for path, p in paths:
                if path in out or not _suggestible(path):
                    continue
                rate = p.records / compared
                if rate >= self.suggest_rate and p.valued == p.records:
                    out[path] = {
                        "path": path,
                        "reason": "always-differs",
                        "count": p.records,
                        "rate": rate,
                    }
        return sorted(out.values(), key=lambda s: s["path"])


def _suggestible(path: str) -> bool:
    """JSON fields and compared headers can be ignored; the status and a whole body cannot."""
    return (path.startswith("$") and path != "$") or path.startswith("@headers.")


def _cells(table: Mapping[str, _Cell], label: str) -> list[dict[str, Any]]:
    rows = sorted(table.items(), key=lambda item: (-item[1].exchanges, item[0]))
    return [
        {
            label: name,
            "exchanges": cell.exchanges,
            "compared": cell.compared,
            "mismatched": cell.mismatched,
            "mismatch_rate": _rate(cell.mismatched, cell.compared),
            "errors": cell.errors,
        }
        for name, cell in rows
    ]


# --- text --------------------------------------------------------------------------------------


def suggestions_yaml(report: Mapping[str, Any]) -> str:
    """The suggested rules as a routes.yaml fragment (empty when there is nothing to suggest)."""
    blocks: list[str] = []
    for route in report["routes"]:
        suggestions = route["suggestions"]
        if not suggestions:
            continue
        lines = [f"  - name: {route['route']}", "    compare:"]
        ignore = [s for s in suggestions if s["path"].startswith("$")]
        headers = [s for s in suggestions if s["path"].startswith("@headers.")]
        if ignore:
            lines.append("      ignore:")
            width = max(len(_quote(s["path"])) for s in ignore)
            lines.extend(f"        - {_quote(s['path']).ljust(width)}  # {_why(s)}" for s in ignore)
        for s in headers:
            header = s["path"].removeprefix("@headers.")
            lines.append(f"      # headers: drop {header!r} from this list ({_why(s)})")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _quote(path: str) -> str:
    return orjson.dumps(path).decode()  # a JSON string is a valid YAML double-quoted scalar


def _why(suggestion: Mapping[str, Any]) -> str:
    if suggestion["reason"] == "noise":
        return f"noise, {suggestion['count']:,}x"
    return f"differs in {_pct(suggestion['rate'])} ({suggestion['count']:,}x)"


def _pct(rate: float | None) -> str:
    if rate is None:
        return "-"
    percent = rate * 100
    if 0 < percent < 0.1:
        return "<0.1%"
    if 99.9 < percent < 100:
        return ">99.9%"
    return f"{percent:.1f}%"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def render_text(report: Mapping[str, Any], *, width: int = 80) -> str:
    """The summary for a terminal: totals, then per route its counts, paths and breakdowns."""
    width = max(60, width)
    out: list[str] = []
    totals = report["totals"]
    out.append(
        f"{totals['exchanges']:,} exchanges: {totals['compared']:,} compared "
        f"(match rate {_pct(totals['match_rate'])}), {totals['errors']:,} errors"
    )
    out.append(f"{totals['matched']:,} matched, {totals['mismatched']:,} mismatched")
    if report.get("first_ts"):
        out.append(f"from {report['first_ts']} to {report['last_ts']}")
    if not report["routes"]:
        out.append("No records (with these filters).")
    for route in report["routes"]:
        out.append("")
        out.extend(_render_route(route, width))
    yaml = report.get("suggestions_yaml") or ""
    if yaml:
        out += [
            "",
            "Suggested ignore rules (fields that behave like noise; review, then paste under",
            "the route in routes.yaml):",
            "",
            yaml,
        ]
    return "\n".join(out)


def _render_route(route: Mapping[str, Any], width: int) -> list[str]:
    title = f"== {route['route']} "
    out = [title + "=" * max(3, width - len(title))]
    kinds = ", ".join(f"{k} {n:,}" for k, n in route["kinds"].items())
    out.append(
        f"compared {route['compared']:,}   matched {route['matched']:,}   "
        f"mismatched {route['mismatched']:,}   errors {route['errors']:,}"
    )
    out.append(f"match rate {_pct(route['match_rate'])}   ({kinds})")

    if route["paths"]:
        out.append("")
        path_width = width - 36
        out.append(f"  {'differing path':<{path_width}} {'count':>9} {'rate':>7}  kinds")
        for p in route["paths"]:
            kinds_text = ",".join(p["kinds"])
            out.append(
                f"  {_fit(p['path'], path_width):<{path_width}} {p['count']:>9,} "
                f"{_pct(p['rate']):>7}  {_fit(kinds_text, 15)}"
            )
        hidden = route["paths_total"] - len(route["paths"])
        if hidden > 0:
            out.append(f"  ... {hidden:,} more paths (--top N shows more)")
        untracked = route["paths_untracked"]
        if untracked:
            out.append(
                f"  + other paths: {untracked['differences']:,} differences in "
                f"{untracked['exchanges']:,} exchanges at paths beyond the first "
                f"{untracked['limit']:,} (not itemised)"
            )
    elif route["mismatched"]:
        out += ["", "  (mismatches without differing fields)"]

    for label, rows in (("channel", route["channels"]), ("cohort", route["cohorts"])):
        if not rows:
            continue
        out.append("")
        out.append(
            f"  {'by ' + label:<22} {'compared':>10} {'mismatched':>11} {'rate':>7} {'errors':>8}"
        )
        for row in rows:
            out.append(
                f"  {_fit(row[label], 22):<22} {row['compared']:>10,} {row['mismatched']:>11,} "
                f"{_pct(row['mismatch_rate']):>7} {row['errors']:>8,}"
            )

    if route["errors_by"]:
        out.append("")
        out.append("  errors (side, kind):")
        for e in route["errors_by"]:
            out.append(
                f"    {e['side']:<4} {_fit(e['kind'], width - 20):<{width - 20}} {e['count']:>9,}"
            )

    latency = route["latency_ms"]
    if latency["old"]["count"] or latency["new"]["count"]:
        out.append("")
        out.append(f"  {'latency ms':<12} {'p50':>10} {'p95':>10} {'max':>10} {'samples':>10}")
        for side in SIDES:
            s = latency[side]
            out.append(
                f"  {side:<12} {_ms(s['p50']):>10} {_ms(s['p95']):>10} {_ms(s['max']):>10} "
                f"{s['count']:>10,}"
            )

    if route["status_pairs"]:
        out.append("")
        pairs = [f"{p['old']}->{p['new']} x{p['count']:,}" for p in route["status_pairs"]]
        out.extend(_wrap("  status codes that differed (old->new): ", pairs, width))

    if route["noise"]:
        out.append("")
        out.append("  noise (differs between two answers of the same platform; not counted above):")
        for n in route["noise"]:
            out.append(f"    {_fit(n['path'], width - 16):<{width - 16}} {n['count']:>10,}")
        hidden = route["noise_total"] - len(route["noise"])
        if hidden > 0:
            out.append(f"    ... {hidden:,} more noise paths")
    return out


def _wrap(head: str, items: list[str], width: int) -> list[str]:
    lines: list[str] = []
    line = head
    indent = " " * 4
    for item in items:
        piece = item if line in (head, indent) else ", " + item
        if len(line) + len(piece) > width and line not in (head, indent):
            lines.append(line + ",")
            line = indent + item
        else:
            line += piece
    lines.append(line)
    return lines
