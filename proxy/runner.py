"""Running one cutover process: listeners up, signals wired, shutdown in the written order.

Shutdown order (STYLE.md §7), carried by the data path's HttpServer, then the app's cleanup
contexts (aiohttp's runner runs them; it serves nothing itself):
  1. stop accepting (the listening socket closed, idle keep-alive connections closed)
  2. finish in-flight requests (bounded by SHUTDOWN_TIMEOUT)
  3. drain mirrors, flush the outbox, say goodbye on MQTT (cleanup contexts, in reverse)
  4. close the upstream pools (the first cleanup context, so the last to close)
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import re
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.http_parser
import structlog
from aiohttp import web

from proxy.app import Parts, build
from proxy.config import RouteTable, load_config
from proxy.config.units import split_host_port
from proxy.control import console
from proxy.control.admin import AdminContext
from proxy.dualwrite.model import IdEntry
from proxy.http1.server import HttpServer, Limits
from proxy.metrics import exposition
from proxy.server import Proxy
from proxy.shadowing import RecordSink
from proxy.state import TableStore

log = structlog.get_logger("cutover.runner")

SHUTDOWN_TIMEOUT = 30.0


def compiled_parser_in_use() -> bool:
    """aiohttp's pure-Python HTTP parser has had smuggling bugs the C one didn't (PITFALLS.md)."""
    return aiohttp.http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a declared dependency
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


@dataclass
class Running:
    """A started instance: what tests and the demo need to reach it."""

    table: RouteTable
    store: TableStore
    proxy: Proxy
    runner: web.AppRunner  # the parts' lifecycle (cleanup contexts); serves nothing
    server: HttpServer
    port: int
    parts: Parts
    admin: web.AppRunner | None = None
    admin_port: int | None = None
    admin_context: AdminContext | None = None

    async def stop(self) -> None:
        if self.admin_context is not None:
            self.admin_context.ready = False  # /readyz says so before anything closes
        unfinished = await self.server.shutdown(SHUTDOWN_TIMEOUT)
        if unfinished:
            log.warning("requests_cut_at_shutdown", count=unfinished, timeout_s=SHUTDOWN_TIMEOUT)
        await self.runner.cleanup()
        if self.admin is not None:
            await self.admin.cleanup()


def limits_of(table: RouteTable) -> Limits:
    spec = table.spec.server
    return Limits(
        max_body=spec.max_body,
        max_header_bytes=spec.max_header_bytes,
        max_headers=spec.max_headers,
        max_connections=spec.max_connections,
        max_in_flight=spec.max_in_flight,
        header_timeout=spec.header_timeout,
        body_timeout=spec.body_timeout,
        keepalive_timeout=spec.keepalive_timeout,
    )


def unwritable_dirs(table: RouteTable) -> list[str]:
    """The folders cutover must write to, created now; what cannot be written, said.

    The state directory keeps the fleet's rollback flags, plan progress and the audit list, so
    a volume mounted read-only or owned by another uid must stop the start, not surface at the
    first rollback that cannot be saved."""
    problems = []
    for what, path in (
        ("state_dir", table.resolve(table.spec.state_dir)),
        ("diff_log.dir", table.resolve(table.spec.diff_log.dir)),
    ):
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            problems.append(f"{what} {path} is not writable: {exc.strerror or exc}")
    return problems


def instance_id(table: RouteTable) -> str:
    """Stable across restarts of the same instance (its diff log and fleet status keep their
    names): $CUTOVER_INSTANCE_ID, else host name and port."""
    explicit = os.environ.get("CUTOVER_INSTANCE_ID")
    if explicit:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", explicit)[:100]
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:60] or "cutover"
    return f"{host}-{split_host_port(table.spec.listen)[1]}"


def admin_token(table: RouteTable) -> str | None:
    name = table.spec.admin.token_env
    token = os.environ.get(name) if name else None
    return token or None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def start(
    table: RouteTable,
    *,
    config_path: Path | None = None,
    reuse_port: bool = False,
    sink: RecordSink | None = None,
    preload_ids: Iterable[IdEntry] = (),
    worker: int = 0,
    workers: int = 1,
) -> Running:
    instance = instance_id(table) + (f"-w{worker}" if workers > 1 else "")
    app, parts = build(
        table,
        instance=instance,
        worker=worker,
        workers=workers,
        config_path=config_path,
        sink=sink,
        preload_ids=preload_ids,
    )
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()  # the parts start: pools, store, outbox worker, fleet link, ...
    host, port = split_host_port(table.spec.listen)
    server = HttpServer(parts.proxy.handle, limits_of(table), gate=parts.shadowing.gate)
    parts.tables.on_swap(lambda old, new: server.set_limits(limits_of(new)))
    try:
        bound = await server.start(host, port, reuse_port=reuse_port or workers > 1)
    except OSError:
        await runner.cleanup()
        raise
    running = Running(table, parts.tables, parts.proxy, runner, server, bound, parts)
    if worker == 0:  # with --workers N, the admin API and /metrics live in worker 0
        await _start_admin(running, table)
    log.info(
        "listening",
        address=f"{host}:{bound}",
        admin=f"{split_host_port(table.spec.admin.listen)[0]}:{running.admin_port}"
        if running.admin_port
        else None,
        version=table.version,
        migration=table.migration,
        routes=len(table.routes),
        instance=parts.instance,
    )
    return running


async def _start_admin(running: Running, table: RouteTable) -> None:
    """The admin listener, only with a token, or on loopback with admin.insecure_no_auth."""
    spec = table.spec.admin
    host, port = split_host_port(spec.listen)
    token = admin_token(table)
    if token is None and not (spec.insecure_no_auth and _loopback(host)):
        log.error(
            "admin_disabled",
            reason=f"no admin token: set ${spec.token_env} (or admin.insecure_no_auth on a "
            "loopback listener); the data path runs, the admin API and /healthz do not",
        )
        return
    if token is None:
        log.warning("admin_insecure", listen=spec.listen)
    parts = running.parts

    async def advance(route: str, *, by: str, reason: str, force: bool) -> dict[str, Any]:
        if parts.plans is None or parts.guardian is None:
            return {"ok": False, "reasons": ["plans are not running"]}
        return await parts.plans.advance(
            route, by=by, reason=reason, force=force, verdicts=parts.guardian.verdicts
        )

    context = AdminContext(
        parts.control,
        token,
        state_parts=parts.state,
        outbox_to=parts.outbox_to,
        metrics=lambda: exposition(parts),
        advance=advance,
        telemetry=parts.telemetry,
        fleet_key=parts.fleet_key,
    )
    admin = web.AppRunner(
        console.make_app(context), access_log=None, handle_signals=False, shutdown_timeout=5.0
    )
    await admin.setup()
    await web.TCPSite(admin, host, port).start()
    context.ready = True
    running.admin, running.admin_port, running.admin_context = admin, _bound_port(admin), context


def _bound_port(runner: web.BaseRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


async def serve(
    config_path: str,
    *,
    on_ready: Callable[[Running], Awaitable[None]] | None = None,
    worker: int = 0,
    workers: int = 1,
) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code.

    The signal handlers go in before anything listens: a SIGHUP or SIGTERM that arrives while
    the process starts must not kill it with the default action."""
    table = load_config(config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started: list[Running] = []

    def reload() -> None:
        if started:
            started[0].parts.control.reload("SIGHUP")
        else:  # still starting: it is about to read the file anyway
            log.info("sighup_while_starting")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        running = await start(table, config_path=Path(config_path), worker=worker, workers=workers)
        started.append(running)
        settle_heap()
        try:
            if on_ready is not None:
                await on_ready(running)
            await stop.wait()
            log.info("shutting_down", timeout_s=SHUTDOWN_TIMEOUT)
        finally:
            await running.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


#: young-generation threshold: collections every 20 000 net allocations, not 700
GC_THRESHOLDS = (20_000, 20, 100)


def settle_heap() -> None:
    """Move everything start-up made (modules, config, the app: most of the heap) out of the
    garbage collector's sight. A full collection then walks only what requests made since:
    with a slow secondary's queued mirrors alive, full collections took 30-47 ms and set the
    primary's p99 at 1 000 req/s; after freezing they took ~5 ms (bench/README.md).

    A request allocates a few hundred objects that die by reference counting; at the default
    threshold (700) the collector ran every few requests and took 4-5 % of the CPU of a
    saturated shadow run (perf). Cycles are rare on the data path, so collecting less often
    costs little memory (the soak's RSS stays flat)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
