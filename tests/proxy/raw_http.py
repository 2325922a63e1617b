"""Raw HTTP/1.1 on a socket, for tests that must send and see exactly the bytes on the wire."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

TIMEOUT = 5.0


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def read_head(reader: asyncio.StreamReader) -> tuple[int, str, list[tuple[str, str]]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers = [
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    ]
    return int(status), " ".join(reason), headers


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    """One response: framed by Content-Length, chunked, or (neither) the end of the stream."""
    status, reason, headers = await read_head(reader)
    response = RawResponse(status, reason, headers, b"")
    if head_only or status in (204, 304) or status < 200:
        return response
    length = response.header("Content-Length")
    if length is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), TIMEOUT)
    elif (response.header("Transfer-Encoding") or "").lower() == "chunked":
        parts = []
        while True:
            size = int((await asyncio.wait_for(reader.readline(), TIMEOUT)).split(b";")[0], 16)
            if size == 0:
                await asyncio.wait_for(reader.readline(), TIMEOUT)
                break
            parts.append(await asyncio.wait_for(reader.readexactly(size), TIMEOUT))
            await asyncio.wait_for(reader.readline(), TIMEOUT)
        response.body = b"".join(parts)
    else:
        response.body = await asyncio.wait_for(reader.read(), TIMEOUT)
    return response


async def closed(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bool:
    """True when the peer closed the connection (EOF or reset) within `timeout`."""
    try:
        rest = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return rest == b""
