"""Simulated old and new platforms (CRM + ticketing each) on loopback ports.

`cutover demo`, the end-to-end tests and the benchmarks all start them through
`run_simulators`; `python -m proxy.demo.platforms` runs them on their own. Each of the four
upstreams is a `SimApp`: an aiohttp app on its own port whose records, faults and request log can
be reached from Python as well as over `/_sim`. The schemas live in `schema`, the seed data in
`seed`, the HTTP side in `apps`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.demo.apps import Api, SimState, build_app, pattern_chunks, pattern_sha256
from proxy.demo.faults import FaultError, Faults, FaultState
from proxy.demo.idempotency import DEFAULT_MAX_KEYS, IdempotencyKeys
from proxy.demo.requestlog import DEFAULT_MAX_REQUESTS, Predicate, RequestLog, SeenRequest
from proxy.demo.schema import DIALECTS, Platform, Record
from proxy.demo.seed import DEFAULT_CUSTOMERS, DEFAULT_SEED, Discrepancy, IdPair, generate
from proxy.demo.store import PlatformStore

__all__ = [
    "Discrepancy",
    "FaultError",
    "Faults",
    "PlatformPorts",
    "SeenRequest",
    "SimApp",
    "Simulators",
    "main",
    "pattern_chunks",
    "pattern_sha256",
    "run_simulators",
]

DEFAULT_HOST = "127.0.0.1"
SHUTDOWN_TIMEOUT = 1.0
"""Seconds a stopping app waits for in-flight requests (a slow fault must not hold a test up)."""
BACKLOG = 1024
APP_NAMES = ("old-crm", "old-ticketing", "new-crm", "new-ticketing")


@dataclass(frozen=True, slots=True)
class PlatformPorts:
    """Where the four upstreams listen; 0 picks a free port."""

    old_crm: int = 9001
    old_ticketing: int = 9002
    new_crm: int = 9101
    new_ticketing: int = 9102

    @classmethod
    def free(cls) -> PlatformPorts:
        return cls(0, 0, 0, 0)

    @classmethod
    def parse(cls, text: str) -> PlatformPorts:
        """`"9001,9002,9101,9102"`, or `"0"` for four free ports."""
        try:
            parts = [int(part) for part in text.split(",")]
        except ValueError:
            parts = []
        if parts == [0]:
            return cls.free()
        if len(parts) != 4 or not all(0 <= part < 65536 for part in parts):
            raise ValueError("expected four ports: old-crm,old-ticketing,new-crm,new-ticketing")
        return cls(*parts)

    def by_name(self) -> dict[str, int]:
        return dict(
            zip(
                APP_NAMES,
                (self.old_crm, self.old_ticketing, self.new_crm, self.new_ticketing),
                strict=True,
            )
        )


class SimApp:
    """One simulated upstream, e.g. the old platform's CRM, and its controls.

    Going down really closes the listening socket (new connections are refused) and drops the
    open ones, so a pooled keep-alive connection in the proxy fails too; coming up listens on the
    same port again.
    """

    def __init__(
        self,
        name: str,
        platform: Platform,
        api: Api,
        store: PlatformStore,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        authorization: str | None = None,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_idempotency_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.name = name
        self.platform = platform
        self.api = api
        self.host = host
        self.port = port
        self.store = store
        self.state = SimState(
            name=name,
            api=api,
            dialect=store.dialect,
            store=store,
            log=RequestLog(max_requests),
            faults=FaultState(),
            keys=IdempotencyKeys(max_idempotency_keys),
            authorization=authorization,
            apply_faults=self._apply,
        )
        self.app = build_app(self.state)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        self._site: web.TCPSite | None = None
        self._want_up = True
        self._lock = asyncio.Lock()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._revive: asyncio.Task[None] | None = None
        self.errors: list[BaseException] = []
        """Failures of background transitions (e.g. the port was taken while down)."""

    def __repr__(self) -> str:
        return f"<SimApp {self.name} {self.url} {'up' if self.is_up else 'down'}>"

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):  # noqa: S104 - a listen address, shown as where to connect
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._site is not None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._runner.setup()
        async with self._lock:
            await self._listen()

    async def close(self) -> None:
        """Stop background transitions, then the runner (in-flight requests get a second)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._runner.cleanup()
        self._site = None

    async def _listen(self) -> None:
        site = web.TCPSite(self._runner, self.host, self.port, backlog=BACKLOG, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[-1][1])
        self._site = site
        self._down.clear()
        self._up.set()

    async def _silence(self) -> None:
        site, self._site = self._site, None
        self._up.clear()
        if site is not None:
            await site.stop()
        server = self._runner.server
        if server is not None:
            for connection in server.connections:
                connection.force_close()
        self._down.set()

    async def _converge(self) -> None:
        async with self._lock:
            if self._want_up and self._site is None:
                await self._listen()
            elif not self._want_up and self._site is not None:
                await self._silence()

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, name=f"sim:{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())  # type: ignore[arg-type]

    def _cancel_revive(self) -> None:
        if self._revive is not None and self._revive is not asyncio.current_task():
            self._revive.cancel()
        self._revive = None

    async def _revive_after(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        self._revive = None
        await self.come_up()

    # --- faults -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self.state.faults.current

    def set_faults(self, mode: str = "ok", **settings: Any) -> None:
        """Apply fault settings at once, e.g. `set_faults("flaky", error_rate=0.5)`.

        Same keys as `POST /_sim/faults`; ValueError (`FaultError`) when they do not validate.
        `"down"` is carried out in the background: prefer `await go_down()`, or await
        `wait_until_down()` after it. Any other mode while down brings the app back up (await
        `wait_until_up()`).
        """
        self._apply(Faults.parse({"mode": mode, **settings}))

    def _apply(self, faults: Faults) -> None:
        self._cancel_revive()
        if faults.mode == "down":
            self._want_up = False
            self.state.faults.set(faults)
            self._spawn(self._converge(), "down")
            if faults.down_for_ms is not None:
                self._revive = self._spawn(self._revive_after(faults.down_for_ms), "revive")
            return
        self.state.faults.set(faults)
        if not self._want_up or not self.is_up:
            self._want_up = True
            self._spawn(self._converge(), "up")

    async def go_down(self, for_ms: int | None = None) -> None:
        """Refuse connections from now on (and after `for_ms` ms come back up by itself)."""
        self._cancel_revive()
        self._want_up = False
        self.state.faults.set(Faults(mode="down", down_for_ms=for_ms))
        await self._converge()
        if for_ms is not None:
            self._revive = self._spawn(self._revive_after(for_ms), "revive")

    async def come_up(self) -> None:
        """Listen again on the same port; settings go back to "ok" if they were "down"."""
        self._cancel_revive()
        self._want_up = True
        if self.state.faults.current.mode == "down":
            self.state.faults.set(Faults())
        await self._converge()

    async def wait_until_up(self) -> None:
        """Until the app listens (bound it with `asyncio.timeout`)."""
        await self._up.wait()

    async def wait_until_down(self) -> None:
        """Until the app has stopped listening (bound it with `asyncio.timeout`)."""
        await self._down.wait()

    # --- what it saw --------------------------------------------------------------------------

    def requests(self, since: int = 0) -> list[SeenRequest]:
        """Requests received (not `/_sim`) with a seq above `since`, oldest first."""
        return self.state.log.since(since)

    def clear_requests(self) -> None:
        self.state.log.clear()

    @property
    def last_seq(self) -> int:
        return self.state.log.last_seq

    async def wait_for_request(
        self,
        predicate: Predicate | None = None,
        *,
        since: int = 0,
    ) -> SeenRequest:
        """The first request after `since` matching `predicate`, as soon as it arrives.

        Bound the wait with `asyncio.timeout` around the call.
        """
        return await self.state.log.wait_for(predicate, since=since)

    # --- its records (copies) -----------------------------------------------------------------

    def contacts(self) -> list[Record]:
        return self.store.contacts.all()

    def contact(self, ident: int | str) -> Record | None:
        return self.store.contacts.get(ident)

    def tickets(self) -> list[Record]:
        return self.store.tickets.all()

    def ticket(self, ident: int | str) -> Record | None:
        return self.store.tickets.get(ident)


@dataclass(frozen=True, slots=True)
class Simulators:
    """The four running upstreams, and what they were seeded with."""

    old_crm: SimApp
    old_ticketing: SimApp
    new_crm: SimApp
    new_ticketing: SimApp
    id_map: list[IdPair]
    """`("contact" | "ticket" | "comment", old_id, new_id)` for every seeded record on both."""
    discrepancies: list[Discrepancy]
    """What the new platform holds differently from the old one on purpose (see `seed`)."""

    @property
    def apps(self) -> tuple[SimApp, SimApp, SimApp, SimApp]:
        return (self.old_crm, self.old_ticketing, self.new_crm, self.new_ticketing)

    def __iter__(self) -> Iterator[SimApp]:
        return iter(self.apps)

    def upstreams(self) -> tuple[tuple[str, str, SimApp], ...]:
        """(platform, api, app) for each upstream, as routes.yaml's `platforms` names them."""
        return (
            ("old", "crm", self.old_crm),
            ("old", "ticketing", self.old_ticketing),
            ("new", "crm", self.new_crm),
            ("new", "ticketing", self.new_ticketing),
        )

    def by_name(self, name: str) -> SimApp:
        """`"old-crm"`, `"old-ticketing"`, `"new-crm"` or `"new-ticketing"`."""
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)

    def urls(self) -> dict[str, str]:
        return {app.name: app.url for app in self.apps}

    def new_id(self, resource: str, old_id: int) -> str | None:
        """The new platform's id of a seeded record."""
        for kind, old, new in self.id_map:
            if kind == resource and old == old_id:
                return new
        return None

    def clear_requests(self) -> None:
        for app in self.apps:
            app.clear_requests()


def _authorization(credentials: Mapping[str, str] | None, name: str, platform: str) -> str | None:
    if not credentials:
        return None
    return credentials.get(name, credentials.get(platform))


@asynccontextmanager
async def run_simulators(
    host: str = DEFAULT_HOST,
    ports: PlatformPorts | int = PlatformPorts(),
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
    credentials: Mapping[str, str] | None = None,
    *,
    discrepancies: bool = True,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_idempotency_keys: int = DEFAULT_MAX_KEYS,
) -> AsyncIterator[Simulators]:
    """Seed and start the four upstreams; stop them on exit.

    `ports=0` picks four free ports (read the real ones from `sims.old_crm.url`).
    `credentials` maps an app name (`"old-crm"`) or a platform (`"old"`) to the exact
    `Authorization` value that app then requires; by default none is required.
    """
    if isinstance(ports, int):
        if ports != 0:
            raise ValueError("ports: a PlatformPorts, or 0 for free ports")
        ports = PlatformPorts.free()
    if credentials:
        unknown = set(credentials) - {*APP_NAMES, "old", "new"}
        if unknown:
            raise ValueError(f"credentials: unknown app(s) {', '.join(sorted(unknown))}")
    data = generate(seed, customers, discrepancies=discrepancies)
    stores = {platform: PlatformStore(DIALECTS[platform], seed) for platform in ("old", "new")}
    stores["old"].load(data.old_contacts, data.old_tickets)
    stores["new"].load(data.new_contacts, data.new_tickets)
    port_of = ports.by_name()
    apps: list[SimApp] = []
    for name in APP_NAMES:
        platform_name, api_name = name.split("-")
        platform: Platform = "old" if platform_name == "old" else "new"
        api: Api = "crm" if api_name == "crm" else "ticketing"
        apps.append(
            SimApp(
                name,
                platform,
                api,
                stores[platform],
                host=host,
                port=port_of[name],
                authorization=_authorization(credentials, name, platform),
                max_requests=max_requests,
                max_idempotency_keys=max_idempotency_keys,
            )
        )
    started: list[SimApp] = []
    try:
        for app in apps:
            await app.start()
            started.append(app)
        old_crm, old_ticketing, new_crm, new_ticketing = apps
        yield Simulators(
            old_crm=old_crm,
            old_ticketing=old_ticketing,
            new_crm=new_crm,
            new_ticketing=new_ticketing,
            id_map=data.id_map,
            discrepancies=data.discrepancies,
        )
    finally:
        for app in reversed(started):
            await app.close()


# --- `python -m proxy.demo.platforms` ---------------------------------------------------------


def _ports(text: str) -> PlatformPorts:
    try:
        return PlatformPorts.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.demo.platforms",
        description="Run the simulated old and new platforms until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument(
        "--ports",
        type=_ports,
        default=PlatformPorts(),
        help="old-crm,old-ticketing,new-crm,new-ticketing (default 9001,9002,9101,9102; 0 = free)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS)
    return parser


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with run_simulators(
        host=args.host, ports=args.ports, seed=args.seed, customers=args.customers
    ) as sims:
        for app in sims.apps:
            print(f"{app.name:<14} {app.url}", flush=True)
        await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import uvloop  # optional speed-up, only for the standalone process

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not a hard one here
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            return runner.run(_serve(args))
        except OSError as exc:
            print(f"platforms: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
