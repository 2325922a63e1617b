"""The data path's three async generators, in a module of their own because mypyc does not
compile async generators: client.py and server.py are compiled (setup.py), this stays
interpreted. Each belongs to the class that returns it (`Answer.chunks`, `Request.stream`,
`Request.prefix`) and reads that object's state as one of its methods would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.http1.client import Answer
    from proxy.http1.server import Request


async def answer_chunks(answer: Answer, low_water: int) -> AsyncIterator[bytes]:
    """An answer's body as it arrives; each wait for more is bounded by the upstream's
    timeout; reading resumes once less than `low_water` bytes are buffered."""
    while True:
        if answer._chunks:
            chunk = answer._chunks.popleft()
            answer._buffered -= len(chunk)
            if answer._buffered < low_water:
                answer._conn.resume_reading()
            yield chunk
            continue
        if answer._error is not None:
            raise answer._error
        if answer.complete:
            return
        await answer._wait()


async def request_stream(request: Request) -> AsyncIterator[bytes]:
    """A request's body as it arrives (within `body_timeout` between chunks)."""
    body = request._body
    if not request.body_exists:
        return
    if request._continue:  # the client waits for this before it sends the body
        request._continue = False
        request._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    while True:
        if body.chunks:
            yield body.take()
            continue
        if body.error is not None:
            raise body.error
        if body.complete:
            return
        await body.wait()


async def chained(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk
