"""The benchmark suite: cutover next to nginx on the same core budget, in one run.

    .venv/bin/python -m bench [--quick] [--seconds N] [--cases a,b] [--rates 1000,5000]
                              [--soak-minutes N] [--out bench/results]

Core 0: the server under test (one nginx worker, or one cutover process). Core 1: the fast
upstreams (one nginx worker serving old and new), the slow upstream when needed, and wrk. Each
case is measured at saturation (requests/s, CPU, memory) and then at fixed rates (latency).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import CUTOVER_RUN, REPO, ensure_tool, free_port
from bench.haltpoll import describe, halt_polling
from bench.load import Request, Run, percentile_ms, pooled, run_wrk
from bench.procs import (
    BenchError,
    Proc,
    Processes,
    core_task_usage,
    core_times,
    cpu_seconds,
    raise_on_signals,
    status_kib,
)
from bench.upstreams import PATH, ensure_nginx, nginx_worker, proxy_conf, start_nginx, upstream_conf

SUT_CORE = 0
LOAD_CORE = 1
PYTHON = sys.executable

CASES: dict[str, str] = {
    "direct": "wrk straight to the fast upstream (nginx `return 200`, core 1), no proxy",
    "nginx": "nginx 1 worker, `proxy_pass` to an upstream block with `keepalive 64`",
    "nginx-mirror": "the same plus `mirror` of every request to the new upstream (no comparison)",
    "cutover-pass": "cutover, old primary, shadow 0 %",
    "cutover-shadow": "cutover, shadow 100 % to new, JSON comparison (`ignore: [$.updated_at]`)",
    "cutover-dualwrite": "cutover, PATCH writes, `dual_write: true` (SQLite outbox, then new)",
    "cutover-shadow-slow": "cutover-shadow with the secondary answering after 500 ms",
    "cutover-shadow-down": "cutover-shadow with the secondary down (closed port)",
}
DEFAULT_RATES = (500, 1000, 2000, 3000, 4000, 6000, 8000)
QUICK_RATES = (1000, 4000)
HEADERS = (("X-Customer-Id", "C-1010"), ("X-Channel", "phone"))
READ = Request(method="GET", path=PATH, headers=HEADERS)
WRITE = Request(
    method="PATCH",
    path=PATH,
    headers=(*HEADERS, ("Content-Type", "application/json")),
    body='{"full_name": "Bench @N@", "tier": "gold"}',
    vary=1000,  # 1000 records: the outbox keeps per-record order, records go in parallel
)
SKIP_ABOVE = 1.1  # fixed rates above this x the saturation throughput are not attempted
RETRY_ABOVE = 0.10  # a run is repeated when others took more of core 0 or 1 than this
RETRY_BUDGET = 2  # repeats per case, to bound the time on a busy machine
#: an isolation run whose cores lost more than this share to the hypervisor (steal) is measured
#: again, up to STEAL_REPEATS times, and the least-stolen run kept: on this kind of VM a run with
#: 5-20 % steal had a p99 4-10 x its neighbours', whatever the case
STEAL_RETRY_ABOVE = 0.01
STEAL_REPEATS = 2


@dataclass
class Options:
    quick: bool
    seconds: int
    warmup: int
    cases: list[str]
    rates: list[int]
    soak_minutes: float
    soak_rate: int
    out: Path
    connections: int
    keep: bool
    quiet_wait: float
    rounds: int = 0  # the p99 targets' interleaved rounds (0: none)
    throughput_rounds: int = 0  # the throughput targets' interleaved rounds (0: none)
    halt_poll_us: int | None = None  # the guest's halt polling for the run (bench/haltpoll.py)


@dataclass
class CaseResult:
    name: str
    saturation: Run
    rates: dict[int, Run | None]  # None: above capacity, not attempted
    peak_rss_kib: int
    cpu_per_1k: float | None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": CASES.get(self.name, ""),
            "saturation": self.saturation.as_dict(),
            "rates": {str(r): (run.as_dict() if run else None) for r, run in self.rates.items()},
            "peak_rss_kib": self.peak_rss_kib,
            "cpu_s_per_1000": self.cpu_per_1k,
            "notes": self.notes,
            "extra": self.extra,
        }


@dataclass
class Target:
    """A running server under test."""

    url: str
    request: Request
    sut_pid: int
    sut_core: int
    case_dir: Path
    admin: tuple[int, str] | None = None  # cutover's admin port and token


@dataclass
class Env:
    opts: Options
    work: Path
    procs: Processes
    nginx: str
    old_port: int
    new_port: int
    helpers: dict[int, int] = field(default_factory=dict)  # our other busy pids -> their core
    retry_budget: int = 0  # repeats left in the current case


# --- cutover -------------------------------------------------------------------------------


def cutover_yaml(
    *, listen: int, admin: int, old: str, new: str, shadow: int, dual_write: bool
) -> str:
    """routes.yaml for one case (docs/routes-reference.md): one route over the benchmark path,
    old primary for everyone (`weights: {default: 0}`)."""
    return f"""# generated by bench/suite.py
version: 1
migration: bench
listen: 127.0.0.1:{listen}
admin: {{ listen: 127.0.0.1:{admin}, token_env: CUTOVER_ADMIN_TOKEN }}
store: "sqlite:///./state/cutover.db"
state_dir: ./state
diff_log: {{ dir: ./diffs, max_size: 100MB, keep: 2 }}
platforms:
  old:
    crm: {{ url: "{old}", timeout: 5s }}
  new:
    crm: {{ url: "{new}", timeout: 5s }}
channels: [phone, web]
identify:
  channel: {{ header: X-Channel, default: web }}
  customer: {{ header: X-Customer-Id }}
routes:
  - name: contacts
    api: crm
    path: /api/contacts
    weights: {{ default: 0 }}
    shadow_percent: {shadow}
    dual_write: {"true" if dual_write else "false"}
    compare: {{ ignore: ["$.updated_at"] }}
"""


def write_case_config(
    folder: Path, *, old: str, new: str, shadow: int, dual_write: bool
) -> tuple[int, int]:
    """`folder`/routes.yaml for one case on two free ports: (listen, admin)."""
    folder.mkdir(exist_ok=True)
    listen, admin = free_port(), free_port()
    (folder / "routes.yaml").write_text(
        cutover_yaml(
            listen=listen, admin=admin, old=old, new=new, shadow=shadow, dual_write=dual_write
        )
    )
    return listen, admin


def start_cutover(env: Env, name: str, new_url: str, shadow: int, dual_write: bool) -> Target:
    case_dir = env.work / name
    listen, admin = write_case_config(
        case_dir,
        old=f"http://127.0.0.1:{env.old_port}",
        new=new_url,
        shadow=shadow,
        dual_write=dual_write,
    )
    token = secrets.token_hex(16)
    proc = env.procs.start(
        name,
        list(CUTOVER_RUN),
        log=case_dir / "cutover.log",
        cpus=str(SUT_CORE),
        cwd=case_dir,
        env={"CUTOVER_ADMIN_TOKEN": token},
        ports=[listen],
    )
    request = WRITE if dual_write else READ
    url = f"http://127.0.0.1:{listen}" + ("" if dual_write else PATH)
    return Target(url, request, proc.pid, SUT_CORE, case_dir, (admin, token))


def metrics(target: Target) -> dict[str, float]:
    """cutover's Prometheus metrics, summed by metric name and `result`/`reason` label."""
    if target.admin is None:
        return {}
    port, token = target.admin
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as answer:
        text = answer.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        key = name
        for label in ("result", "reason"):
            marker = f'{label}="'
            if marker in labels:
                key += ":" + labels.split(marker, 1)[1].split('"', 1)[0]
        try:
            sums[key] = sums.get(key, 0.0) + float(value)
        except ValueError:
            continue
    return sums


def outbox_depth(target: Target) -> int:
    """Writes in cutover's outbox not yet confirmed by the secondary (ready + intents)."""
    with contextlib.suppress(OSError, ValueError):
        found = {
            k: v
            for k, v in metrics(target).items()
            if k.startswith(("cutover_outbox_pending", "cutover_outbox_intents"))
        }
        if found:
            return int(sum(found.values()))
    done = subprocess.run(  # no metrics: ask the CLI, as an operator would
        [PYTHON, "-m", "proxy", "--config", "routes.yaml", "outbox", "status", "--json"],
        cwd=target.case_dir,
        capture_output=True,
        check=False,
    )
    status = json.loads(done.stdout or b"{}")
    return int(status.get("ready", 0)) + int(status.get("intents", 0))


# --- cases ---------------------------------------------------------------------------------


@contextlib.contextmanager
def case_target(env: Env, name: str) -> Iterator[Target]:
    """Start what a case needs (on core 0 for the server under test), stop it afterwards."""
    started: list[Proc] = []
    try:
        if name == "direct":
            upstream = next(p for p in env.procs.started if p.name == "upstream")
            yield Target(
                f"http://127.0.0.1:{env.old_port}{PATH}",
                READ,
                nginx_worker(upstream),
                LOAD_CORE,
                env.work,
            )
        elif name in ("nginx", "nginx-mirror"):
            listen = free_port()
            case_dir = env.work / name
            case_dir.mkdir(exist_ok=True)
            conf = proxy_conf(
                case_dir,
                listen,
                env.old_port,
                env.new_port if name == "nginx-mirror" else None,
                cpu_mask="01",  # core 0
                name=name,
            )
            master = start_nginx(
                env.procs, env.nginx, case_dir, name, conf, str(SUT_CORE), [listen]
            )
            started.append(master)
            yield Target(
                f"http://127.0.0.1:{listen}{PATH}", READ, nginx_worker(master), SUT_CORE, case_dir
            )
        elif name.startswith("cutover-"):
            new_url = f"http://127.0.0.1:{env.new_port}"
            if name == "cutover-shadow-slow":
                slow_port = free_port()
                slow = env.procs.start(
                    "slow-upstream",
                    [PYTHON, "-m", "bench.upstreams", "slow", "--port", str(slow_port)],
                    log=env.work / "slow-upstream.log",
                    cpus=str(LOAD_CORE),
                    ports=[slow_port],
                )
                started.append(slow)
                env.helpers[slow.pid] = LOAD_CORE
                new_url = f"http://127.0.0.1:{slow_port}"
            elif name == "cutover-shadow-down":
                new_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            shadow = (
                0 if name in ("cutover-pass", "cutover-pass-again", "cutover-dualwrite") else 100
            )
            target = start_cutover(env, name, new_url, shadow, name == "cutover-dualwrite")
            started.append(env.procs.started[-1])
            yield target
        else:
            raise BenchError(f"unknown case {name!r}; known: {', '.join(CASES)}")
    finally:
        for proc in reversed(started):
            env.helpers.pop(proc.pid, None)
            env.procs.stop(proc)


def measure(
    env: Env, target: Target, *, seconds: int, rate: float = 0.0, request: Request | None = None
) -> Run:
    """One wrk run against a target, once the target is idle, with the SUT's CPU and how much
    of cores 0 and 1 other people's processes took meanwhile (ours: the SUT, the upstreams,
    wrk, whose CPU comes from this process's children rusage)."""
    settle(target.sut_pid)
    ours = {**env.helpers, target.sut_pid: target.sut_core}
    counters0 = cutover_counters(target)
    times0 = core_times()
    cpu0 = {pid: _cpu(pid) for pid in ours}
    children0 = _children_cpu()
    run = run_wrk(
        target.url,
        request or target.request,
        seconds=seconds,
        rate=rate,
        connections=env.opts.connections,
        cpus=str(LOAD_CORE),
        work=env.work,
    )
    wrk_cpu = _children_cpu() - children0
    used = {pid: _cpu(pid) - cpu0[pid] for pid in ours}
    times = core_times()
    span = run.seconds or 1.0
    mine = {SUT_CORE: 0.0, LOAD_CORE: wrk_cpu}
    for pid, core in ours.items():
        mine[core] = mine.get(core, 0.0) + used[pid]
    other = {
        core: max(0.0, times[core].task - times0[core].task - mine[core]) / span
        for core in (SUT_CORE, LOAD_CORE)
    }
    steal = max((times[c].steal - times0[c].steal) / span for c in (SUT_CORE, LOAD_CORE))
    counters1 = cutover_counters(target)
    counters = {k: v - counters0.get(k, 0) for k, v in counters1.items() if v - counters0.get(k, 0)}
    return Run(
        **{
            **run.__dict__,
            "cpu_s": used[target.sut_pid],
            "other_busy": other[SUT_CORE],
            "other_busy_load": other[LOAD_CORE],
            "sut_on_load_core": target.sut_core == LOAD_CORE,
            "steal": steal,
            "counters": counters,
        }
    )


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


COUNTERS = {
    "cutover_shadow_total": "shadow",
    "cutover_mirror_dropped_total": "mirror_dropped",
    "cutover_secondary_deferred_total": "deferred",
    "cutover_outbox_sent_total": "outbox_sent",
}


def cutover_counters(target: Target) -> dict[str, int]:
    """cutover's shadow outcomes (match, mismatch, error, dropped, aborted), mirror drops by
    reason, outbox writes sent: {"shadow:match": n, ...}; empty for nginx."""
    if target.admin is None:
        return {}
    out: dict[str, int] = {}
    try:
        found = metrics(target)
    except (OSError, ValueError):
        return out
    for key, value in found.items():
        name, _, label = key.partition(":")
        if name in COUNTERS:
            short = COUNTERS[name] + (f":{label}" if label else "")
            out[short] = int(value)
    return out


def counters_text(run: Run) -> str:
    """'shadow: match 5,885, dropped 793 (12 % of copies); outbox sent 7,111'."""
    shadow = {k.split(":", 1)[1]: v for k, v in run.counters.items() if k.startswith("shadow:")}
    parts = []
    if shadow:
        total = sum(shadow.values())
        dropped = shadow.get("dropped", 0)
        parts.append(
            "shadow copies: "
            + ", ".join(f"{k} {v:,}" for k, v in shadow.items())
            + (f" ({dropped / total:.0%} dropped by the mirror budget)" if dropped else "")
        )
    if run.counters.get("outbox_sent"):
        parts.append(f"outbox writes sent to the secondary: {run.counters['outbox_sent']:,}")
    return "; ".join(parts)


def settle(pid: int, limit: float = 20.0, idle: float = 0.05) -> float:
    """Wait until a process is (nearly) idle: the queues of the previous run are worked off
    (mirrors, diff-log lines, outbox) before the next measurement. Returns its last usage."""
    deadline = time.monotonic() + limit
    while True:
        before = cpu_seconds(pid)
        time.sleep(0.4)
        usage = (cpu_seconds(pid) - before) / 0.4
        if usage < idle or time.monotonic() > deadline:
            return usage


def wait_quiet(env: Env, threshold: float = RETRY_ABOVE) -> float:
    """Before a case: wait (up to --quiet-wait seconds) for other people's processes to leave
    cores 0 and 1 alone. Returns the others' share of the busier core at the end."""
    ours = [p.pid for p in env.procs.started] + list(env.helpers)
    deadline = time.monotonic() + env.opts.quiet_wait
    said = False
    while True:
        others = max(core_task_usage(core, 0.5, ours) for core in (SUT_CORE, LOAD_CORE))
        if others < threshold or time.monotonic() > deadline:
            if said:
                print(f"   (others now at {others:.0%}; going on)", flush=True)
            return others
        if not said:
            print(
                f"   (other processes use {others:.0%} of a bench core: waiting up to "
                f"{env.opts.quiet_wait:g} s for them to calm down)",
                flush=True,
            )
            said = True


def measure_best(env: Env, target: Target, *, seconds: int, rate: float = 0.0) -> Run:
    """measure(), repeated while other processes took more than RETRY_ABOVE of core 0 or 1
    and the case's repeat budget lasts; the run they disturbed least is kept."""
    last = best = measure(env, target, seconds=seconds, rate=rate)
    while env.retry_budget > 0 and last.disturbed > RETRY_ABOVE:
        env.retry_budget -= 1
        what = f"@{rate:g}/s" if rate else "saturation"
        print(
            f"   ({what}: other processes took {last.other_busy:.0%} of core {SUT_CORE} and "
            f"{last.other_busy_load:.0%} of core {LOAD_CORE}: measuring again)",
            flush=True,
        )
        if target.request.method != "GET":
            drain(target, 60)
        last = measure(env, target, seconds=seconds, rate=rate)
        if last.disturbed < best.disturbed:
            best = last
    return best


def fmt_rate_run(run: Run) -> str:
    state = "" if run.sustained else "  NOT SUSTAINED"
    return (
        f"{run.requests_per_s:8,.0f} req/s  p50 {run.p50_ms or 0:.3f}  p99 {run.p99_ms or 0:.3f}  "
        f"p99.9 {run.p999_ms or 0:.3f} ms  late {run.late_fraction:.1%}  errors {run.errors}{state}"
    )


def run_case(env: Env, name: str) -> CaseResult:
    opts = env.opts
    print(f"\n== {name}: {CASES[name]}", flush=True)
    busy_before = wait_quiet(env)
    with case_target(env, name) as target:
        notes: list[str] = []
        if busy_before >= RETRY_ABOVE:
            notes.append(
                f"other processes were using {busy_before:.0%} of a bench core when it started"
            )
        extra: dict[str, Any] = {}
        warm_up(env, target)
        if name == "cutover-dualwrite":
            drain(target, 60)
        env.retry_budget = RETRY_BUDGET
        sat = measure_best(env, target, seconds=opts.seconds)
        cpu_per_1k = sat.cpu_per_1k
        print(
            f"   saturation {sat.requests_per_s:,.0f} req/s  p50 {sat.p50_ms or 0:.2f} ms  "
            f"p99 {sat.p99_ms or 0:.2f} ms  CPU {cpu_per_1k or 0:.3f} s/1000  errors {sat.errors}"
        )
        if sat.errors:
            notes.append(f"{sat.errors} errors at saturation: {sat.error_detail}")
        if name == "cutover-dualwrite":
            cpu0 = cpu_seconds(target.sut_pid) - sat.cpu_s
            backlog = outbox_depth(target)
            t0 = time.monotonic()
            left = drain(target, 120)
            drained = time.monotonic() - t0
            total_cpu = cpu_seconds(target.sut_pid) - cpu0
            cpu_per_1k = total_cpu / sat.requests * 1000 if sat.requests else None
            extra.update(
                outbox_backlog_after_saturation=backlog,
                drain_s=drained,
                outbox_left=left,
                cpu_s_incl_drain=total_cpu,
            )
            sent = sat.counters.get("outbox_sent", 0)
            notes.append(
                f"the primary path took {sat.requests_per_s:,.0f} writes/s while the outbox sent "
                f"{sent / sat.seconds:,.0f}/s to the secondary: {backlog:,} writes were queued "
                f"at the end of the saturation run, drained in {drained:.1f} s"
                + (f" ({left:,} still queued after 120 s)" if left else "")
                + " (the saturation figure is not a sustainable write rate); CPU per 1 000 "
                "includes the drain"
            )
        if sat.counters and name != "cutover-dualwrite":
            notes.append(f"saturation: {counters_text(sat)}")
        rates: dict[int, Run | None] = {}
        at_rates: list[str] = []
        for rate in opts.rates:
            if rate > SKIP_ABOVE * sat.requests_per_s:
                rates[rate] = None
                print(f"   @{rate:>6}/s  over capacity ({sat.requests_per_s:,.0f} req/s): skipped")
                continue
            if name == "cutover-dualwrite":
                drain(target, 60)
            run = measure_best(env, target, seconds=opts.seconds, rate=rate)
            rates[rate] = run
            print(f"   @{rate:>6}/s  {fmt_rate_run(run)}", flush=True)
            if run.counters.get("shadow:dropped") or run.counters.get("shadow:error"):
                at_rates.append(f"at {rate}/s: {counters_text(run)}")
        if at_rates:
            notes.append("; ".join(at_rates))
        peak = status_kib(target.sut_pid, "VmHWM")
        runs = [sat, *(r for r in rates.values() if r)]
        worst = max(runs, key=lambda r: r.disturbed)
        if worst.disturbed > 0.05 and target.sut_core == LOAD_CORE:
            notes.append(
                f"other processes took up to {worst.other_busy_load:.0%} of core {LOAD_CORE} "
                f"during a run (saturation run: {sat.other_busy_load:.0%})"
            )
        elif worst.disturbed > 0.05:
            notes.append(
                f"other processes took up to {worst.other_busy:.0%} of core {SUT_CORE} and "
                f"{worst.other_busy_load:.0%} of core {LOAD_CORE} during a run (saturation run: "
                f"{sat.other_busy:.0%} and {sat.other_busy_load:.0%})"
            )
        steal = max(r.steal for r in runs)
        if steal > 0.02:
            notes.append(f"the hypervisor stole up to {steal:.0%} of the core during a run")
        return CaseResult(name, sat, rates, peak, cpu_per_1k, notes, extra)


def drain(target: Target, timeout: float) -> int:
    """Wait until cutover's outbox is empty (dual-write); returns what is left."""
    deadline = time.monotonic() + timeout
    depth = outbox_depth(target)
    while depth and time.monotonic() < deadline:
        time.sleep(0.25)
        depth = outbox_depth(target)
    return depth


def warm_up(env: Env, target: Target) -> None:
    """Unmeasured load first: connections, pools, caches."""
    run_wrk(
        target.url,
        target.request,
        seconds=env.opts.warmup,
        connections=env.opts.connections,
        cpus=str(LOAD_CORE),
        work=env.work,
    )


#: the throughput targets' cases, started side by side and saturated in turns (bench/README.md)
THROUGHPUT_CASES = ("nginx", "nginx-mirror", "cutover-pass", "cutover-shadow")


def in_turns(
    env: Env, names: tuple[str, ...], rate: float, rounds: int
) -> tuple[dict[str, list[Run]], int]:
    """Start `names` side by side (each on its own cores, as alone) and load them in turns,
    `rounds` times over, each one only once the others have gone idle: a slow spell of the host
    then moves every case of a round, where one case after the other would put it on one of
    them; the order rotates from round to round. rate 0: saturation. A run with over
    STEAL_RETRY_ABOVE steal is measured again (the second value returned counts those
    repeats)."""
    opts = env.opts
    runs: dict[str, list[Run]] = {name: [] for name in names}
    repeats = 0
    with contextlib.ExitStack() as stack:
        targets = {name: stack.enter_context(case_target(env, name)) for name in names}
        for target in targets.values():
            warm_up(env, target)
        order = list(targets.items())
        for round_ in range(rounds):
            wait_quiet(env)
            # each round starts one case further on: a case measured late in every round had
            # been slower by 13-22 % than the same case measured early (cutover-pass-again
            # against cutover-pass, three runs on 2026-12-07), which put the later cases at a
            # disadvantage; rotated, every case takes every place equally often
            shift = round_ % len(order)
            for name, target in order[shift:] + order[:shift]:
                for other in targets.values():  # only the one measured is busy
                    settle(other.sut_pid)
                run = measure(env, target, seconds=opts.seconds, rate=rate)
                for _ in range(STEAL_REPEATS):
                    if run.steal <= STEAL_RETRY_ABOVE:
                        break
                    print(f"   ({name}: {run.steal:.1%} steal: measuring again)", flush=True)
                    repeats += 1
                    settle(target.sut_pid)
                    again = measure(env, target, seconds=opts.seconds, rate=rate)
                    run = again if again.steal < run.steal else run
                runs[name].append(run)
                print(
                    f"   round {round_ + 1} {name:<20} {fmt_rate_run(run)}  steal {run.steal:.1%}",
                    flush=True,
                )
    return runs, repeats


def throughput(env: Env) -> dict[str, Any]:
    """The throughput targets, measured so that they can be compared: nginx, nginx-mirror,
    cutover pass-through and shadow saturated in turns, `throughput_rounds` times; the targets
    take the median of each round's own ratio.

    One case after the other is not enough on this kind of VM: the host's speed for Python
    drifts by 20-30 % within an hour, and in one full run cutover-shadow with the secondary down
    (more work per request) measured faster than pass-through minutes before it."""
    rounds = env.opts.throughput_rounds
    print(f"\n== saturation, {', '.join(THROUGHPUT_CASES)} in turns, {rounds} rounds", flush=True)
    runs, repeats = in_turns(env, THROUGHPUT_CASES, 0.0, rounds)
    return {
        "rounds": rounds,
        "steal_repeats": repeats,
        "median_rps": {
            name: statistics.median(r.requests_per_s for r in got) for name, got in runs.items()
        },
        "runs": {name: [r.as_dict() for r in got] for name, got in runs.items()},
    }


#: cutover-pass-again is cutover-pass started a second time (the order rotates by round): how far
#: two identical cases differ is the resolution the rounds give the targets (bench/README.md)
ISOLATION_CASES = (
    "direct",
    "cutover-pass",
    "cutover-shadow-slow",
    "cutover-shadow-down",
    "cutover-pass-again",
)


def isolation(env: Env, rate: int) -> dict[str, Any]:
    """The latency targets, measured so that they can be compared: the upstream direct,
    pass-through, and shadow with the secondary slow and down, started side by side (cutover
    on core 0) and loaded in turns at `rate`, `rounds` times over; each case's median p50 and
    p99 is what the targets compare (the figures of all its rounds' requests pooled are kept
    beside them).

    One 10 s run per case is not enough: on this kind of VM core 0 loses the CPU for a few ms
    now and then (nginx's own p99 at 1 000/s is ~1.2 ms there, against 0.1 ms for the upstream
    on core 1), and one case's p99 moved by a factor of 3 from one run to the next."""
    opts = env.opts
    print(
        f"\n== p99 at {rate}/s, {', '.join(ISOLATION_CASES)} in turns, {opts.rounds} rounds",
        flush=True,
    )
    runs, repeats = in_turns(env, ISOLATION_CASES, rate, opts.rounds)
    medians = {name: statistics.median(r.p99_ms or 0.0 for r in got) for name, got in runs.items()}
    every = {name: pooled(r.histogram for r in got) for name, got in runs.items()}
    return {
        "rate": rate,
        "rounds": opts.rounds,
        "steal_repeats": repeats,
        "median_p99_ms": medians,
        "median_p50_ms": {
            name: statistics.median(r.p50_ms or 0.0 for r in got) for name, got in runs.items()
        },
        # beside the medians: each case's requests of all its rounds together (bench/README.md)
        "pooled_p99_ms": {name: percentile_ms(h, 99) for name, h in every.items()},
        "pooled_p50_ms": {name: percentile_ms(h, 50) for name, h in every.items()},
        "pooled_requests": {name: sum(h.values()) for name, h in every.items()},
        "runs": {name: [r.as_dict() for r in got] for name, got in runs.items()},
    }


def soak(env: Env) -> dict[str, Any]:
    """cutover-shadow-down at a fixed rate for N minutes; RSS sampled every 5 s."""
    opts = env.opts
    seconds = round(opts.soak_minutes * 60)
    print(
        f"\n== soak: cutover-shadow-down at {opts.soak_rate}/s for {opts.soak_minutes:g} min",
        flush=True,
    )
    samples: list[tuple[float, int]] = []
    with case_target(env, "cutover-shadow-down") as target, ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        future = pool.submit(
            run_wrk,
            target.url,
            target.request,
            seconds=seconds,
            rate=opts.soak_rate,
            connections=opts.connections,
            cpus=str(LOAD_CORE),
            work=env.work,
        )
        next_report = 60.0
        while not future.done():
            elapsed = time.monotonic() - start
            samples.append((elapsed, status_kib(target.sut_pid, "VmRSS")))
            if elapsed >= next_report:
                print(
                    f"   {elapsed / 60:4.1f} min  RSS {samples[-1][1] / 1024:.1f} MiB", flush=True
                )
                next_report += 60
            time.sleep(5)
        run = future.result()
        samples.append((time.monotonic() - start, status_kib(target.sut_pid, "VmRSS")))
        peak = status_kib(target.sut_pid, "VmHWM")
        shadow = {
            k.split(":", 1)[1]: v
            for k, v in cutover_counters(target).items()
            if k.startswith("shadow:") and v
        }
    warm = min(60.0, seconds / 4)
    base = next((rss for t, rss in samples if t >= warm), samples[0][1])
    end = samples[-1][1]
    growth = (end - base) / base if base else 0.0
    print(
        f"   RSS after {warm:.0f} s {base / 1024:.1f} MiB, at the end {end / 1024:.1f} MiB "
        f"({growth:+.1%}), peak {peak / 1024:.1f} MiB; {fmt_rate_run(run)}"
    )
    return {
        "minutes": opts.soak_minutes,
        "rate": opts.soak_rate,
        "warm_s": warm,
        "rss_base_kib": base,
        "rss_end_kib": end,
        "rss_growth": growth,
        "peak_rss_kib": peak,
        "samples": samples,
        "run": run.as_dict(),
        "shadow": shadow,
    }


# --- environment and main ------------------------------------------------------------------


#: ns per step of a plain Python loop on core 0, best of 5: the host's speed for cutover's
#: kind of work. The same code runs the same instructions per request on every run
#: (`python -m bench.instructions`), yet two runs of one data path on this VM type, hours
#: apart, gave cutover 18 600 and 5 600 requests/s while nginx went from 54 400 to 37 600:
#: without this figure in the report that could not be told apart from a regression.
HOST_PROBE = """
import time
best = 1e9
for _ in range(5):
    t = time.perf_counter()
    x = 0
    for i in range(1_000_000):
        x += i
    best = min(best, time.perf_counter() - t)
print(f"{best * 1000:.1f}")
"""


def environment(nginx: str) -> dict[str, Any]:
    def out(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
        except OSError:
            return "?"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if done.stdout + done.stderr
            else "?"
        )

    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        )
    import aiohttp

    rev = out(["git", "rev-parse", "--short", "HEAD"])
    step = out(["taskset", "-c", str(SUT_CORE), PYTHON, "-c", HOST_PROBE])
    dirty = out(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": out([nginx, "-v"]),
        "wrk": out([ensure_tool("wrk"), "-v"]),
        "git": rev + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
        "build": build_kind(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "python_step_ns": step,
        "halt_polling": describe(),
    }


def build_kind() -> str:
    """Which cutover the cases run (they inherit this process's PYTHONPATH): `./dev bench
    --compiled` points it at a copy whose data path mypyc compiled (setup.py)."""
    import proxy.http1.server

    compiled = (proxy.http1.server.__file__ or "").endswith(".so")
    return "compiled with mypyc (./dev bench --compiled)" if compiled else "interpreted"


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="cutover next to nginx on one core: throughput, latency at fixed rates, "
        "CPU and memory (bench/README.md)",
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke check")
    parser.add_argument("--seconds", type=int, help="each measured run (default 10; --quick 3)")
    parser.add_argument("--cases", help=f"comma-separated, from: {', '.join(CASES)} (default: all)")
    parser.add_argument(
        "--rates",
        help="fixed rates in req/s for the latency runs (default "
        f"{','.join(map(str, DEFAULT_RATES))}; --quick {','.join(map(str, QUICK_RATES))})",
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0,
        help="also run the memory soak (cutover-shadow-down) for N minutes (target: 10)",
    )
    parser.add_argument("--soak-rate", type=int, default=1000, help="soak rate (default 1000/s)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="the latency targets: direct, pass-through, secondary slow and down loaded in "
        "turns at 1000/s, N rounds, medians compared (default 7; --quick 0; 0 skips)",
    )
    parser.add_argument(
        "--throughput-rounds",
        type=int,
        help="the throughput targets: nginx, nginx-mirror, cutover pass-through and shadow "
        "saturated in turns, N rounds, the median of each round's ratio (default 5; --quick 0; "
        "0: the cases' own saturation runs)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=15,
        help="before each case, wait up to N s for other processes to leave cores 0-1 (15)",
    )
    parser.add_argument(
        "--halt-poll-us",
        type=int,
        help="let an idle vCPU poll up to N µs before it halts, for the run (KVM haltpoll, root; "
        "the machine's setting is put back after; default: leave it as it is)",
    )
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",")] if args.cases else list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    try:
        rates = (
            [int(r) for r in args.rates.split(",") if r.strip()]
            if args.rates
            else list(QUICK_RATES if args.quick else DEFAULT_RATES)
        )
    except ValueError:
        parser.error("--rates takes whole numbers, e.g. 1000,5000")
    if any(r <= 0 for r in rates):
        parser.error("rates must be positive")
    if args.connections < 1 or (args.seconds is not None and args.seconds < 1):
        parser.error("--connections and --seconds must be at least 1")
    if (args.rounds or 0) < 0 or (args.throughput_rounds or 0) < 0:
        parser.error("--rounds and --throughput-rounds must be >= 0")
    if args.halt_poll_us is not None and not 0 <= args.halt_poll_us <= 1_000_000:
        parser.error("--halt-poll-us takes 0 to 1000000")
    if args.soak_minutes < 0 or args.soak_rate < 1:
        parser.error("--soak-minutes must be >= 0 and --soak-rate >= 1")
    return Options(
        quick=args.quick,
        seconds=args.seconds or (3 if args.quick else 10),
        warmup=1 if args.quick else 2,
        cases=cases,
        rates=sorted(set(rates)),
        soak_minutes=args.soak_minutes,
        soak_rate=args.soak_rate,
        out=args.out,
        connections=args.connections,
        keep=args.keep,
        quiet_wait=args.quiet_wait,
        rounds=args.rounds if args.rounds is not None else (0 if args.quick else 7),
        throughput_rounds=(
            args.throughput_rounds if args.throughput_rounds is not None else 0 if args.quick else 5
        ),
        halt_poll_us=args.halt_poll_us,
    )


def preflight() -> None:
    if not shutil.which("taskset"):
        raise BenchError("taskset is missing (Debian package util-linux)")
    allowed = os.sched_getaffinity(0)
    if not {SUT_CORE, LOAD_CORE} <= allowed:
        raise BenchError(
            f"the bench needs cores {SUT_CORE} and {LOAD_CORE} (server under test / upstreams "
            f"and load); this process may use only {sorted(allowed)}"
        )


def attempt(
    failed: dict[str, str], key: str, what: str, step: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any] | None:
    """One step after the cases; a failure is reported (`failed[key]`) and the rest go on."""
    try:
        return step(*args)
    except (BenchError, RuntimeError, OSError) as exc:
        failed[key] = str(exc).strip()
        print(f"bench: {what} failed: {failed[key]}", file=sys.stderr)
        return None


def run(opts: Options, ensure_plot: Callable[[], bool]) -> int:
    preflight()
    with halt_polling(opts.halt_poll_us):  # the machine's own setting is back after
        return measure_all(opts, ensure_plot)


def measure_all(opts: Options, ensure_plot: Callable[[], bool]) -> int:
    from bench.report import TARGET_RATE, write_outputs

    ensure_tool("wrk")
    nginx = ensure_nginx()
    can_plot = ensure_plot()
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-suite-"))
    work.chmod(0o755)  # nginx workers may run as another user
    procs = Processes()
    ok = False
    started_at = datetime.now(UTC)
    try:
        old_port, new_port = free_port(), free_port()
        upstream = start_nginx(
            procs,
            nginx,
            work,
            "upstream",
            upstream_conf(work, old_port, new_port, cpu_mask="10"),  # core 1
            str(LOAD_CORE),
            [old_port, new_port],
        )
        env = Env(opts, work, procs, nginx, old_port, new_port)
        env.helpers[nginx_worker(upstream)] = LOAD_CORE
        info = environment(nginx)
        print(
            f"bench: work folder {work}; cases {', '.join(opts.cases)}; rates "
            f"{', '.join(map(str, opts.rates))}; {opts.seconds} s per run"
        )
        results: list[CaseResult] = []
        failed: dict[str, str] = {}
        for name in opts.cases:
            try:
                results.append(run_case(env, name))
            except (BenchError, RuntimeError, OSError) as exc:  # report it, go on with the rest
                failed[name] = str(exc).strip()
                print(f"bench: case {name} failed: {failed[name]}", file=sys.stderr)
        saturated = isolated = soaked = None
        if opts.throughput_rounds > 0:
            saturated = attempt(failed, "throughput", "the throughput rounds", throughput, env)
        if opts.rounds > 0 and TARGET_RATE in opts.rates:
            isolated = attempt(failed, "isolation", "the p99 rounds", isolation, env, TARGET_RATE)
        if opts.soak_minutes > 0:
            soaked = attempt(failed, "soak", "the soak", soak, env)
        ok = not failed
    finally:
        procs.stop_all()
        if ok and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bench: configs and logs kept in {work}")
    table = write_outputs(
        opts=opts,
        results=results,
        failed=failed,
        soak=soaked,
        isolation=isolated,
        throughput=saturated,
        info=info,
        started_at=started_at,
        plot=can_plot,
    )
    print("\n" + table)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from bench.plot import ensure_matplotlib

    opts = parse_args(argv)
    raise_on_signals()
    try:
        return run(opts, ensure_matplotlib)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, int) and exc.code > 128:
            print(f"bench: stopped by signal {exc.code - 128}; its processes are stopped")
        raise
