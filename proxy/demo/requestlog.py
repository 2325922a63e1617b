"""What a simulated upstream received: a bounded ring of requests, and a way to wait for one.

cutover's mirrored reads and dual-writes reach the secondary after the client has its answer, so
tests must wait for "the new CRM got the PATCH" without sleeping: `wait_for` resolves on the
request itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_REQUESTS = 10_000
RECORDED_HEADERS = (
    "X-Cutover-Mirror",
    "X-Cutover-Platform",
    "X-Request-ID",
    "Idempotency-Key",
    "Authorization",
    "Cookie",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "Connection",
)
"""Recorded under these spellings, whatever case the client used; plus every `X-Test-*` header."""
_RECORDED = {name.lower(): name for name in RECORDED_HEADERS}
TEST_HEADER_PREFIX = "x-test-"


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One request as the upstream saw it; `seq` grows by one per request and never restarts."""

    seq: int
    method: str
    path: str
    headers: Mapping[str, str]
    at: float

    def header(self, name: str) -> str | None:
        """A recorded header, whatever the case of `name`."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "at": self.at,
        }


def pick_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The recorded subset of a request's headers (repeated ones joined with ", ")."""
    picked: dict[str, str] = {}
    for name, value in items:
        lower = name.lower()
        key = _RECORDED.get(lower)
        if key is None:
            if not lower.startswith(TEST_HEADER_PREFIX):
                continue
            key = str(name)  # multidict hands out istr, which orjson refuses as a key
        picked[key] = f"{picked[key]}, {value}" if key in picked else value
    return picked


Predicate = Callable[[SeenRequest], bool]


class RequestLog:
    """The last `maxlen` requests of one app, oldest first."""

    __slots__ = ("_ring", "_seq", "_waiters")

    def __init__(self, maxlen: int = DEFAULT_MAX_REQUESTS) -> None:
        self._ring: deque[SeenRequest] = deque(maxlen=maxlen)
        self._seq = 0
        self._waiters: list[tuple[Predicate, asyncio.Future[SeenRequest]]] = []

    @property
    def last_seq(self) -> int:
        """The seq of the latest request (0 before the first); pass it as `since` later."""
        return self._seq

    def record(self, method: str, path: str, headers: Mapping[str, str]) -> SeenRequest:
        self._seq += 1
        seen = SeenRequest(self._seq, method, path, headers, time.time())
        self._ring.append(seen)
        if self._waiters:
            waiting = self._waiters
            self._waiters = []
            for predicate, future in waiting:
                if future.done():
                    continue
                try:
                    matched = predicate(seen)
                except Exception as exc:  # a broken predicate fails its waiter, not the request
                    future.set_exception(exc)
                    continue
                if matched:
                    future.set_result(seen)
                else:
                    self._waiters.append((predicate, future))
        return seen

    def since(self, seq: int = 0) -> list[SeenRequest]:
        """Requests with a seq above `seq`, oldest first."""
        if not self._ring or self._ring[0].seq > seq:
            return list(self._ring)
        return [seen for seen in self._ring if seen.seq > seq]

    def clear(self) -> None:
        """Forget what was seen; seq numbers carry on."""
        self._ring.clear()

    async def wait_for(
        self,
        predicate: Predicate | None = None,
        *,
        since: int = 0,
    ) -> SeenRequest:
        """The first request after `since` that matches, waiting for it if it has not come yet.

        Bound the wait with `asyncio.timeout` around the call.
        """
        match = predicate or (lambda _seen: True)
        for seen in self._ring:
            if seen.seq > since and match(seen):
                return seen
        future: asyncio.Future[SeenRequest] = asyncio.get_running_loop().create_future()
        entry = (match, future)
        self._waiters.append(entry)
        try:
            return await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
