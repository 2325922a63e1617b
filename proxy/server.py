"""The data path: one aiohttp handler, readable top to bottom.

    check the request line -> match a route -> identify the customer -> decide the primary
    -> forward to the primary, stream its answer back -> hand the secondary's work off
    -> one access log line

The client only ever waits for the primary. Everything cutover answers itself (no route, bad
request, upstream down or slow) is RFC 9457 problem JSON naming the route and the platform.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import ClientResponse, web

from proxy.config.spec import ALL_METHODS, Side
from proxy.config.table import Route, RouteTable, Upstream
from proxy.errors import (
    BadRequest,
    ClientGone,
    CutoverError,
    NoRoute,
    RequestRejected,
    UpstreamError,
)
from proxy.headers import (
    PLATFORM,
    REQUEST_ID,
    add_forwarding,
    client_response_headers,
    connection_named,
    request_id_of,
    upstream_request_headers,
)
from proxy.identity import BadIdentity, Identity, identify
from proxy.observe import CustomerHasher
from proxy.problem import problem
from proxy.routing import decide
from proxy.shadowing import Capture, ClientHeaders, Pending, Shadowing, target_for
from proxy.state import TableStore
from proxy.supervisor import Supervisor
from proxy.upstream import UpstreamClients
from shadow.difflog import DiffLogWriter

log = structlog.get_logger("cutover.proxy")

_METHODS = frozenset(ALL_METHODS)
#: answers up to this size (with a Content-Length) are read whole and sent in one write
SMALL_BODY = 256 * 1024
#: request bodies up to this size are read whole before forwarding; larger ones are streamed
BUFFER_REQUEST_BODY = 256 * 1024
STREAM_CHUNK = 64 * 1024
#: at shutdown, mirrors in flight get this long to finish; queued ones are dropped and counted
MIRROR_DRAIN_TIMEOUT = 5.0
#: at shutdown, the diff log writer gets this long to write what is queued
DIFF_LOG_CLOSE_TIMEOUT = 5.0


def canonical_path(raw_path: str) -> str:
    """The path to route on and forward: refuse rather than guess (PITFALLS.md) when it holds
    dot segments, encoded slashes or dots, backslashes or empty segments that could change the
    route between cutover and the platform."""
    if not raw_path.startswith("/"):
        raise BadRequest("the request target must be a path starting with '/'")
    if "%" in raw_path:
        lowered = raw_path.lower()
        if "%2f" in lowered or "%5c" in lowered or "%2e" in lowered or "%00" in lowered:
            raise BadRequest("encoded '/', '\\', '.' or NUL in the path")
    if "\\" in raw_path or "//" in raw_path:
        raise BadRequest("'\\' or an empty segment in the path")
    if "." in raw_path:
        for segment in raw_path.split("/"):
            if segment in {".", ".."}:
                raise BadRequest("'.' or '..' segment in the path")
    return raw_path


class MidStreamAbort(CutoverError):
    """The upstream failed after the answer's head was sent; the connection has been aborted."""

    def __init__(self, stream: web.StreamResponse) -> None:
        super().__init__("upstream failed mid-body")
        self.stream = stream


@dataclass(slots=True)
class Exchange:
    """What the access log and the secondary hand-off need to know about one request."""

    request_id: str
    method: str
    path: str
    started: float
    route: Route | None = None
    identity: Identity | None = None
    platform: Side | None = None
    status: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Proxy:
    """The handler and what it needs; owned by the app (see `make_app`)."""

    def __init__(
        self,
        store: TableStore,
        clients: UpstreamClients,
        *,
        supervisor: Supervisor | None = None,
        hasher: CustomerHasher | None = None,
        shadowing: Shadowing | None = None,
        difflog: DiffLogWriter | None = None,
    ) -> None:
        self.store = store
        self.clients = clients
        self.supervisor = supervisor or Supervisor("proxy")
        self.hasher = hasher or CustomerHasher(store.table.migration)
        self.shadowing = shadowing
        self.difflog = difflog
        self._random = random.Random()  # noqa: S311 - sampling the shadow share, not a secret

    async def handle(self, request: web.Request) -> web.StreamResponse:
        table = self.store.table
        raw_path, _, query = request.raw_path.partition("?")
        ex = Exchange(request_id_of(request.headers), request.method, raw_path, time.monotonic())
        try:
            response = await self._route(request, table, ex, query)
        except RequestRejected as exc:
            response = problem(
                exc.status,
                exc.kind,
                exc.title,
                str(exc),
                request_id=ex.request_id,
                route=ex.route.name if ex.route else None,
            )
            ex.error = exc.kind
        except UpstreamError as exc:
            response = problem(
                exc.status,
                exc.kind,
                exc.title,
                exc.detail,
                request_id=ex.request_id,
                route=ex.route.name if ex.route else None,
                platform=ex.platform,
            )
            ex.error = exc.kind
        except MidStreamAbort as exc:
            response = exc.stream
        except ClientGone:
            ex.error = "client-gone"
            response = web.Response(status=499)  # never sent: the connection is gone
        except Exception:  # the last boundary: a bug must cost one request, not the process
            log.exception(
                "handler_failed",
                request_id=ex.request_id,
                route=ex.route.name if ex.route else None,
            )
            ex.error = "internal"
            response = problem(
                500,
                "internal",
                "Internal error",
                "cutover failed to handle this request; see its log",
                request_id=ex.request_id,
            )
        if ex.platform is not None and not response.prepared:
            response.headers[PLATFORM] = ex.platform
        ex.status = response.status
        self._access_log(ex)
        return response

    async def _route(
        self, request: web.Request, table: RouteTable, ex: Exchange, query: str
    ) -> web.StreamResponse:
        method = request.method
        if method not in _METHODS:
            raise BadRequest(f"method {method} is not proxied")
        path = canonical_path(ex.path)
        route = table.match(method, path)
        if route is None:
            raise NoRoute(f"no route for {method} {path}")
        ex.route = route
        try:
            identity = identify(table, request.headers, path, query)
        except BadIdentity as exc:
            raise BadRequest(str(exc)) from None
        ex.identity = identity
        decision = decide(table, route, identity, method, self._random.randrange(10_000))
        ex.platform = decision.primary
        upstream = table.upstream(decision.primary, route.api)
        target = target_for(route, decision.primary, path, query)
        named = connection_named(request.headers)
        pending = None
        if decision.shadow and self.shadowing is not None:
            client = ClientHeaders(
                items=tuple(request.headers.items()),
                named=named,
                peer=request.remote,
                proto=request.scheme,
                host=request.headers.get("Host"),
            )
            pending = self.shadowing.start(
                decision,
                table.upstream(decision.secondary, route.api),
                upstream,
                method=method,
                path=path,
                query=query,
                client=client,
                request_id=ex.request_id,
                probe_noise=self._random.random() * 100 < route.rules.noise_probe_percent,
            )
        try:
            return await self._forward(request, upstream, target, ex, named, pending)
        except UpstreamError as exc:
            if pending is not None:
                pending.primary_failed(exc.kind)
            raise
        finally:
            if pending is not None:
                pending.abandon()

    async def _forward(
        self,
        request: web.Request,
        upstream: Upstream,
        target: str,
        ex: Exchange,
        named: frozenset[str],
        pending: Pending | None,
    ) -> web.StreamResponse:
        headers = upstream_request_headers(
            request.headers.items(), named, upstream.headers, secondary=False
        )
        add_forwarding(
            headers,
            peer=request.remote,
            proto=request.scheme,
            host=request.headers.get("Host"),
            request_id=ex.request_id,
        )
        data: Any = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= BUFFER_REQUEST_BODY:
                data = await request.read()
            else:
                data = request.content
                if length is not None:
                    headers["Content-Length"] = str(length)
        async with self.clients.request(
            upstream, "primary", request.method, target, headers, data
        ) as answer:
            response = await self._relay(request, answer, ex, pending.capture if pending else None)
            if pending is not None:
                pending.primary_done(answer.status, answer.headers)
            return response

    async def _relay(
        self, request: web.Request, answer: ClientResponse, ex: Exchange, capture: Capture | None
    ) -> web.StreamResponse:
        """The primary's answer to the client: small ones in one write, large ones streamed;
        teed into `capture` when a shadow comparison waits for it."""
        headers = client_response_headers(answer.headers.items(), connection_named(answer.headers))
        headers[PLATFORM] = ex.platform or ""
        headers[REQUEST_ID] = ex.request_id
        length = answer.content_length
        if (
            request.method == "HEAD"
            or answer.status in (204, 304)
            or (length is not None and length <= SMALL_BODY)
        ):
            body = await answer.read()
            if capture is not None:
                capture.feed(body)
            response = web.Response(
                status=answer.status, reason=answer.reason, body=body, headers=headers
            )
            if request.method == "HEAD" and length is not None:
                response.content_length = length
            return response
        stream = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        if length is not None:
            stream.content_length = length
        try:
            await stream.prepare(request)
        except ConnectionError as exc:
            raise ClientGone from exc
        chunks = answer.content.iter_chunked(STREAM_CHUNK)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception as exc:  # any failure here is the upstream's
                # the status line is out: the only honest signal left is an aborted connection
                log.warning(
                    "upstream_aborted_mid_body",
                    request_id=ex.request_id,
                    platform=ex.platform,
                    error=type(exc).__name__,
                )
                ex.error = "upstream-aborted"
                if request.transport is not None:
                    request.transport.close()
                raise MidStreamAbort(stream) from exc
            if capture is not None:
                capture.feed(chunk)
            try:
                await stream.write(chunk)
            except ConnectionError as exc:
                raise ClientGone from exc
        try:
            await stream.write_eof()
        except ConnectionError as exc:
            raise ClientGone from exc
        return stream

    def _access_log(self, ex: Exchange) -> None:
        identity = ex.identity
        log.info(
            "request",
            request_id=ex.request_id,
            method=ex.method,
            route=ex.route.name if ex.route else None,
            channel=identity.channel if identity else None,
            cohort=identity.cohort if identity else None,
            customer=self.hasher(identity.customer) if identity else None,
            platform=ex.platform,
            status=ex.status,
            error=ex.error,
            ms=round((time.monotonic() - ex.started) * 1000, 2),
        )


PROXY = web.AppKey("proxy", Proxy)


def make_app(proxy: Proxy, *, client_max_size: int = 1024**2) -> web.Application:
    """The data-path application. Resources are opened and closed with it, in reverse order."""
    app = web.Application(client_max_size=client_max_size, handler_args={"tcp_keepalive": True})
    app[PROXY] = proxy
    app.router.add_route("*", "/{tail:.*}", proxy.handle)

    async def upstream_sessions(app: web.Application) -> Any:
        proxy.clients.sync(proxy.store.table)
        yield
        await proxy.supervisor.drain(timeout=10.0)
        await proxy.clients.close()

    async def shadow_jobs(app: web.Application) -> Any:
        yield
        if proxy.shadowing is not None:
            await proxy.shadowing.dispatcher.drain(timeout=MIRROR_DRAIN_TIMEOUT)
            proxy.shadowing.close()
        if proxy.difflog is not None:
            writer = proxy.difflog
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: writer.close(timeout=DIFF_LOG_CLOSE_TIMEOUT)
            )

    # cleanup runs in reverse: mirrors drain before the sessions they use are closed
    app.cleanup_ctx.append(upstream_sessions)
    app.cleanup_ctx.append(shadow_jobs)
    return app


__all__ = ["PROXY", "Proxy", "canonical_path", "make_app"]
