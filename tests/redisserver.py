"""A Redis of a test's own on a free port, durable (AOF, fsync on every write), to kill -9 and
start again on the same data. The shared Redis on 6379 is never restarted by tests."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

from tests.processes import free_port, port_open, wait_for


class OwnRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.dir / "redis.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await wait_for(lambda: port_open(self.port), timeout=10, what="own redis-server")
        await wait_for(self._ready, timeout=10, what="own redis-server to load its data")

    async def _ready(self) -> bool:
        """PONG: listening is not enough, Redis answers LOADING while it replays its AOF."""
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        client = aioredis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except RedisError:
            return False
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF already holds survives."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.proc = None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        self.proc = None
