"""Processes the suite starts, and what /proc says about them.

Every process goes through `Processes.start`, which refuses a busy port, pins the process with
taskset, and remembers it; `Processes.stop_all` (called from a `finally`, also on Ctrl-C and
SIGTERM) stops each one by its pid, newest first. Nothing is ever stopped by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench.common import port_open

TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A clear, expected failure (busy port, missing tool, a process that died): no traceback."""


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kib(pid: int, key: str) -> int:
    """A `VmRSS`/`VmHWM`-style line of /proc/<pid>/status, in KiB (0 if absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    if found:
        return found
    for entry in Path("/proc").iterdir():  # kernels without the children file
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class CoreTimes:
    """Seconds since boot one core spent running tasks (user, nice, system), in interrupts
    (irq, softirq: loopback TCP is mostly here), and stolen by the hypervisor."""

    task: float
    irq: float
    steal: float


def core_times() -> dict[int, CoreTimes]:
    """Per core, from /proc/stat: to see who else ran on a core during a run."""
    out: dict[int, CoreTimes] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            t = [int(v) for v in values] + [0] * 8
            out[int(name[3:])] = CoreTimes(
                (t[0] + t[1] + t[2]) / TICKS, (t[5] + t[6]) / TICKS, t[7] / TICKS
            )
    return out


def core_task_usage(core: int, seconds: float, exclude: Sequence[int] = ()) -> float:
    """Fraction of one core spent running tasks over `seconds`, minus the `exclude` pids' CPU
    (which may run elsewhere too: an upper bound on the others' share)."""
    before = core_times()[core].task
    mine = sum(_cpu_or_zero(pid) for pid in exclude)
    time.sleep(seconds)
    busy = core_times()[core].task - before
    mine = sum(_cpu_or_zero(pid) for pid in exclude) - mine
    return max(0.0, busy - mine) / seconds


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


@dataclass
class Proc:
    """One started process (the taskset wrapper execs it, so the pid is the program's own)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            self.popen.send_signal(sig)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Processes:
    """The suite's own processes; stop_all() stops each by pid, newest first."""

    started: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        cpus: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        ports: Sequence[int] = (),
        ready_timeout: float = 30.0,
    ) -> Proc:
        for port in ports:
            if port_open(port):
                raise BenchError(
                    f"port {port} is already in use on 127.0.0.1 (needed by {name}); "
                    "stop whatever listens there and run again"
                )
        command = ["taskset", "-c", cpus, *argv] if cpus is not None else list(argv)
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, **(env or {})},
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        deadline = time.monotonic() + ready_timeout
        for port in ports:
            while not port_open(port):
                if not proc.alive():
                    raise BenchError(
                        f"{name} exited with status {popen.returncode} before listening on "
                        f"{port}; its log ({log}):\n{proc.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{name} is not listening on {port} after {ready_timeout:.0f}s; "
                        f"its log ({log}):\n{proc.log_tail()}"
                    )
                time.sleep(0.05)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        while self.started:
            proc = self.started.pop()
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {proc.name} (pid {proc.pid}): {exc}")


def raise_on_signals() -> None:
    """Ctrl-C raises KeyboardInterrupt (even when started with SIGINT ignored, as background
    jobs of a script are), SIGTERM/SIGHUP raise SystemExit: either way the suite's `finally`
    stops every process it started."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
