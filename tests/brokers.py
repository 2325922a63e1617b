"""MQTT in tests: the real broker's address, a private Mosquitto to stop and start, and a way
to clear what a test left retained."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiomqtt

from proxy.config.spec import MqttSpec
from tests.processes import free_port, port_open, wait_for

BROKER_PORT = 1883


def require_broker() -> None:
    import pytest

    if not port_open(BROKER_PORT):
        pytest.fail(
            f"these tests need the real Mosquitto at 127.0.0.1:{BROKER_PORT} (./dev test starts it)"
        )


class OwnBroker:
    """A Mosquitto of our own on a free port, to stop and start again."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def spec(self) -> MqttSpec:
        return MqttSpec(url=self.url, keepalive=2)

    async def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(self.conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_for(lambda: port_open(self.port), timeout=5, what="own mosquitto")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        self.proc = None

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, no will published by a clean shutdown."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


async def clear_retained(migration: str, port: int = BROKER_PORT) -> None:
    """Remove every retained message under cutover/<migration>/ (tests leave none behind)."""
    topics: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"cutover/{migration}/#")
        try:
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    if message.retain and message.payload:
                        topics.add(str(message.topic))
        except TimeoutError:
            pass
        for topic in topics:
            await client.publish(topic, b"", retain=True)
