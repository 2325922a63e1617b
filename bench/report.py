"""The suite's outputs: the markdown report (table, targets, notes), the plot, the raw JSON."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from bench.load import LATE_MS, MAX_LATE_FRACTION, MIN_ACHIEVED, Run
from bench.plot import Point, plot_latency

if TYPE_CHECKING:
    from bench.suite import CaseResult, Options

TARGET_RATE = 1000  # the fixed rate the latency targets are checked at


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    result: str  # PASS, MISS, NOT RUN


#: a saturation run that dropped more than this share of its shadow copies does not count as a
#: throughput with comparison (a proxy shedding its comparisons gets faster)
MAX_SHADOW_DROPPED = 0.01


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cell(run: Run | None, capacity: float) -> str:
    if run is None:
        return f"over capacity ({capacity:,.0f}/s)"
    text = f"{_ms(run.p50_ms)} / {_ms(run.p99_ms)} / {_ms(run.p999_ms)}"
    return text if run.sustained else text + " *"


def _rate_run(results: dict[str, CaseResult], case: str, rate: int) -> Run | None:
    result = results.get(case)
    return result.rates.get(rate) if result else None


def _paired(isolation: dict[str, Any], case: str) -> str:
    """The median of each round's own ratio: a round's runs are seconds apart, so a slow spell
    of the host moves both sides of it."""
    pairs = zip(isolation["runs"][case], isolation["runs"]["cutover-pass"], strict=False)
    ratios = [a["p99_ms"] / b["p99_ms"] - 1 for a, b in pairs if a["p99_ms"] and b["p99_ms"]]
    return f"round by round {statistics.median(ratios):+.0%}" if ratios else "no pairs"


def _pooled(isolation: dict[str, Any]) -> str:
    """A case's figure over the requests of all its rounds together: shown, not decisive, since
    a round the host stalled in weighs on it in full (bench/README.md)."""
    count = isolation["pooled_requests"].get("cutover-pass", 0)
    return f"all rounds pooled, {count:,} requests a case"


def _pooled_vs(isolation: dict[str, Any], case: str) -> str:
    every = isolation["pooled_p99_ms"]
    a, b = every[case] or 0.0, every["cutover-pass"] or 0.0
    return f"{_pooled(isolation)}: {_ms(a)} vs {_ms(b)} ({a / b - 1 if b else 0.0:+.0%})"


def _p99s(isolation: dict[str, Any], case: str) -> str:
    return ", ".join(_ms(run["p99_ms"]) for run in isolation["runs"][case])


def _dropped(counters: list[dict[str, Any]]) -> float:
    """The share of shadow copies cutover's mirror budget dropped, over runs' counters."""
    shadow: dict[str, int] = {}
    for found in counters:
        for key, value in found.items():
            if key.startswith("shadow:"):
                shadow[key] = shadow.get(key, 0) + int(value)
    return shadow.get("shadow:dropped", 0) / max(1, sum(shadow.values()))


def _drop_caveat(dropped: float) -> str:
    caveat = (
        f"; {dropped:.0%} of the shadow copies were dropped by cutover's mirror budget"
        if dropped >= 0.005
        else ""
    )
    if dropped > MAX_SHADOW_DROPPED:
        caveat += " (not a throughput *with* comparison)"
    return caveat


def round_ratios(throughput: dict[str, Any], case: str, reference: str) -> list[float]:
    """Each round's own ratio: a round's runs are seconds apart, so a slow spell of the host
    moves both sides of it."""
    pairs = zip(throughput["runs"][case], throughput["runs"][reference], strict=False)
    return [a["requests_per_s"] / b["requests_per_s"] for a, b in pairs if b["requests_per_s"]]


def _rps(throughput: dict[str, Any], case: str) -> str:
    return ", ".join(f"{run['requests_per_s']:,.0f}" for run in throughput["runs"][case])


def checks(
    results: dict[str, CaseResult],
    soak: dict[str, Any] | None,
    rates: list[int],
    isolation: dict[str, Any] | None = None,
    throughput: dict[str, Any] | None = None,
) -> list[Check]:
    out: list[Check] = []

    def ratio_check(label: str, case: str, reference: str, limit: float) -> None:
        if throughput is not None:
            ratios = round_ratios(throughput, case, reference)
            ratio = statistics.median(ratios) if ratios else 0.0
            dropped = _dropped([run.get("counters", {}) for run in throughput["runs"][case]])
            medians = throughput["median_rps"]
            out.append(
                Check(
                    label,
                    f"median of {throughput['rounds']} rounds in turns, round by round: "
                    f"{ratio:.3f} (needs {limit:.2f}; rounds "
                    + ", ".join(f"{r:.3f}" for r in ratios)
                    + f"); median req/s {medians[case]:,.0f} / {medians[reference]:,.0f}; runs "
                    f"{_rps(throughput, case)} vs {_rps(throughput, reference)}"
                    + _drop_caveat(dropped),
                    "PASS" if ratio >= limit and dropped <= MAX_SHADOW_DROPPED else "MISS",
                )
            )
            return
        mine, ref = results.get(case), results.get(reference)
        if not mine or not ref:
            out.append(Check(label, f"needs cases {case} and {reference}", "NOT RUN"))
            return
        a, b = mine.saturation.requests_per_s, ref.saturation.requests_per_s
        ratio = a / b if b else 0.0
        dropped = _dropped([mine.saturation.counters])
        caveat = _drop_caveat(dropped)
        out.append(
            Check(
                label,
                f"{a:,.0f} / {b:,.0f} = {ratio:.3f} (needs {limit:.2f}: "
                f"{limit * b:,.0f} req/s){caveat}",
                "PASS" if ratio >= limit and dropped <= MAX_SHADOW_DROPPED else "MISS",
            )
        )

    ratio_check("cutover pass-through >= 0.20 x nginx (req/s)", "cutover-pass", "nginx", 0.20)
    ratio_check(
        "cutover shadow with comparison >= 0.50 x nginx-mirror (req/s)",
        "cutover-shadow",
        "nginx-mirror",
        0.50,
    )

    at = f"at {TARGET_RATE}/s"
    direct = _rate_run(results, "direct", TARGET_RATE)
    passing = _rate_run(results, "cutover-pass", TARGET_RATE)
    for label, attr, limit in (("p50", "p50_ms", 0.5), ("p99", "p99_ms", 2.0)):
        name = f"added {label} latency over direct {at} <= {limit:g} ms"
        if isolation is not None:
            every, medians = isolation[f"pooled_{attr}"], isolation[f"median_{attr}"]
            mine, ref = medians["cutover-pass"], medians["direct"]
            added = mine - ref
            out.append(
                Check(
                    name,
                    f"median of {isolation['rounds']} rounds in turns: {_ms(mine)} - {_ms(ref)} "
                    f"= {added:+.3f} ms ({_pooled(isolation)}: {_ms(every['cutover-pass'])} - "
                    f"{_ms(every['direct'])})",
                    "PASS" if added <= limit else "MISS",
                )
            )
            continue
        if TARGET_RATE not in rates or direct is None or passing is None:
            out.append(Check(name, f"needs cases direct and cutover-pass {at}", "NOT RUN"))
            continue
        mine, ref = getattr(passing, attr), getattr(direct, attr)
        added = mine - ref
        ok = added <= limit and passing.sustained
        note = "" if passing.sustained else " (rate not sustained)"
        out.append(
            Check(
                name,
                f"{_ms(mine)} - {_ms(ref)} = {added:+.3f} ms{note}",
                "PASS" if ok else "MISS",
            )
        )

    for case, what in (("cutover-shadow-slow", "500 ms slow"), ("cutover-shadow-down", "down")):
        name = f"primary p99 {at}, secondary {what}, within 10 % of shadow off"
        if isolation is not None:
            medians = isolation["median_p99_ms"]
            a, b = medians[case], medians["cutover-pass"]
            change = a / b - 1 if b else 0.0
            out.append(
                Check(
                    name,
                    f"median of {isolation['rounds']} rounds in turns: {_ms(a)} vs {_ms(b)} ms "
                    f"({change:+.0%}; {_paired(isolation, case)}); {_pooled_vs(isolation, case)}; "
                    f"runs {_p99s(isolation, case)} vs {_p99s(isolation, 'cutover-pass')}",
                    "PASS" if change <= 0.10 else "MISS",
                )
            )
            continue
        mine = _rate_run(results, case, TARGET_RATE)
        if TARGET_RATE not in rates or mine is None or passing is None:
            out.append(Check(name, f"needs cases {case} and cutover-pass {at}", "NOT RUN"))
            continue
        a, b = mine.p99_ms or 0.0, passing.p99_ms or 0.0
        change = a / b - 1 if b else 0.0
        ok = change <= 0.10 and mine.sustained
        note = "" if mine.sustained else " (rate not sustained)"
        out.append(
            Check(name, f"{_ms(a)} vs {_ms(b)} ms ({change:+.0%}){note}", "PASS" if ok else "MISS")
        )

    name = "memory flat (within 10 %) over a 10-minute run, secondary down"
    if soak is None:
        out.append(Check(name, "not run (add --soak-minutes 10)", "NOT RUN"))
    else:
        growth = soak["rss_growth"]
        short = f"; only {soak['minutes']:g} min, not 10" if soak["minutes"] < 10 else ""
        result = "MISS" if abs(growth) > 0.10 else "PASS" if not short else "SHORT RUN"
        out.append(
            Check(
                name,
                f"RSS {soak['rss_base_kib'] / 1024:.1f} MiB after {soak['warm_s']:.0f} s -> "
                f"{soak['rss_end_kib'] / 1024:.1f} MiB at {soak['minutes']:g} min ({growth:+.1%}), "
                f"peak {soak['peak_rss_kib'] / 1024:.1f} MiB, at {soak['rate']}/s{short}",
                result,
            )
        )
    return out


def rounds_notes(isolation: dict[str, Any]) -> list[str]:
    """What the rounds can resolve (the same case twice), and what the slow lane compared."""
    notes = []
    runs = isolation["runs"]
    if "cutover-pass-again" in runs:
        medians = isolation["median_p99_ms"]
        a, b = medians["cutover-pass-again"], medians["cutover-pass"]
        notes.append(
            f"- rounds: `cutover-pass` started twice (`cutover-pass-again`; the order of the "
            f"cases rotates from round to round): median p99 {_ms(a)} vs {_ms(b)} ms "
            f"({a / b - 1:+.0%}; {_paired(isolation, 'cutover-pass-again')}); "
            f"{_pooled_vs(isolation, 'cutover-pass-again')}; runs "
            f"{_p99s(isolation, 'cutover-pass-again')}: a difference of this size between two "
            "identical cases is the rounds' resolution"
        )
    slow = runs.get("cutover-shadow-slow", [])
    if slow:
        totals: dict[str, int] = {}
        for run in slow:
            for key, value in run.get("counters", {}).items():
                totals[key] = totals.get(key, 0) + int(value)
        seconds = sum(run["seconds"] for run in slow) or 1.0
        compared = totals.get("shadow:match", 0) + totals.get("shadow:mismatch", 0)
        notes.append(
            f"- rounds: `cutover-shadow-slow` compared {compared / seconds:,.1f} reads/s "
            f"({compared:,} in {seconds:.0f} s); turned away: "
            + ", ".join(
                f"{k.removeprefix('mirror_dropped:')} {v:,}"
                for k, v in sorted(totals.items())
                if k.startswith("mirror_dropped:")
            )
        )
    return notes


def render(
    *,
    opts: Options,
    results: list[CaseResult],
    failed: dict[str, str],
    soak: dict[str, Any] | None,
    isolation: dict[str, Any] | None,
    info: dict[str, Any],
    started_at: datetime,
    plot_name: str | None,
    throughput: dict[str, Any] | None = None,
) -> tuple[str, list[Check]]:
    from bench.suite import CASES

    by_name = {r.name: r for r in results}
    nginx = by_name.get("nginx")
    mirror = by_name.get("nginx-mirror")
    lines = [
        f"# cutover benchmark, {started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"{info['cpus']} cores ({info['cpu_model']}), Linux {info['kernel']}; {info['nginx']}; "
        f"{info['wrk'].split('[')[0].strip()}; Python {info['python']}, aiohttp "
        f"{info['aiohttp']}; cutover {info['git']}, {info.get('build', 'interpreted')}. Load average at start: "
        f"{' '.join(info['loadavg_at_start'])}. Host speed: a plain Python loop step takes "
        f"{info.get('python_step_ns', '?')} ns on core 0 (compare reports by it: bench/README.md); "
        f"{info.get('halt_polling', 'guest halt polling not recorded')} (bench/haltpoll.py).",
        "",
        "Server under test alone on core 0 (one nginx worker, or one cutover process); the fast "
        "upstream (one nginx worker serving old and new, ~1 KiB JSON), the slow upstream and wrk "
        f"on core 1. Saturation: `wrk -t1 -c{opts.connections}`, {opts.seconds} s. Latency: "
        f"fixed rates through a Lua pacer, {opts.connections} connections, {opts.seconds} s "
        "each; wrk's own per-request latency (write to last byte). "
        f"Command: `python -m bench{' --quick' if opts.quick else ''}"
        f" --seconds {opts.seconds} --rates {','.join(map(str, opts.rates))}"
        f" --cases {','.join(opts.cases)}"
        + (f" --soak-minutes {opts.soak_minutes:g}" if opts.soak_minutes else "")
        + (f" --rounds {opts.rounds}" if opts.rounds else "")
        + (f" --throughput-rounds {opts.throughput_rounds}" if opts.throughput_rounds else "")
        + (f" --halt-poll-us {opts.halt_poll_us}" if opts.halt_poll_us is not None else "")
        + "`.",
        "",
    ]
    head = ["case", "req/s", "errors", "x nginx", "x nginx-mirror"]
    head += [f"@{r}/s p50 / p99 / p99.9 ms" for r in opts.rates]
    head += ["CPU s / 1000 req", "peak RSS MiB"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|" + "---:|" * (len(head) - 1))
    for res in results:
        rps = res.saturation.requests_per_s
        x_nginx = (
            f"{rps / nginx.saturation.requests_per_s:.3f}" if nginx and res is not nginx else ""
        )
        x_mirror = (
            f"{rps / mirror.saturation.requests_per_s:.3f}"
            if mirror and res.name.startswith("cutover")
            else ""
        )
        row = [res.name, f"{rps:,.0f}", str(res.saturation.errors), x_nginx, x_mirror]
        row += [_cell(res.rates.get(r), rps) for r in opts.rates]
        row += [
            f"{res.cpu_per_1k:.3f}" if res.cpu_per_1k is not None else "-",
            f"{res.peak_rss_kib / 1024:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"\\* not sustained: under {MIN_ACHIEVED:.0%} of the rate achieved, more than "
        f"{MAX_LATE_FRACTION:.0%} of the requests sent over {LATE_MS:g} ms behind schedule, or "
        "errors: the generator had to wait for the server, so these latencies are understated "
        '(coordinated omission). "over capacity": more than 1.1 x the saturation throughput, '
        "not attempted. CPU and RSS are the server under test's (nginx: its worker; direct: the "
        "upstream's worker, which shares core 1 with wrk); CPU over the saturation run.",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    found = checks(by_name, soak, opts.rates, isolation, throughput)
    lines += [f"| {c.target} | {c.measured} | **{c.result}** |" for c in found]
    lines += ["", "## Cases", ""]
    lines += [f"- `{r.name}`: {CASES.get(r.name, '')}" for r in results]
    notes = [f"- `{name}` FAILED: {why.splitlines()[0]}" for name, why in failed.items()]
    notes += [f"- `{r.name}`: {note}" for r in results for note in r.notes]
    if soak is not None:
        run = soak["run"]
        notes.append(
            f"- soak: {run['requests']:,} requests at {soak['rate']}/s, p50 "
            f"{_ms(run['p50_ms'])} / p99 {_ms(run['p99_ms'])} / p99.9 {_ms(run['p999_ms'])} ms, "
            f"{run['errors']} errors"
            + (
                "; shadow: " + ", ".join(f"{k} {v:,}" for k, v in soak["shadow"].items())
                if soak.get("shadow")
                else ""
            )
        )
    if isolation is not None:
        notes += rounds_notes(isolation)
    if notes:
        lines += ["", "## Notes", "", *notes]
    if plot_name:
        lines += ["", f"![latency vs rate]({plot_name})"]
    return "\n".join(lines) + "\n", found


def write_outputs(
    *,
    opts: Options,
    results: list[CaseResult],
    failed: dict[str, str],
    soak: dict[str, Any] | None,
    isolation: dict[str, Any] | None,
    info: dict[str, Any],
    started_at: datetime,
    plot: bool,
    throughput: dict[str, Any] | None = None,
) -> str:
    out = opts.out
    (out / "raw").mkdir(parents=True, exist_ok=True)
    stamp = f"{started_at:%Y%m%dT%H%M%SZ}"
    plot_name: str | None = None
    if plot:
        series = {
            r.name: [
                Point(rate, run.p50_ms, run.p99_ms, run.p999_ms, run.sustained)
                for rate, run in r.rates.items()
                if run is not None
            ]
            for r in results
        }
        try:
            plot_latency(series, out / f"latency-{stamp}.png", f"cutover benchmark {stamp}")
            shutil.copyfile(out / f"latency-{stamp}.png", out / "latency.png")
            plot_name = f"latency-{stamp}.png"
        except Exception as exc:  # a plot must not lose the measurements
            print(f"bench: the plot failed ({exc}); the report is written without it")
    text, found = render(
        opts=opts,
        results=results,
        failed=failed,
        soak=soak,
        isolation=isolation,
        info=info,
        started_at=started_at,
        plot_name=plot_name,
        throughput=throughput,
    )
    (out / f"report-{stamp}.md").write_text(text)
    latest = text.replace(f"]({plot_name})", "](latency.png)") if plot_name else text
    (out / "latest.md").write_text(latest)
    raw = {
        "started_at": started_at.isoformat(),
        "options": {**asdict(opts), "out": str(opts.out)},
        "environment": info,
        "cases": [r.as_dict() for r in results],
        "failed": failed,
        "soak": soak,
        "isolation": isolation,
        "throughput": throughput,
        "targets": [asdict(c) for c in found],
    }
    (out / "raw" / f"run-{stamp}.json").write_bytes(
        orjson.dumps(raw, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    print(f"bench: wrote {out / f'report-{stamp}.md'} (and latest.md, raw/run-{stamp}.json)")
    return text
