"""What every outbox + id map store offers (SQLite for one instance, Redis for a fleet).

Ready entries are ordered by commit: the order in which the primary answered is the order in
which the secondary must see the writes. Intents are kept apart: they are recovery material, not
part of the order. A store is partitioned by order key (SQLite has one partition); a worker
reads only partitions it holds a lease on, so one record's writes are sent by one worker.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from proxy.config.spec import Side
from proxy.dualwrite.model import IdEntry, OutboxEntry, OutboxStats


class StoreError(Exception):
    """The store could not do what was asked (disk full, Redis down); the caller decides."""


def partition_of(order_key: str, partitions: int) -> int:
    return zlib.crc32(order_key.encode()) % partitions if partitions > 1 else 0


class Store(ABC):
    """Async, and safe to call from the event loop: nothing here blocks it."""

    partitions: int = 1

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def instance_salt(self) -> str:
        """A random token made once per store, so derived idempotency keys never repeat."""

    # --- outbox ----------------------------------------------------------------------------

    @abstractmethod
    async def journal(self, entry: OutboxEntry) -> str:
        """Durably record an intent before the primary is called; its id."""

    @abstractmethod
    async def commit(self, intent_id: str, entry: OutboxEntry, record: IdEntry | None) -> str:
        """The primary said yes: the intent becomes a ready entry at the end of its partition
        (and, for a create, the single-sided id map entry is stored) in one step; its id.
        Raises StoreError when the intent is gone (already committed or discarded elsewhere),
        so that two instances recovering the same intent never both enqueue it."""

    @abstractmethod
    async def last_commit(self, order_key: str) -> float | None:
        """When a write to this record was last committed (its entry's `created`), if ever.
        Recovery must not re-send an unknown write over a newer one."""

    @abstractmethod
    async def discard(self, intent_id: str) -> None:
        """The primary said no: forget the intent."""

    @abstractmethod
    async def intents(self, older_than: float) -> list[OutboxEntry]:
        """Intents journaled before `older_than` (time.time()): writes whose outcome is unknown."""

    @abstractmethod
    async def claim(self, owner: str, ttl: float) -> list[int]:
        """Take or renew leases; the partitions `owner` may send from for the next `ttl` s."""

    @abstractmethod
    async def release(self, owner: str) -> None: ...

    @abstractmethod
    async def ready(self, partition: int, after: str | None, limit: int) -> list[OutboxEntry]:
        """Ready entries of a partition in commit order, after the entry id `after`."""

    @abstractmethod
    async def complete(self, entry: OutboxEntry) -> None:
        """The secondary confirmed: remove the entry."""

    @abstractmethod
    async def reschedule(self, entry: OutboxEntry) -> None:
        """Persist `attempts`, `next_at` and `last_error` of a failed try."""

    @abstractmethod
    async def dead_letter(self, entry: OutboxEntry, reason: str) -> None: ...

    @abstractmethod
    async def revive(self, ids: Iterable[str] | None) -> int:
        """Dead letters back to ready (all of them when `ids` is None), attempts reset."""

    @abstractmethod
    async def drop(self, ids: Iterable[str]) -> int: ...

    @abstractmethod
    async def entries(self, state: str, limit: int) -> list[OutboxEntry]:
        """For operators: `ready`, `intent` or `dead` entries, oldest first."""

    @abstractmethod
    async def stats(self) -> OutboxStats: ...

    # --- id map ----------------------------------------------------------------------------

    @abstractmethod
    async def map_lookup(self, resource: str, side: Side, key: str) -> IdEntry | None:
        """The record whose id on `side` has the lookup text `key` (see model.key_text)."""

    @abstractmethod
    async def map_put(self, entries: Iterable[IdEntry]) -> int:
        """Insert or update records, identified by their birth id (origin side + id)."""

    @abstractmethod
    def map_scan(self, resource: str) -> AsyncIterator[IdEntry]: ...


def open_store(url: str, base_dir: Path, *, partitions: int = 8, migration: str = "") -> Store:
    """The store routes.yaml names: sqlite:///relative/or/absolute.db, or redis://…

    In Redis, keys live under `cutover:<migration>:`, so two migrations (or two test runs
    with their own migration names) can share one server."""
    if url.startswith("sqlite://"):
        from proxy.dualwrite.sqlite_store import SqliteStore

        raw = url.removeprefix("sqlite://")
        # sqlite:///state/x.db is relative (to routes.yaml's folder); sqlite:////var/x.db absolute
        path = Path(raw[1:] if raw.startswith("/") else raw)
        return SqliteStore(path if path.is_absolute() else base_dir / path)
    if url.startswith(("redis://", "rediss://")):
        from proxy.dualwrite.redis_store import RedisStore

        prefix = f"cutover:{migration}:" if migration else None
        return RedisStore(url, partitions=partitions, prefix=prefix)
    raise StoreError(f"unknown store {url!r}")
