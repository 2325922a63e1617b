"""The data path's half of dual-write: journal the intent before the primary, settle it after.

A write on a dual-write route is never sent to the primary unjournalled: when the store cannot
commit, the client gets 503 and nothing happens anywhere. After the primary's answer, a 2xx
turns the intent into a ready entry (the worker takes it from there), a refusal discards it, and
an unknown outcome (timeout, reset) leaves it for recovery.

Writes to one record take turns, from the journal to the settling (`journal` takes the record's
turn, `done` passes it on): the order of a record's outbox entries is the order their intents
are committed, so two writes to one record in flight at once could settle in the other order
than the primary applied them, leaving the primary with the later write and the secondary with
the earlier one (seen in the kill -9 test with 16 concurrent clients). Taking turns, the primary
sees them one at a time, in the order they were journaled, and they commit in that order. Only
writes to the same record wait; across a fleet of processes the turns are per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

import structlog

from proxy.config.spec import Side
from proxy.config.table import Route, RouteTable
from proxy.dualwrite.model import OutboxEntry, RecordRef, key_text, order_key
from proxy.dualwrite.store import Store, StoreError
from proxy.dualwrite.worker import OutboxWorker
from proxy.errors import OutboxUnavailable, UpstreamError, UpstreamRefused
from proxy.translate import Resolved

log = structlog.get_logger("cutover.journal")


@dataclass(frozen=True, slots=True)
class Intent:
    id: str
    entry: OutboxEntry
    primary: Side
    turn: str = ""  # the order key whose turn this write holds until `done` ("" for a create)


class RecordTurns:
    """One lock per order key with writes in flight; a key's entry goes with its last user."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def take(self, key: str) -> None:
        held = self._locks.get(key)
        if held is None:
            held = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = held
        users[0] += 1
        try:
            await lock.acquire()
        except BaseException:
            self._leave(key, users)
            raise

    def give(self, key: str) -> None:
        lock, users = self._locks[key]
        lock.release()
        self._leave(key, users)

    def _leave(self, key: str, users: list[int]) -> None:
        users[0] -= 1
        if users[0] == 0:
            del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class DualWrite:
    def __init__(self, store: Store, worker: OutboxWorker, salt: str, table: RouteTable) -> None:
        self.store = store
        self.worker = worker
        self.salt = salt
        self.migration = table.migration
        self.turns = RecordTurns()

    def _key(self, kind: str, client_key: str | None) -> str:
        """Idempotency keys: from the client's own key when it sent one, so that a client retry
        (which the primary deduplicates) is deduplicated by the secondary too."""
        base = client_key or os.urandom(12).hex()
        return f"cutover-{self.salt}-{kind}-{base}"[:255]

    async def journal(
        self,
        route: Route,
        *,
        method: str,
        path: str,
        query: str,
        body: bytes,
        content_type: str,
        primary: Side,
        secondary: Side,
        resolved: Resolved,
        request_id: str,
        customer: str | None,
        client_key: str | None,
    ) -> Intent:
        record: RecordRef | None = None
        okey = ""
        rule = route.ids
        if rule is not None and resolved.key is not None:
            known = resolved.record
            side: Side = "old"
            if known is not None:
                side = (
                    "old"
                    if known.old is not None and key_text(known.old) == resolved.key
                    else "new"
                )
                okey = known.order_key
            else:
                okey = order_key(rule.resource, "?", resolved.key)
            record = RecordRef(rule.resource, side, resolved.key)
        elif rule is None:
            okey = f"{route.name}:{path}"
        entry = OutboxEntry(
            route=route.name,
            method=method,
            path=path,
            query=query,
            body=body,
            content_type=content_type,
            target=secondary,
            order_key=okey,
            record=record,
            request_id=request_id,
            customer=customer,
            created=time.time(),
            idempotency_key=self._key("s", client_key),
            primary_key=client_key or self._key("p", None),
        )
        if okey:
            await self.turns.take(okey)
        try:
            intent_id = await self.store.journal(entry)
        except BaseException as exc:
            if okey:
                self.turns.give(okey)
            if isinstance(exc, StoreError):
                raise OutboxUnavailable(
                    f"the outbox cannot record this write ({exc}); nothing was sent"
                ) from exc
            raise
        return Intent(intent_id, entry, primary, okey)

    def done(self, intent: Intent) -> None:
        """The handler is through with this write (settled, failed or abandoned): the next
        write to the same record may go. Called once per intent, in the handler's `finally`."""
        if intent.turn:
            self.turns.give(intent.turn)

    async def settle(
        self, intent: Intent, route: Route, status: int, payload: bytes | None
    ) -> None:
        """After the primary answered: commit on 2xx (the worker is told), else discard."""
        if not 200 <= status < 300:
            await self._discard(intent)
            return
        entry, record = await self.worker.outcome(
            route, intent.entry, intent.primary, payload or b""
        )
        if not entry.order_key:
            entry = entry.with_(order_key=f"{route.name}:create:{intent.id}")
        try:
            await self.store.commit(intent.id, entry, record)
        except StoreError:
            return  # the intent stays; recovery resolves it with the primary's replayed answer
        if record is not None:
            self.worker.idmap.remember(record)
        self.worker.notify()

    async def note_create(self, route: Route, primary: Side, payload: bytes | None) -> None:
        """A create without dual-write: the record exists on `primary` only; the id map says so."""
        probe = OutboxEntry(
            route=route.name,
            method="POST",
            path=route.prefix,
            query="",
            body=b"",
            content_type="",
            target="old" if primary == "new" else "new",
            order_key="",
            record=None,
            request_id="",
            customer=None,
            created=time.time(),
            idempotency_key="",
            primary_key="",
        )
        _, record = await self.worker.outcome(route, probe, primary, payload or b"")
        if record is None:
            return
        try:
            await self.worker.idmap.put([record])
        except StoreError as exc:  # the client's write succeeded; only affinity is weaker
            log.warning("idmap_note_failed", route=route.name, error=str(exc))

    async def failed(self, intent: Intent, error: UpstreamError) -> None:
        """The primary failed: certainly not applied when it refused the connection; otherwise
        the outcome is unknown and the intent is left for recovery."""
        if isinstance(error, UpstreamRefused):
            await self._discard(intent)

    async def abandon(self, intent: Intent) -> None:
        """The handler stopped before an answer (client gone): leave it to recovery."""

    async def _discard(self, intent: Intent) -> None:
        # on failure, recovery asks the primary, which refuses again, and discards then
        with contextlib.suppress(StoreError):
            await self.store.discard(intent.id)
