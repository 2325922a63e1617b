"""Composition: every long-lived part of a cutover process, opened and closed in one place.

Start-up order is the order of `cleanup_ctx`; shutdown runs it in reverse, after the data
path's listener has stopped accepting and let in-flight requests finish (STYLE.md §7,
proxy/runner.py):

    upstream pools         opened first, closed last: everything below still sends through them
    outbox store           opened before the worker, closed after it
    outbox worker          sends what is ready for OUTBOX_FLUSH_TIMEOUT, leaves the rest durable
    shadow                 mirrors in flight get MIRROR_DRAIN_TIMEOUT; the diff log is flushed
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from proxy.config import RouteTable
from proxy.control.changes import Changes
from proxy.control.fleet import FleetLink
from proxy.control.guard import Guardian
from proxy.control.live import Control, atomic_write
from proxy.control.plan import PlanKeeper
from proxy.control.signing import KeyTooShort, key_from_env
from proxy.control.watch import watch
from proxy.dualwrite.ids import IdMap
from proxy.dualwrite.journal import DualWrite
from proxy.dualwrite.model import IdEntry
from proxy.dualwrite.store import Store, StoreError, open_store
from proxy.dualwrite.verify import Verifier
from proxy.dualwrite.worker import OutboxWorker
from proxy.idlegate import IdleGate
from proxy.metrics import export, sibling_path
from proxy.mirror import MirrorDispatcher
from proxy.observe import CustomerHasher
from proxy.server import Proxy
from proxy.shadowing import RecordSink, Shadowing
from proxy.state import TableStore
from proxy.supervisor import Supervisor
from proxy.telemetry import Telemetry
from proxy.translate import Translator
from proxy.upstream import UpstreamClients, close_pools
from shadow.difflog import DiffLogWriter
from shadow.stats import ShadowStats

log = structlog.get_logger("cutover.app")

MIRROR_DRAIN_TIMEOUT = 5.0
DIFF_LOG_CLOSE_TIMEOUT = 5.0
OUTBOX_FLUSH_TIMEOUT = 5.0
OUTBOX_REFRESH = 2.0
FLEET_SYNC_TIMEOUT = 3.0

PARTS: web.AppKey[Parts] = web.AppKey("parts")
Context = Callable[[web.Application], AsyncIterator[None]]


@dataclass
class Parts:
    """What one process is made of; tests and the admin API reach the parts through it."""

    instance: str
    tables: TableStore
    clients: UpstreamClients
    hasher: CustomerHasher
    proxy: Proxy
    shadowing: Shadowing
    difflog: DiffLogWriter | None
    control: Control
    telemetry: Telemetry
    supervisor: Supervisor = field(default_factory=lambda: Supervisor("cutover"))
    store: Store | None = None
    idmap: IdMap | None = None
    worker: OutboxWorker | None = None
    fleet: FleetLink | None = None
    fleet_key: bytes | None = None
    guardian: Guardian | None = None
    plans: PlanKeeper | None = None
    outbox_snapshot: dict[str, Any] | None = None  # refreshed in the background for /metrics
    worker_index: int = 0  # with `cutover run --workers N`: which one this process is
    workers: int = 1
    base_instance: str = ""  # the instance id without the worker suffix
    preload_ids: list[IdEntry] = field(default_factory=list)

    async def outbox_to(self, side: str) -> int | None:
        """Writes still on their way to `side` (None when there is no outbox)."""
        if self.store is None:
            return None
        try:
            stats = await self.store.stats()
        except StoreError:
            return None
        return stats.by_target.get(side, 0) + stats.intents

    async def state(self) -> dict[str, Any]:
        """The parts' own state for /admin/state and the console."""
        data: dict[str, Any] = {
            "shadow": self.shadowing.stats.snapshot(),
            "mirrors": self.shadowing.dispatcher.snapshot(),
            "noise": self.shadowing.noise_report(),
        }
        if self.difflog is not None:
            data["diff_log"] = {
                "written": self.difflog.written,
                "dropped": self.difflog.dropped,
                "errors": self.difflog.errors,
            }
        if self.store is not None:
            try:
                stats = await self.store.stats()
                data["outbox"] = {
                    "ready": stats.ready,
                    "intents": stats.intents,
                    "dead": stats.dead,
                    "oldest_age_s": stats.oldest_age_s,
                    "by_target": stats.by_target,
                }
            except StoreError as exc:
                data["outbox"] = {"error": str(exc)}
        if self.worker is not None:
            data["outbox_worker"] = self.worker.snapshot()
        if self.fleet is not None:
            data["fleet"] = self.fleet.snapshot()
        if self.guardian is not None:
            data["guards"] = self.guardian.snapshot()
            if self.plans is not None:
                data["plans"] = self.plans.snapshot(self.guardian.verdicts)
        return data


def needs_store(table: RouteTable) -> bool:
    return any(r.spec.dual_write or r.ids is not None for r in table.routes)


def build(
    table: RouteTable,
    *,
    instance: str,
    worker: int = 0,
    workers: int = 1,
    config_path: Path | None = None,
    sink: RecordSink | None = None,
    preload_ids: Iterable[IdEntry] = (),
) -> tuple[web.Application, Parts]:
    tables = TableStore(table)
    control = Control(tables, config_path, instance, table.resolve(table.spec.state_dir))
    clients = UpstreamClients()
    hasher = CustomerHasher(table.migration)
    difflog: DiffLogWriter | None = None
    if sink is None:
        spec = table.spec.diff_log
        difflog = DiffLogWriter(
            table.resolve(spec.dir), instance=instance, max_size=spec.max_size, keep=spec.keep
        )
        sink = difflog
    translator = Translator(None)
    telemetry = Telemetry(table)
    shadowing = Shadowing(
        clients,
        MirrorDispatcher(),
        ShadowStats(),
        hasher,
        sink=sink,
        translator=translator,
        telemetry=telemetry,
        gate=IdleGate(),
    )
    proxy = Proxy(
        tables,
        clients,
        hasher=hasher,
        shadowing=shadowing,
        difflog=difflog,
        translator=translator,
        telemetry=telemetry,
    )
    parts = Parts(
        instance,
        tables,
        clients,
        hasher,
        proxy,
        shadowing,
        difflog,
        control,
        telemetry,
        preload_ids=list(preload_ids),
        worker_index=worker,
        workers=workers,
        base_instance=instance.rsplit("-w", 1)[0] if workers > 1 else instance,
    )

    app = web.Application(client_max_size=table.spec.outbox.max_body)
    app[PARTS] = parts
    app.cleanup_ctx.append(_pools(parts))
    app.cleanup_ctx.append(_control(parts))
    app.cleanup_ctx.append(_fleet(parts))
    app.cleanup_ctx.append(_outbox(parts))
    app.cleanup_ctx.append(_guards(parts))
    app.cleanup_ctx.append(_shadow(parts))
    if workers > 1 and worker > 0:
        app.cleanup_ctx.append(_share_counters(parts))
    return app, parts


def _pools(parts: Parts) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        parts.clients.sync(parts.tables.table)
        yield
        await parts.proxy.supervisor.drain(timeout=10.0)
        await parts.clients.close()

    return ctx


def _control(parts: Parts) -> Context:
    """Reloads: the file watched, and every swap re-syncing the upstream pools (pools of
    upstreams that changed are closed once requests that may still use them are done)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        def swapped(old: RouteTable, new: RouteTable) -> None:
            parts.telemetry.retable(new)
            # pools of upstreams that changed: idle connections close now, busy ones as soon
            # as the request on them is done
            close_pools(parts.clients.sync(new))

        parts.tables.on_swap(swapped)
        watcher = None
        if parts.control.path is not None:
            watcher = parts.supervisor.spawn(watch(parts.control), name="config-watch")
        yield
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    return ctx


def _fleet(parts: Parts) -> Context:
    """Fleet control over MQTT, when routes.yaml has an mqtt section and the key is set.
    Without it (or with the broker down) the instance runs on its file."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        spec = parts.tables.table.spec.mqtt
        if spec is None:
            yield
            return
        try:
            key = key_from_env(spec.key_env)
        except KeyTooShort as exc:
            key = None
            log.error("fleet_disabled", reason=str(exc))
        if key is None:
            log.error(
                "fleet_disabled",
                reason=f"${spec.key_env} is not set: fleet control "
                "messages could not be verified; running on routes.yaml alone",
            )
            yield
            return

        def extra() -> dict[str, Any]:
            worker = parts.worker
            return {"outbox_to_old": worker.queued_to("old") if worker is not None else 0}

        link = FleetLink(parts.control, spec, key=key, extra_status=extra)
        parts.fleet, parts.fleet_key = link, key
        task = parts.supervisor.spawn(link.run(), name="fleet-link")
        # the data path opens after this: a rollback published while the instance was away
        # applies before its first request (bounded: with the broker down, the file rules)
        try:
            await asyncio.wait_for(link.synced.wait(), timeout=FLEET_SYNC_TIMEOUT)
        except TimeoutError:
            log.warning(
                "fleet_not_synced_at_start",
                waited_s=FLEET_SYNC_TIMEOUT,
                running_on="routes.yaml and the saved fleet state",
            )
        yield
        await link.stop()  # goodbye: the retained status says offline
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx


def _outbox(parts: Parts) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        table = parts.tables.table
        if not needs_store(table):
            yield
            return
        store = open_store(
            table.spec.store,
            table.base_dir,
            partitions=table.spec.outbox.partitions,
            migration=table.migration,
        )
        await store.open()
        idmap = IdMap(store)
        if parts.preload_ids:
            await idmap.put(parts.preload_ids)
        verifier = Verifier(parts.shadowing, idmap, lambda: parts.tables.table)
        worker = OutboxWorker(
            store,
            lambda: parts.tables.table,
            parts.clients,
            idmap,
            owner=parts.instance,
            verify=verifier.schedule,
        )
        parts.store, parts.idmap, parts.worker = store, idmap, worker
        parts.proxy.translator.idmap = idmap
        parts.shadowing.translator.idmap = idmap
        parts.proxy.dual = DualWrite(store, worker, await store.instance_salt(), table)
        task = parts.supervisor.spawn(worker.run(), name="outbox-worker")
        verifying = parts.supervisor.spawn(verifier.run(), name="verifier")
        refreshing = parts.supervisor.spawn(_refresh_outbox(parts, store), name="outbox-figures")
        yield
        verifier.stop()
        refreshing.cancel()
        await worker.stop(OUTBOX_FLUSH_TIMEOUT)
        task.cancel()
        await asyncio.gather(task, verifying, refreshing, return_exceptions=True)
        await store.close()

    return ctx


def _guards(parts: Parts) -> Context:
    """Guards and plans: evaluated every guard interval, acting through Changes."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        spec = parts.tables.table.spec.mqtt if parts.fleet is not None else None
        changes = Changes(parts.control, spec, parts.fleet_key)
        guardian = Guardian(parts.control, parts.telemetry, changes)
        plans = PlanKeeper(parts.control, changes)
        guardian.after_tick.append(plans.on_tick)
        parts.guardian, parts.plans = guardian, plans
        task = parts.supervisor.spawn(guardian.run(), name="guards")
        yield
        guardian.stop()
        await asyncio.gather(task, return_exceptions=True)

    return ctx


async def _refresh_outbox(parts: Parts, store: Store) -> None:
    """Keeps the outbox figures /metrics shows (a scrape must not wait on the store)."""
    while True:
        try:
            stats = await store.stats()
            parts.outbox_snapshot = {
                "ready": stats.ready,
                "intents": stats.intents,
                "dead": stats.dead,
                "by_target": stats.by_target,
                "oldest_age_s": stats.oldest_age_s,
            }
        except StoreError:
            parts.outbox_snapshot = None
        await asyncio.sleep(OUTBOX_REFRESH)


def _share_counters(parts: Parts) -> Context:
    """A worker other than 0 writes its counters every second for worker 0's /metrics."""

    async def share() -> None:
        path = sibling_path(parts, parts.worker_index)
        while True:
            try:
                atomic_write(path, export(parts))
            except OSError as exc:
                log.warning("counters_not_shared", path=str(path), error=str(exc))
            await asyncio.sleep(1.0)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = parts.supervisor.spawn(share(), name="share-counters")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx


def _shadow(parts: Parts) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if parts.difflog is not None:
            parts.difflog.start()
        yield
        await parts.shadowing.dispatcher.drain(timeout=MIRROR_DRAIN_TIMEOUT)
        parts.shadowing.close()
        if parts.difflog is not None:
            writer = parts.difflog
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: writer.close(timeout=DIFF_LOG_CLOSE_TIMEOUT)
            )

    return ctx
