"""Eventual state: read a written record back on both platforms after `verify_after`.

Platforms run automations after a write (SLA timers, assignment rules); what matters is what the
record looks like once they are done. One loop owns a bounded heap of due verifications, so a
burst of writes costs heap entries, not sleeping tasks; the reads themselves go through the
mirror dispatcher's budget like any secondary traffic (`Shadowing.verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.config.table import Route, RouteTable
from proxy.dualwrite.ids import IdMap
from proxy.dualwrite.model import IdEntry, OutboxEntry, key_text
from proxy.shadowing import Shadowing
from proxy.translate import Resolved

MAX_PENDING = 10_000


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    route: str = field(compare=False)
    entry: OutboxEntry = field(compare=False)
    record: IdEntry | None = field(compare=False)


class Verifier:
    def __init__(self, shadowing: Shadowing, idmap: IdMap, table: Callable[[], RouteTable]) -> None:
        self.shadowing = shadowing
        self.idmap = idmap
        self.table = table
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._stopping = False
        self.dropped = 0
        self.started = 0

    def schedule(self, route: Route, entry: OutboxEntry, record: IdEntry | None) -> None:
        """The worker's callback once the secondary confirmed a write."""
        delay = route.spec.verify_after
        if delay is None:
            return
        if len(self._heap) >= MAX_PENDING:
            self.dropped += 1
            return
        due = _Due(time.monotonic() + delay, next(self._seq), route.name, entry, record)
        heapq.heappush(self._heap, due)
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            while self._heap and self._heap[0].at <= now:
                await self._verify(heapq.heappop(self._heap))
            timeout = (self._heap[0].at - now) if self._heap else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.005))

    def stop(self) -> None:
        """Pending verifications are dropped: they are checks, not data."""
        self._stopping = True
        self._wake.set()

    async def _verify(self, due: _Due) -> None:
        table = self.table()
        route = table.route(due.route)
        if route is None or route.ids is None:
            return
        record = due.record
        if record is None and due.entry.record is not None:
            record = await self.idmap.find(due.entry.record.resource, due.entry.record.id)
        if record is None or record.old is None or record.new is None:
            return
        path = route.ids.prefix + key_text(record.old)
        resolved = Resolved(record, route.ids.span(path), key_text(record.old))
        if self.shadowing.verify(table, route, path, resolved, due.entry):
            self.started += 1
        else:
            self.dropped += 1
