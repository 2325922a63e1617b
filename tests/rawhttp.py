"""HTTP/1.1 on a raw socket, for tests that must send what no client library would.

`exchange` writes bytes as they are and reads what comes back until the expected number of
answers is complete, the peer closes, or a deadline passes. `parse_responses` checks every answer
against RFC 9112 strictly (status line, header names and values, one framing) and says exactly
what is wrong, so "every answer is valid HTTP" is a real assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\t -~\x80-\xff]*")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t -~\x80-\xff]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[^\r\n]*)?")


class InvalidResponse(AssertionError):
    """What the peer sent is not a valid HTTP/1.1 response; the message says why."""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass
class Exchange:
    """What came back for the bytes sent."""

    data: bytes
    responses: list[Response] = field(default_factory=list)
    closed: bool = False  # the peer closed (or reset) the connection
    timed_out: bool = False  # the deadline passed with the connection still open
    incomplete: bytes = b""  # the start of an answer that never completed

    @property
    def first(self) -> Response:
        assert self.responses, f"no answer; received {self.data[:300]!r}"
        return self.responses[0]


def _header_block(data: bytes, start: int) -> tuple[Response, int] | None:
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    lines = data[start:end].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise InvalidResponse(f"bad status line {lines[0][:200]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or _TOKEN.fullmatch(name) is None:
            raise InvalidResponse(f"bad header line {line[:200]!r}")
        value = value.strip(b" \t")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise InvalidResponse(f"control character in header {line[:200]!r}")
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return Response(int(match.group(1)), headers, b""), end + 4


def _chunked(data: bytes, pos: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        match = _CHUNK_SIZE.fullmatch(data[pos:line_end])
        if match is None:
            raise InvalidResponse(f"bad chunk size line {data[pos:line_end][:80]!r}")
        size = int(match.group(1), 16)
        pos = line_end + 2
        if size == 0:
            trailers_end = data.find(b"\r\n\r\n", pos - 2)
            if trailers_end < 0:
                return None
            return bytes(body), trailers_end + 4
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise InvalidResponse("chunk not followed by CRLF")
        pos += size + 2


def parse_responses(
    data: bytes, *, head: bool = False, closed: bool = False
) -> tuple[list[Response], bytes]:
    """Every complete answer in `data` (validated), and the incomplete rest.

    `head`: answers to HEAD carry no body, unless the request was refused before its method was
    known (an answer with a body then parses as one)."""
    if head:
        try:
            return _parse(data, head=True, closed=closed)
        except InvalidResponse:
            pass
    return _parse(data, head=False, closed=closed)


def _parse(data: bytes, *, head: bool, closed: bool) -> tuple[list[Response], bytes]:
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        parsed = _header_block(data, pos)
        if parsed is None:
            rest = data[pos:]
            if not (rest.startswith(b"HTTP/1.") or b"HTTP/1.".startswith(rest)):
                raise InvalidResponse(f"not an HTTP response: {rest[:200]!r}")
            break
        response, body_at = parsed
        lengths = [v for k, v in response.headers if k.lower() == "content-length"]
        codings = [v for k, v in response.headers if k.lower() == "transfer-encoding"]
        if lengths and codings:
            raise InvalidResponse("both Content-Length and Transfer-Encoding")
        if len(set(lengths)) > 1 or any(not v.isdigit() for v in lengths):
            raise InvalidResponse(f"bad Content-Length {lengths}")
        if response.status < 200 or response.status in (204, 304) or head:
            end = body_at
        elif codings:
            if codings[-1].lower().split(",")[-1].strip() != "chunked":
                raise InvalidResponse(f"unframed Transfer-Encoding {codings}")
            result = _chunked(data, body_at)
            if result is None:
                break
            response.body, end = result
        elif lengths:
            end = body_at + int(lengths[0])
            if end > len(data):
                break
            response.body = data[body_at:end]
        else:  # delimited by the connection's end
            if not closed:
                break
            end = len(data)
            response.body = data[body_at:]
        if response.status >= 200:
            out.append(response)
        pos = end
    return out, data[pos:]


async def exchange(
    port: int,
    data: bytes,
    *,
    expect: int = 1,
    deadline: float = 2.0,
    linger: float = 0.0,
    head: bool = False,
    host: str = "127.0.0.1",
) -> Exchange:
    """Send `data` on a fresh connection; read until `expect` answers (and then `linger` seconds
    more, for answers nobody asked for), the peer closes, or the deadline passes."""
    reader, writer = await asyncio.open_connection(host, port)
    received = bytearray()
    result = Exchange(b"")
    stop_at = time.monotonic() + deadline
    try:
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            result.closed = True
        while not result.closed:
            try:
                async with asyncio.timeout(max(0.0, stop_at - time.monotonic())):
                    chunk = await reader.read(1 << 16)
            except TimeoutError:
                answered, _ = parse_responses(bytes(received), head=head)
                result.timed_out = len(answered) < expect
                break
            except ConnectionError:
                chunk = b""
            if not chunk:
                result.closed = True
                break
            received += chunk
            responses, _ = parse_responses(bytes(received), head=head)
            if len(responses) >= expect:
                stop_at = min(stop_at, time.monotonic() + linger)
                if linger <= 0:
                    break
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    result.data = bytes(received)
    result.responses, result.incomplete = parse_responses(
        result.data, head=head, closed=result.closed
    )
    return result
