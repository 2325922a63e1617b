"""`cutover run --workers N`: N processes on one port (SO_REUSEPORT), one parent watching them.

The parent does no proxying: it starts `cutover run --worker I --of N` N times, forwards
SIGTERM/SIGINT (graceful shutdown) and SIGHUP (reload) to every worker, restarts a worker that
died (with backoff, not during shutdown), and exits 0 once they are all gone. Each worker asks
the kernel to send it SIGTERM when the parent dies (PR_SET_PDEATHSIG), so a `kill -9` of the
parent never leaves orphans holding the port.

How the parts work with N > 1 (README.md, "Worker processes"):
  - the data path: the kernel spreads connections over the workers' listening sockets;
  - routes.yaml: every worker watches it; a change through the admin API (worker 0) reaches the
    others within one poll of the file;
  - fleet control: every worker is an instance on the broker (`<id>-w<I>`), so `cutover status`
    shows each process that must apply a rollback;
  - the outbox: workers share the store; its lease lets exactly one of them send;
  - the admin API and /metrics: worker 0 only; the others write their counters to the state
    directory every second and worker 0 adds them up when scraped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import structlog

log = structlog.get_logger("cutover.workers")

RESTART_BACKOFF_MAX = 30.0
STOP_GRACE = 45.0  # a worker's own shutdown takes at most ~30 s (runner.SHUTDOWN_TIMEOUT) + drains
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent exits, however the parent died."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's own shutdown still stops workers
        return
    if os.getppid() == 1:  # the parent is already gone
        os.kill(os.getpid(), signal.SIGTERM)


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


class Parent:
    def __init__(self, argv: Sequence[str], workers: int) -> None:
        self.argv = list(argv)
        self.workers = workers
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = False
        self._stop_started: float | None = None

    def _spawn(self, index: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "proxy",
            *self.argv,
            "--worker",
            str(index),
            "--of",
            str(self.workers),
        ]
        self.children[index] = subprocess.Popen(argv)  # noqa: S603 - our own command line
        log.info("worker_started", worker=index, pid=self.children[index].pid)

    def _signal_all(self, sig: int) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(sig)

    def run(self) -> int:
        def stop(sig: int, _frame: object) -> None:
            self.stopping = True
            self._signal_all(signal.SIGTERM)

        def reload(sig: int, _frame: object) -> None:
            self._signal_all(signal.SIGHUP)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        for index in range(self.workers):
            self._spawn(index)
        due: dict[int, float] = {}
        while True:
            alive = 0
            for index, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    alive += 1
                    continue
                if self.stopping:
                    continue
                if index not in due:
                    count = self.restarts.get(index, 0)
                    wait = min(2.0**count * 0.5, RESTART_BACKOFF_MAX)
                    log.error("worker_exited", worker=index, code=code, restart_in_s=wait)
                    due[index] = time.monotonic() + wait
                    self.restarts[index] = count + 1
                elif time.monotonic() >= due[index]:
                    del due[index]
                    self._spawn(index)
                    alive += 1
            if self.stopping and alive == 0:
                break
            if self.stopping and self._overdue():
                self._signal_all(signal.SIGKILL)
            time.sleep(0.1)
        log.info("workers_stopped", count=self.workers)
        return 0

    def _overdue(self) -> bool:
        if self._stop_started is None:
            self._stop_started = time.monotonic()
        return time.monotonic() - self._stop_started > STOP_GRACE
