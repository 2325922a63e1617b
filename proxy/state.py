"""The running table, swapped atomically.

A request reads `store.table` once and uses that snapshot to the end, so a reload in the middle of
a request never mixes two configurations. Swapping is one reference assignment on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.config import RollbackKey, RouteTable

Listener = Callable[[RouteTable, RouteTable], None]


class TableStore:
    def __init__(self, table: RouteTable) -> None:
        self._table = table
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self._listeners: list[Listener] = []
        #: rollback flags from outside the file (the fleet's), read by every routing decision
        self.overlay: frozenset[RollbackKey] = frozenset()

    @property
    def table(self) -> RouteTable:
        return self._table

    def on_swap(self, listener: Listener) -> None:
        """Called with (old, new) after every swap, e.g. to open sessions for new upstreams."""
        self._listeners.append(listener)

    def swap(self, table: RouteTable) -> RouteTable:
        old, self._table = self._table, table
        self.loaded_at = time.time()
        self.last_error = None
        for listener in self._listeners:
            listener(old, table)
        return old
