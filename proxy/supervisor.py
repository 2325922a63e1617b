"""The one owner of cutover's background tasks.

Every task has a name, is tracked until it ends, and is drained (waited for, then cancelled) at
shutdown. A task that fails is logged, never lost. Nothing else in cutover calls create_task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger("cutover.supervisor")


class Supervisor:
    def __init__(self, name: str = "cutover") -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._closing:
            coro.close()
            raise RuntimeError(f"{self.name} is shutting down; refusing new task {name}")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    @property
    def closing(self) -> bool:
        return self._closing

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> int:
        """Stop taking tasks, wait up to `timeout` for the running ones, cancel the rest.
        Returns how many had to be cancelled."""
        self._closing = True
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
            log.warning(
                "tasks_cancelled",
                supervisor=self.name,
                count=len(pending),
                tasks=sorted(t.get_name() for t in pending)[:20],
            )
        return len(pending)
