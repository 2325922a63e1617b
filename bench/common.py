"""Shared pieces of the benchmarks: pinned processes, wrk, and readiness polling."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: one cutover process on the routes.yaml of its working folder, logging warnings only
CUTOVER_RUN = (
    PYTHON,
    "-m",
    "proxy",
    "--config",
    "routes.yaml",
    "run",
    "--workers",
    "1",
    "--log-level",
    "warning",
)


def ensure_tool(name: str, package: str | None = None) -> str:
    """A Debian tool, installed when missing and running as root (bench/README.md)."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        pkg = package or name
        if (
            subprocess.run(
                ["apt-get", "install", "-y", "-q", pkg], env=env, capture_output=True, check=False
            ).returncode
            != 0
        ):
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", pkg], env=env, capture_output=True, check=True
            )
        found = shutil.which(name)
    if not found:
        raise SystemExit(f"bench: {name} is missing; install the Debian package {package or name}")
    return found


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: nothing listens on {port} after {timeout}s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        handle = log.open("wb")
        popen = subprocess.Popen(
            list(argv),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        handle.close()
        return cls(name, popen)

    def cpu_seconds(self) -> float:
        """user + system CPU time of the process so far (from /proc)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    requests: int
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str,
    *,
    seconds: int,
    connections: int = 32,
    threads: int = 1,
    cpus: str = "1",
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    latency: bool = False,
    extra: Sequence[str] = (),
) -> WrkResult:
    argv = [ensure_tool("wrk"), f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    if latency:
        argv.append("--latency")
    argv += [*extra, url]
    out = subprocess.run(pinned(cpus, argv), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    pct = dict(re.findall(r"^\s+(50\.000|99\.000|99\.900)%\s+(\S+)", out, re.M))
    if not pct and latency:
        pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))

    def get(*keys: str) -> float | None:
        for key in keys:
            if key in pct:
                return _ms(pct[key])
        return None

    return WrkResult(rps, total, errors, get("50.000", "50"), get("99.000", "99"), get("99.900"))


def import_seeded_ids(case: Path, config: str = "routes.yaml") -> None:
    """The simulators' seeded id pairs (deterministic: seed 42, 300 customers) into the case's
    store, as `cutover idmap import` does for a real migration."""
    from proxy.demo.seed import generate

    pairs = case / "ids.csv"
    pairs.write_text("".join(f"{k},{o},{n}\n" for k, o, n in generate(42, 300).id_map))
    subprocess.run(
        [PYTHON, "-m", "proxy", "--config", config, "idmap", "import", str(pairs)],
        cwd=case,
        check=True,
        capture_output=True,
    )


def routes_yaml(
    *,
    listen: int,
    ports: dict[str, int],
    shadow: int,
    dual_write: bool = False,
    extra_route: str = "",
) -> str:
    """The demo routes.yaml with the benchmark's ports and knobs."""
    text = (REPO / "routes.yaml").read_text()
    for default, name in (
        ("9001", "old_crm"),
        ("9002", "old_ticketing"),
        ("9101", "new_crm"),
        ("9102", "new_ticketing"),
    ):
        text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
    text = text.replace("listen: 127.0.0.1:8080", f"listen: 127.0.0.1:{listen}")
    text = text.replace("shadow_percent: 100", f"shadow_percent: {shadow}")
    if dual_write:
        text = text.replace("    shadow_percent:", "    dual_write: true\n    shadow_percent:", 1)
    return text + extra_route
