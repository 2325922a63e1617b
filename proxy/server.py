"""The data path: one handler, readable top to bottom.

    check the request line -> match a route -> identify the customer -> decide the primary
    -> forward to the primary, stream its answer back -> hand the secondary's work off
    -> one access log line

The client only ever waits for the primary. Everything cutover answers itself (no route, bad
request, upstream down or slow) is RFC 9457 problem JSON naming the route and the platform.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

import orjson
import structlog
from multidict import CIMultiDict

from proxy.config.spec import ALL_METHODS, Side
from proxy.config.table import Route, RouteTable
from proxy.dualwrite.journal import DualWrite
from proxy.errors import (
    BadRequest,
    ClientGone,
    NoRoute,
    RequestRejected,
    UpstreamError,
)
from proxy.headers import (
    PLATFORM,
    REQUEST_ID,
    Forwarded,
    RequestIds,
    add_forwarding,
    client_response_headers,
    connection_named,
    upstream_request_headers,
)
from proxy.http1.client import Answer
from proxy.http1.server import PROBLEM_TYPE, Request, Responder, problem_body
from proxy.identity import BadIdentity, Identity, identify
from proxy.observe import CustomerHasher
from proxy.routing import Decision, decide
from proxy.shadowing import Capture, ClientHeaders, Shadowing, ShadowRead
from proxy.state import TableStore
from proxy.supervisor import Supervisor
from proxy.telemetry import Telemetry
from proxy.translate import Resolved, Translator, Unresolved
from proxy.upstream import UpstreamClients
from shadow.difflog import DiffLogWriter

log = structlog.get_logger("cutover.proxy")

_METHODS = frozenset(ALL_METHODS)
#: answers up to this size (with a Content-Length) are read whole and sent in one write
SMALL_BODY = 256 * 1024
#: request bodies up to this size are read whole before forwarding; larger ones are streamed
BUFFER_REQUEST_BODY = 256 * 1024
STREAM_CHUNK = 64 * 1024


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


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and "json" in content_type.lower()


async def _read_answer(answer: Answer, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of an answer; True when that was all of it."""
    if answer.complete:
        return answer.take(), True
    parts: list[bytes] = []
    size = 0
    async for chunk in answer.chunks():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


class ReferenceElsewhere(RequestRejected):
    status = 409
    kind = "reference-elsewhere"
    title = "Referenced record is on the other platform"


class Exchange:
    """What the access log and the secondary hand-off need to know about one request."""

    __slots__ = (
        "error",
        "identity",
        "method",
        "path",
        "platform",
        "request_id",
        "route",
        "started",
        "status",
    )

    def __init__(self, request_id: str, method: str, path: str, started: float) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.started = started
        self.route: Route | None = None
        self.identity: Identity | None = None
        self.platform: Side | None = None
        self.status = 0
        self.error: str | None = None


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
        translator: Translator | None = None,
        dual: DualWrite | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.clients = clients
        self.supervisor = supervisor or Supervisor("proxy")
        self.hasher = hasher or CustomerHasher(store.table.migration)
        self.shadowing = shadowing
        self.difflog = difflog
        self.translator = translator or Translator(None)
        self.dual = dual
        self.telemetry = telemetry
        self._random = random.Random()  # noqa: S311 - sampling the shadow share, not a secret
        self._request_ids = RequestIds()

    async def handle(self, request: Request, respond: Responder) -> None:
        table = self.store.table
        ex = Exchange(
            self._request_ids.of(request.headers), request.method, request.path, time.monotonic()
        )
        try:
            await self._route(request, respond, table, ex)
        except RequestRejected as exc:
            ex.error = exc.kind
            self._problem(respond, ex, exc.status, exc.kind, exc.title, str(exc))
        except UpstreamError as exc:
            ex.error = exc.kind
            self._problem(respond, ex, exc.status, exc.kind, exc.title, exc.detail)
        except ClientGone:
            ex.error = "client-gone"
        except Exception:  # the last boundary: a bug must cost one request, not the process
            log.exception(
                "handler_failed",
                request_id=ex.request_id,
                route=ex.route.name if ex.route else None,
            )
            ex.error = "internal"
            self._problem(
                respond,
                ex,
                500,
                "internal",
                "Internal error",
                "cutover failed to handle this request; see its log",
            )
        ex.status = respond.status if respond.started else 499  # 499: nobody left to answer
        self._access_log(ex)

    def _problem(
        self, respond: Responder, ex: Exchange, status: int, kind: str, title: str, detail: str
    ) -> None:
        """cutover's own answer (RFC 9457), naming the route and the platform; when the answer
        had already begun, the connection is cut instead (the only honest signal left)."""
        if respond.started:
            respond.abort()
            return
        headers = [("Content-Type", PROBLEM_TYPE), (REQUEST_ID, ex.request_id)]
        if ex.platform is not None and status >= 500:  # the platform that failed; a refused
            headers.append((PLATFORM, ex.platform))  # request reached no platform at all
        body = problem_body(
            status,
            kind,
            title,
            detail,
            route=ex.route.name if ex.route else None,
            platform=ex.platform if status >= 500 else None,
            request_id=ex.request_id,
        )
        respond.send(status, headers, body)

    async def _route(
        self, request: Request, respond: Responder, table: RouteTable, ex: Exchange
    ) -> None:
        method = request.method
        if method not in _METHODS:
            raise BadRequest(f"method {method} is not proxied")
        query = request.query
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
        resolved = await self.translator.resolve(route, path)
        decision = decide(
            table,
            route,
            identity,
            method,
            int(self._random.random() * 10_000),  # randrange: Python code, 0.7 % (py-spy)
            affinity=resolved.affinity,
            extra_rollback=self.store.overlay,
        )
        ex.platform = primary = decision.primary
        upstream = table.upstream(primary, route.api)
        translator = self.translator
        if translator.looks_up_query(route, query):
            target = await translator.path_on(route, primary, path, query, resolved)
        else:
            target = translator.path_now(route, primary, path, query, resolved)
        if target is None:  # affinity sends a one-sided record to its side; this cannot happen
            raise NoRoute(f"the record of {path} is not on the {primary} platform")
        named = connection_named(request.headers)
        headers = upstream_request_headers(
            request.headers.items(), named, upstream.headers, secondary=False
        )
        trusted = Forwarded.of(request.headers) if table.trusts(request.peer) else None
        add_forwarding(
            headers,
            peer=request.peer,
            proto=request.scheme,
            host=request.headers.get("Host"),
            request_id=ex.request_id,
            trusted=trusted,
        )
        journal = self.dual if decision.dual_write else None
        # a create on a route with ids is noted in the id map even without dual-write, so that
        # record affinity can find the record's only platform later
        creates = route.ids is not None and method == "POST" and resolved.span is None
        raw, data, length = await self._request_body(
            request, table, route, primary, whole=journal is not None
        )
        intent = None
        try:
            if journal is not None:
                intent = await journal.journal(
                    route,
                    method=method,
                    path=path,
                    query=query,
                    body=raw or b"",
                    content_type=request.headers.get("Content-Type", ""),
                    primary=primary,
                    secondary=decision.secondary,
                    resolved=resolved,
                    request_id=ex.request_id,
                    customer=self.hasher(identity.customer),
                    client_key=request.headers.get("Idempotency-Key"),
                )
                headers["Idempotency-Key"] = intent.entry.primary_key
            shadow = self._shadow_read(request, table, decision, resolved, path, query, target, ex)
            try:
                async with self.clients.request(
                    upstream, "primary", method, target, headers, data, length
                ) as answer:
                    payload = await self._relay(
                        request,
                        respond,
                        answer,
                        ex,
                        route,
                        primary,
                        shadow.capture if shadow else None,
                        keep=intent is not None or creates,
                    )
                    status = answer.status
                    if shadow is not None:
                        shadow.answered(status, answer.headers)
            except UpstreamError as exc:
                if shadow is not None:
                    shadow.failed(exc.kind)  # compared with what the secondary says (result: error)
                    await self._send_copy(shadow, request, named, trusted)
                if journal is not None and intent is not None:
                    await journal.failed(intent, exc)
                raise
            finally:
                if shadow is not None and shadow.control is None and self.shadowing is not None:
                    self.shadowing.aborted(shadow)  # the client went away first: no copy is sent
            if shadow is not None:  # the client has its answer
                await self._send_copy(shadow, request, named, trusted)
            if journal is not None and intent is not None:
                await journal.settle(intent, route, status, payload)
            elif creates and self.dual is not None and 200 <= status < 300:
                await self.dual.note_create(route, primary, payload)
        finally:
            if journal is not None and intent is not None:
                journal.done(intent)  # the next write to the same record may go

    def _shadow_read(
        self,
        request: Request,
        table: RouteTable,
        decision: Decision,
        resolved: Resolved,
        path: str,
        query: str,
        target: str,
        ex: Exchange,
    ) -> ShadowRead | None:
        """A shadowed read the secondary's lane can take, decided before the primary is asked
        (its answer is teed for the comparison); its request leaves after the client's answer."""
        if not decision.shadow or self.shadowing is None:
            return None
        route = decision.route
        secondary = table.upstream(decision.secondary, route.api)
        if self.shadowing.turned_away(decision, secondary):
            return None
        return ShadowRead(
            decision,
            secondary,
            table.upstream(decision.primary, route.api),
            request.method,
            path,
            query,
            target,
            ex.request_id,
            resolved,
            self._random.random() * 100 < route.rules.noise_probe_percent,
            Capture(route.rules.max_body),
        )

    def _send_copy(
        self,
        shadow: ShadowRead,
        request: Request,
        named: frozenset[str],
        trusted: Forwarded | None,
    ) -> Coroutine[Any, Any, bool]:
        """After the client's answer: the copy, with what it needs of the client's request
        (copied now, not before the primary was asked, and while the request is at hand).
        The caller awaits Shadowing.start's coroutine itself: no coroutine of this one's."""
        assert self.shadowing is not None, "a ShadowRead comes from _shadow_read"
        headers = request.headers
        client = ClientHeaders(
            items=tuple(headers.items()),
            named=named,
            peer=request.peer,
            proto=request.scheme,
            host=headers.get("Host"),
            trusted=trusted,
        )
        return self.shadowing.start(shadow, client)

    async def _request_body(
        self,
        request: Request,
        table: RouteTable,
        route: Route,
        side: Side,
        *,
        whole: bool,
    ) -> tuple[bytes | None, Any, int | None]:
        """(the client's body when it had to be read whole, what to send to the primary, its
        length when that is streamed).

        Bodies are read whole for the journal and to translate JSON for the new platform (up to
        `outbox.max_body`, else 413); otherwise small ones are read and large ones streamed."""
        if not request.body_exists:
            return None, None, None
        length = request.content_length
        translate = _is_json(request.headers.get("Content-Type")) and (
            self.translator.translates_request(route, side)
        )
        if whole or translate:
            raw = await request.read(table.spec.outbox.max_body)
            if not translate:
                return raw, raw, None
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return raw, raw, None  # the platform says what it thinks of it
            try:
                doc = await self.translator.request_doc(route, side, doc)
            except Unresolved as exc:
                raise ReferenceElsewhere(
                    f"the body refers to {exc.resource} {exc.key}, which the {side} platform "
                    "does not hold"
                ) from None
            return raw, orjson.dumps(doc), None
        if length is not None and length <= BUFFER_REQUEST_BODY:
            return None, await request.read(BUFFER_REQUEST_BODY), None
        if length is None:
            # chunked: what fits is read first, so a malformed chunk in it is a 400 before a
            # platform sees any of the request (nginx buffers the whole body for the same reason)
            body, stream = await request.prefix(BUFFER_REQUEST_BODY)
            return (None, body, None) if stream is None else (None, stream, None)
        return None, request.stream(), length

    async def _relay(
        self,
        request: Request,
        respond: Responder,
        answer: Answer,
        ex: Exchange,
        route: Route,
        side: Side,
        capture: Capture | None,
        *,
        keep: bool,
    ) -> bytes | None:
        """The primary's answer to the client; its raw body when it was read whole.

        Small answers are read whole and sent in one write; JSON answers of the new platform are
        translated to the old contract (up to `outbox.max_body`); the rest is streamed. Teed into
        `capture` (raw) when a shadow comparison waits for it."""
        headers = client_response_headers(answer.headers.items(), connection_named(answer.headers))
        headers[PLATFORM] = ex.platform or ""
        headers[REQUEST_ID] = ex.request_id
        length = answer.content_length
        translate = self.translator.translates_answer(route, side) and _is_json(
            answer.headers.get("Content-Type")
        )
        limit = self.store.table.spec.outbox.max_body
        whole = (
            request.method == "HEAD"
            or answer.complete
            or (length is not None and length <= (limit if (translate or keep) else SMALL_BODY))
        )
        if whole or ((translate or keep) and length is None):
            body, complete = await _read_answer(answer, limit)
            if complete:
                if capture is not None:
                    capture.feed(body)
                sent = await self._translated(route, side, body) if translate and body else body
                respond.send(
                    answer.status,
                    headers.items(),
                    sent,
                    reason=answer.reason,
                    length=length if request.method == "HEAD" else None,
                )
                return body
            head = body  # too large to translate: relayed as it is, after what was read
        else:
            head = b""
        await self._stream(respond, answer, ex, headers, head, capture)
        return None

    async def _translated(self, route: Route, side: Side, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        return orjson.dumps(await self.translator.answer_doc(route, side, doc))

    async def _stream(
        self,
        respond: Responder,
        answer: Answer,
        ex: Exchange,
        headers: CIMultiDict[str],
        head: bytes,
        capture: Capture | None,
    ) -> None:
        respond.start(
            answer.status, headers.items(), length=answer.content_length, reason=answer.reason
        )
        if head:
            if capture is not None:
                capture.feed(head)
            await respond.write(head)
        chunks = answer.chunks()
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except UpstreamError as exc:
                # the status line is out: the only honest signal left is an aborted connection
                log.warning(
                    "upstream_aborted_mid_body",
                    request_id=ex.request_id,
                    platform=ex.platform,
                    error=exc.kind,
                )
                ex.error = "upstream-aborted"
                respond.abort()
                raise
            if capture is not None:
                capture.feed(chunk)
            await respond.write(chunk)
        await respond.end()

    def _access_log(self, ex: Exchange) -> None:
        identity = ex.identity
        seconds = time.monotonic() - ex.started
        if self.telemetry is not None:
            self.telemetry.request(
                ex.route.name if ex.route else None,
                identity.channel if identity else None,
                identity.cohort if identity else None,
                ex.platform,
                ex.status,
                seconds,
            )
        if not log.is_enabled_for(logging.INFO):
            return
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
            ms=round(seconds * 1000, 2),
        )


__all__ = ["Proxy", "canonical_path"]
