"""Comparisons wait for a pass of the event loop in which no client request is handled.

Shadow reads share the event loop with the client's requests, and comparing two answers and
writing the diff record (~50-100 µs) delays every client request whose bytes arrive while it
runs. When several secondary answers arrive together, their comparisons ran back to back and
held the loop for over a millisecond (bench/README.md, the secondary-slow target).

So each comparison asks `turn()` first, and is let through:
  - when no client request is being handled (`enter`/`leave`, called by the HTTP server), and
    no other piece was let through in this pass of the loop: a client request then waits for one
    comparison at most, never a clump, since the loop polls its sockets between passes;
  - or once it has waited `max_delay`, whatever the load, so that a busy proxy still compares
    (then all overdue pieces go together, as they would without the gate).

At 1 000 requests/s the proxy is idle most of the time and the comparisons fill those gaps one
at a time. Sending the secondary request is not gated: a waiting job holds its mirror slot, and
at saturation that took cutover-shadow from ~7 500 to ~4 300 requests/s (bench/README.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

#: how long a piece of secondary work may wait for an idle pass
MAX_DELAY = 0.005
#: client requests in flight from which comparisons no longer wait: see IdleGate.turn
CROWD = 8


class IdleGate:
    def __init__(self, max_delay: float = MAX_DELAY, crowd: int = CROWD) -> None:
        self.max_delay = max_delay
        self.crowd = crowd
        self.busy = 0  # client requests being handled
        # pieces that had to wait, by how they were let through (cutover_secondary_deferred)
        self.idle = 0
        self.overdue = 0
        self.crowded = 0  # let through at once: `crowd` client requests or more in flight
        self._waiting: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._used = False  # a piece ran in this pass of the loop
        self._pump_due = False
        self._timer: asyncio.TimerHandle | None = None

    # -- the HTTP server's side ---------------------------------------------------------------

    def enter(self) -> None:
        self.busy += 1

    def leave(self) -> None:
        self.busy -= 1
        if self.busy == 0 and self._waiting:
            self._schedule_pump()

    # -- the secondary work's side ------------------------------------------------------------

    async def turn(self) -> None:
        """Return when this piece may run (see the module's docstring).

        With `crowd` client requests or more in flight there is no idle pass to wait for (a
        saturated proxy, or slow primaries that keep requests open): waiting would only hold the
        comparison back and release it in a batch with others, for some µs of bookkeeping each:
        cutover-shadow at saturation went from 6 517 to 7 600-7 900 requests/s when such pieces
        went at once (bench/README.md)."""
        if not self.at_once():
            await self.wait()

    def at_once(self) -> bool:
        """True (and counted) when a piece may run now, without waiting: the loop is idle and
        no piece ran in this pass, or `crowd` client requests are in flight (see turn). The
        caller waits (`wait`) only otherwise: most pieces need no coroutine for the gate."""
        busy = self.busy
        if busy == 0 and not self._used and not self._waiting:
            self._use_pass()
            return True
        if busy >= self.crowd:
            self.crowded += 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for an idle pass of the loop, or `max_delay` (after `at_once` said no)."""
        since = time.monotonic()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((since, future))
        while True:
            self._schedule_pump()
            try:
                await future
            except asyncio.CancelledError:
                future.cancel()  # the pump skips it
                raise
            # decided here, in the pass it runs in: the loop has polled its sockets since the
            # pump woke it, so a client request that came meanwhile is counted by now
            if time.monotonic() - since >= self.max_delay:
                self.overdue += 1
                break
            if self.busy == 0 and not self._used:
                self.idle += 1
                break
            future = loop.create_future()
            self._waiting.appendleft((since, future))  # still the oldest
        self._use_pass()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def counts(self) -> dict[str, int]:
        """Pieces not let through on the spot by an idle loop, by how they went (the metric
        cutover_secondary_deferred_total): after waiting (idle, overdue), or crowded."""
        return {"idle": self.idle, "overdue": self.overdue, "crowded": self.crowded}

    # -- inside ---------------------------------------------------------------------------------

    def _use_pass(self) -> None:
        if not self._used:
            self._used = True
            asyncio.get_running_loop().call_soon(self._new_pass)

    def _new_pass(self) -> None:
        # scheduled in the pass where a piece ran, so it runs first in the next pass, after the
        # loop has polled its sockets: a client request that came meanwhile is counted by now
        self._used = False

    def _schedule_pump(self) -> None:
        if not self._pump_due:
            self._pump_due = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_due = False
        waiting = self._waiting
        while waiting and waiting[0][1].done():  # cancelled while waiting
            waiting.popleft()
        if not waiting:
            return
        now = time.monotonic()
        due = now - self.max_delay
        if waiting[0][0] <= due:  # overdue: these go now, busy or not
            while waiting and waiting[0][0] <= due:
                _, future = waiting.popleft()
                if not future.done():
                    future.set_result(None)
        elif self.busy == 0 and not self._used:
            _, future = waiting.popleft()
            future.set_result(None)
        if not waiting:
            return
        if self.busy == 0:
            self._schedule_pump()  # the next pass
        else:  # `leave` pumps when the data path goes idle; the timer when the oldest is due
            self._arm_timer(waiting[0][0] + self.max_delay - now)

    def _arm_timer(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if self._timer is not None:
            if self._timer.when() <= when:
                return  # an earlier pump is due anyway
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule_pump()
