"""Composition: every long-lived part of a cutover process, opened and closed in one place.

Start-up order is the order of `cleanup_ctx`; shutdown runs it in reverse, after aiohttp has
stopped accepting and let in-flight requests finish (STYLE.md §7):

    upstream sessions      opened first, closed last: everything below still sends through them
    outbox store           opened before the worker, closed after it
    outbox worker          sends what is ready for OUTBOX_FLUSH_TIMEOUT, leaves the rest durable
    shadow                 mirrors in flight get MIRROR_DRAIN_TIMEOUT; the diff log is flushed
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from proxy.config import RouteTable
from proxy.dualwrite.ids import IdMap
from proxy.dualwrite.journal import DualWrite
from proxy.dualwrite.model import IdEntry
from proxy.dualwrite.store import Store, open_store
from proxy.dualwrite.verify import Verifier
from proxy.dualwrite.worker import OutboxWorker
from proxy.mirror import MirrorDispatcher
from proxy.observe import CustomerHasher
from proxy.server import Proxy
from proxy.shadowing import RecordSink, Shadowing
from proxy.state import TableStore
from proxy.supervisor import Supervisor
from proxy.translate import Translator
from proxy.upstream import UpstreamClients
from shadow.difflog import DiffLogWriter
from shadow.stats import ShadowStats

log = structlog.get_logger("cutover.app")

MIRROR_DRAIN_TIMEOUT = 5.0
DIFF_LOG_CLOSE_TIMEOUT = 5.0
OUTBOX_FLUSH_TIMEOUT = 5.0

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
    supervisor: Supervisor = field(default_factory=lambda: Supervisor("cutover"))
    store: Store | None = None
    idmap: IdMap | None = None
    worker: OutboxWorker | None = None
    preload_ids: list[IdEntry] = field(default_factory=list)


def needs_store(table: RouteTable) -> bool:
    return any(r.spec.dual_write or r.ids is not None for r in table.routes)


def build(
    table: RouteTable,
    *,
    instance: str,
    sink: RecordSink | None = None,
    preload_ids: Iterable[IdEntry] = (),
) -> tuple[web.Application, Parts]:
    tables = TableStore(table)
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
    shadowing = Shadowing(
        clients, MirrorDispatcher(), ShadowStats(), hasher, sink=sink, translator=translator
    )
    proxy = Proxy(
        tables, clients, hasher=hasher, shadowing=shadowing, difflog=difflog, translator=translator
    )
    parts = Parts(
        instance, tables, clients, hasher, proxy, shadowing, difflog, preload_ids=list(preload_ids)
    )

    app = web.Application(client_max_size=table.spec.outbox.max_body)
    app[PARTS] = parts
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app.cleanup_ctx.append(_sessions(parts))
    app.cleanup_ctx.append(_outbox(parts))
    app.cleanup_ctx.append(_shadow(parts))
    return app, parts


def _sessions(parts: Parts) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        parts.clients.sync(parts.tables.table)
        yield
        await parts.proxy.supervisor.drain(timeout=10.0)
        await parts.clients.close()

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
        yield
        verifier.stop()
        await worker.stop(OUTBOX_FLUSH_TIMEOUT)
        task.cancel()
        await asyncio.gather(task, verifying, return_exceptions=True)
        await store.close()

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
