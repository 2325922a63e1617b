"""A platform API that misbehaves on purpose, on a raw asyncio socket.

The demo platforms are aiohttp apps, and aiohttp will not send broken HTTP or a reset in the
middle of a body; this will. It reads each request (head and framed body), records it, and then
answers as its mode says:

    ok            200 with a small JSON body
    refuse        nothing listens on the port: connections are refused
    reset         a 200 head announcing a large body, part of it, then a TCP reset
    hang          reads the request and never answers (until the peer gives up)
    invalid_http  bytes that are not an HTTP response, then close
    big_body      a 200 JSON answer of `big_size` bytes (50 MB by default), streamed
    invalid_json  a 200 answer declared application/json that is not JSON
    slow          `ok`, after `delay` seconds
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["ok", "refuse", "reset", "hang", "invalid_http", "big_body", "invalid_json", "slow"]
MODES: tuple[Mode, ...] = (
    "ok",
    "refuse",
    "reset",
    "hang",
    "invalid_http",
    "big_body",
    "invalid_json",
    "slow",
)
BIG_CHUNK = 1 << 20


@dataclass(frozen=True)
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FaultUpstream:
    mode: Mode = "ok"
    delay: float = 5.0
    big_size: int = 50 * 1024 * 1024
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultUpstream:
        if self.port == 0:  # reserve a port, so that `refuse` can keep it
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = int(sock.getsockname()[1])
        await self.set_mode(self.mode)
        return self

    async def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "refuse":
            await self._close_server()
        elif self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

    async def stop(self) -> None:
        await self._close_server()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.received.append(request)
                if not await self._answer(reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is done with."""
        mode = self.mode
        if mode == "hang":
            await reader.read()  # until the peer closes
            return False
        if mode == "slow":
            await asyncio.sleep(self.delay)
        if mode in ("ok", "slow"):
            _respond(writer, b'{"id": 1001, "ok": true}')
        elif mode == "invalid_json":
            _respond(writer, b'{"id": 1001, "full_name": "trunc')
        elif mode == "invalid_http":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\nthis is not HTTP\r\n\r\n")
            await writer.drain()
            return False
        elif mode == "reset":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + b'{"items": [' + b"1," * 2000
            )
            await writer.drain()
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: close() sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        elif mode == "big_body":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % self.big_size
            )
            chunk = b" " * BIG_CHUNK
            left = self.big_size
            while left > 0:
                writer.write(chunk[: min(left, BIG_CHUNK)])
                left -= BIG_CHUNK
                await writer.drain()
        await writer.drain()
        return True


def _respond(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                with contextlib.suppress(asyncio.IncompleteReadError):
                    await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    return Received(method, target, headers, body)
