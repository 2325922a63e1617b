"""The outbox worker: replays committed writes to the secondary, in order per record.

It holds leases on partitions (SQLite: the one partition), keeps the partitions' ready entries
in per-record queues in memory (a bounded window), and sends only the head of each queue, so a
record's writes land in the order the primary accepted them while different records proceed in
parallel. A failed try is rescheduled with backoff and jitter; while a target refuses
connections, the whole target pauses. Intents whose outcome is unknown (cutover died while the
primary was answering) are recovered by asking the primary again with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from multidict import CIMultiDict

from proxy.config.spec import OutboxSpec, Side
from proxy.config.table import Route, RouteTable, Upstream
from proxy.dualwrite.ids import IdMap
from proxy.dualwrite.model import IdEntry, OutboxEntry, id_json, key_text, order_key
from proxy.dualwrite.store import Store, StoreError
from proxy.errors import UpstreamConnectError, UpstreamError
from proxy.headers import MIRROR, REQUEST_ID
from proxy.routing import other_side
from proxy.supervisor import Supervisor
from proxy.translate import Resolved, Translator, Unresolved
from proxy.upstream import UpstreamClients

log = structlog.get_logger("cutover.outbox")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
LEASE_TTL = 15.0
POLL_INTERVAL = 0.25
WINDOW = 10_000  # ready entries held in memory per partition
TARGET_PAUSE_MAX = 5.0  # also the longest a recovered target waits to be noticed
Verify = Callable[[Route, OutboxEntry, IdEntry | None], None]
#: why an intent has no outcome: its journal entry never got one (an operator reads this in
#: the dead letters; with Redis as the store, a Redis outage while the primary answered looks
#: the same as cutover stopping then)
UNSEEN = "the primary's answer was never recorded: cutover stopped, or could not reach its store"


@dataclass(slots=True)
class Attempt:
    """How one try of one entry ended."""

    ok: bool
    retry: bool = False
    reason: str = ""
    connection: bool = False  # the target could not be reached at all
    record: IdEntry | None = None  # for a create: the record with both ids


@dataclass
class WorkerStats:
    sent: int = 0
    failed: int = 0
    dead: int = 0
    recovered: int = 0
    lag_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    by_reason: Counter[str] = field(default_factory=Counter)


def backoff(attempts: int, spec: OutboxSpec, rng: random.Random) -> float:
    """Exponential with full jitter: spreads retries after an outage instead of a stampede."""
    ceiling = min(spec.backoff_max, spec.backoff_min * (2.0 ** max(attempts - 1, 0)))
    return float(spec.backoff_min + rng.random() * max(ceiling - spec.backoff_min, 0.0))


class OutboxWorker:
    def __init__(
        self,
        store: Store,
        table: Callable[[], RouteTable],
        clients: UpstreamClients,
        idmap: IdMap,
        *,
        owner: str,
        supervisor: Supervisor | None = None,
        verify: Verify | None = None,
    ) -> None:
        self.store = store
        self.table = table
        self.clients = clients
        self.idmap = idmap
        self.translator = Translator(idmap)
        self.owner = owner
        self.supervisor = supervisor or Supervisor("outbox")
        self.verify = verify
        self.stats = WorkerStats()
        self._wake = asyncio.Event()
        self._stopping = False
        self._queues: dict[str, deque[OutboxEntry]] = {}
        self._partition_of: dict[str, int] = {}
        self._cursor: dict[int, str | None] = {}
        self._held: list[int] = []
        self._in_flight: set[str] = set()
        self._loaded: Counter[int] = Counter()
        self._paused_until: dict[str, float] = {}
        self._pause_s: dict[str, float] = {}
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        self._idle = asyncio.Event()

    @property
    def spec(self) -> OutboxSpec:
        return self.table().spec.outbox

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued_to(self, target: str) -> int:
        """Writes loaded and waiting for `target` (what a rollback toward it still waits for)."""
        return sum(1 for queue in self._queues.values() for e in queue if e.target == target)

    def notify(self) -> None:
        """A write was committed here: look now instead of at the next poll."""
        self._wake.set()

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        last_claim = 0.0
        last_recovery = 0.0
        while not self._stopping:
            now = time.monotonic()
            try:
                if now - last_claim > LEASE_TTL / 3:
                    await self._claim()
                    last_claim = now
                if now - last_recovery > max(self.spec.intent_timeout / 2, 1.0):
                    last_recovery = now
                    await self._recover()
                await self._load()
            except StoreError as exc:
                log.warning("outbox_store_unavailable", error=str(exc))
            self._dispatch()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sleep())

    def _sleep(self) -> float:
        now = time.time()
        soonest = POLL_INTERVAL
        for queue in self._queues.values():
            head = queue[0]
            if head.id not in self._in_flight and head.next_at > now:
                soonest = min(soonest, head.next_at - now)
        return max(soonest, 0.005)

    async def _claim(self) -> None:
        held = await self.store.claim(self.owner, LEASE_TTL)
        for lost in set(self._held) - set(held):
            self._forget(lost)
        for gained in set(held) - set(self._held):
            self._cursor[gained] = None
        self._held = held

    def _forget(self, partition: int) -> None:
        for okey in [k for k, p in self._partition_of.items() if p == partition]:
            queue = self._queues.get(okey)
            if queue and queue[0].id in self._in_flight:
                continue  # its send finishes; the next owner re-reads what is left
            self._queues.pop(okey, None)
            self._partition_of.pop(okey, None)
        self._cursor.pop(partition, None)
        self._loaded.pop(partition, None)

    async def _load(self) -> None:
        for partition in self._held:
            room = WINDOW - self._loaded[partition]
            if room <= 0:
                continue
            batch = await self.store.ready(partition, self._cursor.get(partition), min(room, 1000))
            for entry in batch:
                self._queues.setdefault(entry.order_key, deque()).append(entry)
                self._partition_of[entry.order_key] = partition
                self._loaded[partition] += 1
            if batch:
                self._cursor[partition] = batch[-1].id

    def _dispatch(self) -> None:
        now = time.time()
        limit = self.spec.concurrency
        for okey, queue in list(self._queues.items()):
            if len(self._in_flight) >= limit:
                return
            head = queue[0]
            if head.id in self._in_flight or head.next_at > now:
                continue
            if self._paused_until.get(head.target, 0.0) > now:
                continue
            self._in_flight.add(head.id)
            self.supervisor.spawn(self._send_one(okey, head), name=f"outbox:{head.id}")

    # --- one entry -------------------------------------------------------------------------

    async def _send_one(self, okey: str, entry: OutboxEntry) -> None:
        try:
            attempt = await self._attempt(entry)
            await self._settle(okey, entry, attempt)
        except StoreError as exc:
            log.warning("outbox_store_unavailable", error=str(exc), entry=entry.id)
        finally:
            self._in_flight.discard(entry.id)
            if not self._in_flight:
                self._idle.set()
            self._wake.set()

    async def _settle(self, okey: str, entry: OutboxEntry, attempt: Attempt) -> None:
        spec = self.spec
        if attempt.ok:
            if attempt.record is not None:
                await self.idmap.put([attempt.record])
            await self.store.complete(entry)
            self._pop(okey, entry)
            self.stats.sent += 1
            self.stats.lag_ms.append((time.time() - entry.created) * 1000)
            if self._pause_s.pop(entry.target, None) is not None:
                self._paused_until.pop(entry.target, None)
                self._wake_backlog(entry.target)
            if self.verify is not None:
                route = self.table().route(entry.route)
                if route is not None and route.spec.verify_after:
                    self.verify(route, entry, attempt.record)
            return
        self.stats.failed += 1
        self.stats.by_reason[attempt.reason.split(":", 1)[0]] += 1
        attempts = entry.attempts + 1
        if attempt.connection:
            self._pause(entry.target)
        if attempt.retry and attempts < spec.max_attempts:
            delay = backoff(attempts, spec, self._rng)
            updated = entry.with_(
                attempts=attempts, next_at=time.time() + delay, last_error=attempt.reason
            )
            await self.store.reschedule(updated)
            self._replace_head(okey, updated)
            return
        reason = (
            attempt.reason
            if not attempt.retry
            else f"gave up after {attempts} tries: {attempt.reason}"
        )
        await self.store.dead_letter(
            entry.with_(attempts=attempts, last_error=attempt.reason), reason
        )
        self._pop(okey, entry)
        self.stats.dead += 1
        log.warning(
            "outbox_dead_letter",
            entry=entry.id,
            route=entry.route,
            target=entry.target,
            request_id=entry.request_id,
            reason=reason,
        )

    def _wake_backlog(self, target: str) -> None:
        """The target answers again: what waited out its own backoff during the outage goes
        now, instead of each record sleeping until its timer (replay at full speed)."""
        now = time.time()
        woken = 0
        for queue in self._queues.values():
            head = queue[0]
            if head.target == target and head.next_at > now and head.id not in self._in_flight:
                queue[0] = head.with_(next_at=now)
                woken += 1
        if woken:
            log.info("outbox_target_back", target=target, woken=woken)
            self._wake.set()

    def _pause(self, target: str) -> None:
        pause = min(
            max(self._pause_s.get(target, 0.0) * 2, self.spec.backoff_min), TARGET_PAUSE_MAX
        )
        self._pause_s[target] = pause
        self._paused_until[target] = time.time() + pause

    def _pop(self, okey: str, entry: OutboxEntry) -> None:
        queue = self._queues.get(okey)
        if queue and queue[0].id == entry.id:
            queue.popleft()
            partition = self._partition_of.get(okey)
            if partition is not None:
                self._loaded[partition] -= 1
            if not queue:
                del self._queues[okey]
                self._partition_of.pop(okey, None)

    def _replace_head(self, okey: str, entry: OutboxEntry) -> None:
        queue = self._queues.get(okey)
        if queue and queue[0].id == entry.id:
            queue[0] = entry

    async def _attempt(self, entry: OutboxEntry) -> Attempt:
        table = self.table()
        route = table.route(entry.route)
        if route is None:
            return Attempt(False, reason=f"route {entry.route!r} is no longer in routes.yaml")
        upstream = table.upstream(entry.target, route.api)
        resolved = Resolved()
        if route.ids is not None and entry.record is not None:
            record = await self.idmap.find(entry.record.resource, entry.record.id)
            if record is None:
                return Attempt(
                    False,
                    reason=f"{entry.record.resource} {entry.record.id} is unknown to the id map",
                )
            if record.id_on(entry.target) is None:
                return Attempt(
                    False,
                    reason=f"{entry.record.resource} {entry.record.id} exists on "
                    f"{record.only_on} only (created while dual-write was off, or its create "
                    "is a dead letter)",
                )
            resolved = Resolved(record, route.ids.span(entry.path), entry.record.id)
        target = await self.translator.path_on(
            route, entry.target, entry.path, entry.query, resolved
        )
        assert target is not None
        try:
            body = await self._body(route, entry, entry.target)
        except Unresolved as exc:
            return Attempt(False, retry=True, reason=f"unresolved reference: {exc}")
        headers = self._headers(route, upstream, entry, entry.idempotency_key, "dual-write")
        return await self._send(route, upstream, entry, target, headers, body)

    async def _body(self, route: Route, entry: OutboxEntry, side: Side) -> bytes:
        if not entry.body or "json" not in entry.content_type.lower():
            return entry.body
        if not self.translator.translates_request(route, side):
            return entry.body
        try:
            doc = orjson.loads(entry.body)
        except orjson.JSONDecodeError:
            return entry.body
        return orjson.dumps(await self.translator.request_doc(route, side, doc))

    def _headers(
        self, route: Route, upstream: Upstream, entry: OutboxEntry, key: str, mirror: str | None
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(upstream.headers)
        if entry.content_type:
            headers["Content-Type"] = entry.content_type
        headers["Idempotency-Key"] = key
        headers[REQUEST_ID] = entry.request_id
        if mirror is not None:
            headers[MIRROR] = mirror
            for name, value in route.spec.mirror_headers.items():
                headers[name] = value
        return headers

    async def _send(
        self,
        route: Route,
        upstream: Upstream,
        entry: OutboxEntry,
        target: str,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> Attempt:
        try:
            async with asyncio.timeout(upstream.timeout * 2):
                async with self.clients.request(
                    upstream, "secondary", entry.method, target, headers, body or None
                ) as answer:
                    payload = await answer.read()
                    status = answer.status
        except TimeoutError:
            return Attempt(False, retry=True, reason="timeout", connection=False)
        except UpstreamError as exc:
            return Attempt(
                False,
                retry=True,
                reason=f"{exc.kind}: {exc.detail}",
                connection=isinstance(exc, UpstreamConnectError),
            )
        if 200 <= status < 300:
            record = None
            if entry.is_create and route.ids is not None:
                record = await self._created(route, entry, payload)
            return Attempt(True, record=record)
        reason = f"{status}: {_detail(payload)}"
        retry = status >= 500 or status in RETRYABLE_STATUS
        return Attempt(False, retry=retry, reason=reason)

    async def _created(self, route: Route, entry: OutboxEntry, payload: bytes) -> IdEntry | None:
        """Both platforms now hold the record: its ids on both sides, for the id map."""
        assert route.ids is not None
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if entry.target == "new" and route.contract is not None:
            doc = route.contract.body_to_old(doc, copy=False)
        made = self.translator.id_in_answer(route, doc)
        if made is None or entry.primary_id is None:
            return None
        primary: Side = other_side(entry.target)
        ids = {primary: entry.primary_id, entry.target: id_json(made)}
        return IdEntry(route.ids.resource, ids.get("old"), ids.get("new"), origin=primary)

    # --- recovery of intents ---------------------------------------------------------------

    async def _recover(self) -> None:
        """Only the process holding a lease recovers (one worker of several sharing a store)."""
        if not self._held:
            return
        spec = self.spec
        for intent in await self.store.intents(time.time() - spec.intent_timeout):
            if self._stopping:
                return
            await self.recover(intent)

    async def recover(self, intent: OutboxEntry) -> None:
        """The primary's answer to this write was never seen: ask it again with the same key.

        Only while nothing newer was committed for the same record: re-sending an older write
        that the primary never applied would put it on top of the newer one. Such an intent
        becomes a dead letter instead (the newer write already reaches both platforms)."""
        table = self.table()
        route = table.route(intent.route)
        primary: Side = other_side(intent.target)
        reason = None
        if route is None or self.spec.recover == "dead-letter":
            reason = f"outcome unknown: {UNSEEN}"
        elif intent.order_key:
            last = await self.store.last_commit(intent.order_key)
            if last is not None and last > intent.created:
                reason = (
                    f"outcome unknown ({UNSEEN}) and a newer write to the same record "
                    "followed; not re-sent, so as not to undo it"
                )
        if reason is not None or route is None:
            await self._bury(intent, reason or "route removed")
            return
        upstream = table.upstream(primary, route.api)
        resolved = Resolved()
        if route.ids is not None and intent.record is not None:
            record = await self.idmap.find(intent.record.resource, intent.record.id)
            if record is not None:
                resolved = Resolved(record, route.ids.span(intent.path), intent.record.id)
        target = await self.translator.path_on(route, primary, intent.path, intent.query, resolved)
        if target is None:
            return
        try:
            body = await self._body(route, intent, primary)
        except Unresolved:
            return
        headers = self._headers(route, upstream, intent, intent.primary_key, None)
        try:
            async with asyncio.timeout(upstream.timeout * 2):
                async with self.clients.request(
                    upstream, "secondary", intent.method, target, headers, body or None
                ) as answer:
                    payload = await answer.read()
                    status = answer.status
        except (TimeoutError, UpstreamError):
            return  # try again next round
        if status >= 500 or status in RETRYABLE_STATUS:
            return
        try:
            if not 200 <= status < 300:
                await self.store.discard(intent.id)
                return
            ready, record = await self.outcome(route, intent, primary, payload)
            await self.store.commit(intent.id, ready, record)
        except StoreError:
            return  # another instance resolved it first
        self.stats.recovered += 1
        log.info("outbox_intent_recovered", entry=intent.id, route=intent.route, status=status)
        self.notify()

    async def _bury(self, intent: OutboxEntry, reason: str) -> None:
        okey = intent.order_key or f"{intent.route}:unknown:{intent.id}"
        try:
            ready_id = await self.store.commit(intent.id, intent.with_(order_key=okey), None)
            await self.store.dead_letter(intent.with_(id=ready_id), reason)
        except StoreError:
            return  # resolved elsewhere
        self.stats.dead += 1
        log.warning("outbox_intent_buried", entry=intent.id, route=intent.route, reason=reason)

    async def outcome(
        self, route: Route, entry: OutboxEntry, primary: Side, payload: bytes
    ) -> tuple[OutboxEntry, IdEntry | None]:
        """The ready entry for a write the primary accepted (a create learns its record's id)."""
        if not entry.is_create or route.ids is None:
            return entry, None
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = None
        if primary == "new" and route.contract is not None and doc is not None:
            doc = route.contract.body_to_old(doc, copy=False)
        made = self.translator.id_in_answer(route, doc)
        if made is None:
            okey = f"{route.name}:create:{entry.request_id}"
            return entry.with_(order_key=okey), None
        text = id_json(made)
        ids = {primary: text}
        record = IdEntry(route.ids.resource, ids.get("old"), ids.get("new"), origin=primary)
        okey = order_key(route.ids.resource, primary, key_text(text))
        return entry.with_(order_key=okey, primary_id=text), record

    # --- shutdown --------------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Take nothing new; give sends in flight `timeout` to finish. The rest stays durable."""
        self._stopping = True
        self._wake.set()
        if self._in_flight:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        await self.supervisor.drain(timeout=1.0)
        with contextlib.suppress(StoreError):
            await self.store.release(self.owner)

    def snapshot(self) -> dict[str, Any]:
        lags = sorted(self.stats.lag_ms)

        def pct(q: float) -> float | None:
            return round(lags[min(int(q * len(lags)), len(lags) - 1)], 1) if lags else None

        return {
            "sent": self.stats.sent,
            "failed": self.stats.failed,
            "dead": self.stats.dead,
            "recovered": self.stats.recovered,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "partitions": list(self._held),
            "lag_ms_p50": pct(0.5),
            "lag_ms_p99": pct(0.99),
            "paused_targets": {
                t: round(u - time.time(), 2)
                for t, u in self._paused_until.items()
                if u > time.time()
            },
            "failures_by_reason": dict(self.stats.by_reason),
        }


def _detail(payload: bytes) -> str:
    """The platform's own words for a refusal (problem+json detail), shortened."""
    try:
        doc: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode("utf-8", "replace")
    if isinstance(doc, dict):
        text = " ".join(str(doc[k]) for k in ("title", "detail") if k in doc)
        return text[:300] or str(doc)[:300]
    return str(doc)[:300]
