"""Idempotency-Key bookkeeping for one simulated upstream.

Real platforms replay the first answer to a retried write carrying the same key; cutover's
dual-write retries rely on it, so the simulators behave the same way: same key and same payload
(method, path with query, body) -> the stored answer again, without a second write; same key and
another payload -> refused; same key while the first request is still running -> conflict.
No aiohttp here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status: int
    body: bytes
    content_type: str | None
    headers: tuple[tuple[str, str], ...]


class Claim(Enum):
    NEW = "new"
    IN_FLIGHT = "in_flight"
    MISMATCH = "mismatch"
    REPLAY = "replay"


@dataclass(slots=True)
class _Entry:
    fingerprint: bytes | None
    answer: StoredAnswer | None = None


def fingerprint(method: str, path_qs: str, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (method.encode(), path_qs.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class IdempotencyKeys:
    """Keys seen by one app, oldest forgotten first once `max_keys` is reached."""

    __slots__ = ("_entries", "max_keys")

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.max_keys = max_keys

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def in_flight(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.answer is None

    def reserve(self, key: str) -> bool:
        """Mark the key as being worked on before the body is read; False if already known."""
        if key in self._entries:
            return False
        self._entries[key] = _Entry(fingerprint=None)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return True

    def check(self, key: str, print_: bytes) -> tuple[Claim, StoredAnswer | None]:
        """What to do with a request whose key is already known."""
        entry = self._entries.get(key)
        if entry is None:
            return Claim.NEW, None
        if entry.answer is None:
            return Claim.IN_FLIGHT, None
        if entry.fingerprint != print_:
            return Claim.MISMATCH, None
        return Claim.REPLAY, entry.answer

    def bind(self, key: str, print_: bytes) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.fingerprint = print_

    def finish(self, key: str, answer: StoredAnswer) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.answer = answer

    def release(self, key: str) -> None:
        """Forget a key whose request failed before it had an answer worth replaying."""
        entry = self._entries.get(key)
        if entry is not None and entry.answer is None:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
