"""Real cutover processes for end-to-end tests: started from a routes.yaml on disk, ready when
their port answers, stopped with SIGTERM and checked for a clean exit."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.configs import dump

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll until `predicate()` is truthy (awaiting it if it is a coroutine) or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class CutoverProcess:
    """One `cutover run` child process with its own routes.yaml in a temp folder."""

    def __init__(
        self,
        workdir: Path,
        doc: dict[str, Any] | None = None,
        *,
        text: str | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "routes.yaml"
        self.port = free_port()
        self.admin_port = free_port()
        self.token = f"test-token-{self.port}"
        if doc is not None:
            doc = dict(doc)
            doc["listen"] = f"127.0.0.1:{self.port}"
            doc["admin"] = {**doc.get("admin", {}), "listen": f"127.0.0.1:{self.admin_port}"}
            self.config.write_bytes(dump(doc))
        elif text is not None:
            self.config.write_text(
                text.replace("${PORT}", str(self.port)).replace(
                    "${ADMIN_PORT}", str(self.admin_port)
                )
            )
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "CUTOVER_ADMIN_TOKEN": self.token,
            "CUTOVER_INSTANCE_ID": f"test-{self.port}",
            **(env or {}),
        }
        # one process unless a test asks for workers (then the parent owns them)
        self.args = args if args is not None else ["--workers", "1"]
        self.log_path = workdir / "cutover.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._wait_admin = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def start(self, timeout: float = 15.0, *, wait_admin: bool = True) -> CutoverProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting a child is quick; it runs on its own
            [sys.executable, "-m", "proxy", "--config", str(self.config), "run", *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_admin = wait_admin
        await wait_for(self._ready, timeout=timeout, what=f"cutover on :{self.port}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"cutover exited with {self.proc.returncode}:\n{self.logs()[-3000:]}"
            )
        return port_open(self.port) and (not self._wait_admin or port_open(self.admin_port))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`cutover --config <this routes.yaml> ARGS…`, as an operator would run it."""
        return subprocess.run(
            [sys.executable, "-m", "proxy", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=self.env,
            cwd=self.workdir,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    events.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return events

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc
        await wait_for(lambda: proc.poll() is not None, timeout=timeout, what="cutover to exit")
        return proc.returncode

    async def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except AssertionError:
            self.proc.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def rss_peak_kib(self) -> int:
        """VmHWM: the process's peak resident memory so far."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")
