"""The listener clients talk to: HTTP/1.1 connections with limits and deadlines.

A handler is `async def handle(request: Request, respond: Responder) -> None`. It runs in the
connection's task (one per kept-alive connection, not one per request), which the server owns
and waits for at shutdown; it is never cancelled because the client went
away (a write in flight must still be journaled and settled), it just finds `ClientGone` when
it writes.

What the server answers itself, before any handler sees the request (so it is never forwarded),
each as problem JSON with `Connection: close`:

    400  not HTTP/1.x as llhttp reads it in strict mode: conflicting Content-Length and
         Transfer-Encoding, duplicate Content-Length, obs-fold, bare LF, invalid characters in
         the method, target or a header, a malformed chunk; a Transfer-Encoding other than one
         `chunked` (or any in HTTP/1.0); no Host, two, or one that is not host[:port]; CONNECT;
         HTTP/0.9; a target that is not a path (absolute-form, `*`, a `#fragment`)
    408  the head not complete within `header_timeout` (a silent new connection is just closed)
    413  a declared Content-Length over `max_body`
    414  a request target over `max_header_bytes`
    431  more than `max_headers` header fields, or a head over `max_header_bytes`
    505  an HTTP version other than 1.0 and 1.1
    503  over `max_in_flight` requests being handled (with Retry-After), or over
         `max_connections` open connections (then closed at once)

Deadlines (all from `Limits`, checked twice a second by one timer for all connections):
a head must arrive within `header_timeout` of its first byte (of the connection, for the first
one); a handler waiting for body bytes gets `RequestTimeout` after `body_timeout` of silence; a
client that does not read an answer for `body_timeout` is cut off; an idle keep-alive connection
is closed after `keepalive_timeout`.

Pipelined requests are answered one after the other, in order; while one is being handled the
next ones are parsed (bounded by one read of the socket) and reading pauses.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

import httptools
import orjson
import structlog
from multidict import CIMultiDict

from proxy.errors import (
    BadRequest,
    ClientGone,
    HeadersTooLarge,
    Overloaded,
    PayloadTooLarge,
    RequestRejected,
    RequestTimeout,
    UriTooLong,
    VersionNotSupported,
)
from proxy.http1.streams import chained, request_stream
from proxy.http1.wire import HeaderInjection, WriteFlow, head_bytes, reason_for
from proxy.idlegate import IdleGate

log = structlog.get_logger("cutover.http")

#: uri-host [":" port] (RFC 9110 §4.2.3, RFC 3986 §3.2.2): a reg-name, an IPv4, or an IP literal
_HOST: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z")
_VERSIONS: Final = frozenset({"1.1", "1.0"})
#: request body bytes held (unread by the handler) before the socket stops being read
READ_HIGH_WATER: Final = 256 * 1024
READ_LOW_WATER: Final = 64 * 1024
SWEEP_EVERY: Final = 0.5
SHUTDOWN_POLL: Final = 0.05
SHUTDOWN_GRACE: Final = 0.05
PROBLEM_TYPE: Final = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Limits:
    """routes.yaml `server:` (docs/routes-reference.md, THREAT_MODEL.md)."""

    max_body: int = 100 * 1024 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 10_000
    max_in_flight: int = 2048
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0


Handler = Callable[["Request", "Responder"], Awaitable[None]]


class _Body:
    """A request body as the parser delivers it and the handler reads it."""

    __slots__ = ("_conn", "_waiter", "chunks", "complete", "error", "received", "size")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.chunks: deque[bytes] = deque()
        self.size = 0  # held, unread
        self.received = 0  # in all
        self.complete = False
        self.error: RequestRejected | ClientGone | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes, limit: int) -> None:
        if self.error is not None:
            return
        self.received += len(chunk)
        if self.received > limit:
            self.fail(PayloadTooLarge(f"bodies are limited to {limit} bytes"))
            self.chunks.clear()
            self.size = 0
            self._conn.closing = True  # the rest of it is not worth reading
            self._conn.pause("body")
            return
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > READ_HIGH_WATER:
            self._conn.pause("body")
        self.wake()

    def finish(self) -> None:
        self.complete = True
        self.wake()

    def fail(self, error: RequestRejected | ClientGone) -> None:
        if self.error is None and not self.complete:
            self.error = error
            self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        conn = self._conn
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        conn.body_wait_since = time.monotonic()
        conn.resume("body")
        try:
            await waiter
        finally:
            conn.body_wait_since = None
            self._waiter = None

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.size -= len(chunk)
        if self.size < READ_LOW_WATER:
            self._conn.resume("body")
        return chunk


class Request:
    """One request as a handler sees it. `target` is the request target exactly as sent;
    `path` and `query` are its two halves."""

    __slots__ = (
        "_body",
        "_conn",
        "_continue",
        "chunked",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "path",
        "peer",
        "query",
        "target",
        "version",
    )

    scheme = "http"

    def __init__(
        self,
        conn: _Connection,
        method: str,
        target: str,
        version: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target
        self.path, _, self.query = target.partition("?")
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.peer = conn.peer
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None  # llhttp checked it
        self.chunked = "Transfer-Encoding" in headers
        self._body = _Body(conn)
        self._continue = version == "1.1" and headers.get("Expect", "").lower() == "100-continue"

    @property
    def body_exists(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def body_complete(self) -> bool:
        return self._body.complete or not self.body_exists

    async def read(self, limit: int) -> bytes:
        """The whole body, refused with 413 past `limit` bytes."""
        if self.content_length is not None and self.content_length > limit:
            raise PayloadTooLarge(f"bodies on this route are limited to {limit} bytes")
        parts = []
        size = 0
        async for chunk in self.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"bodies on this route are limited to {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def prefix(self, limit: int) -> tuple[bytes, AsyncIterator[bytes] | None]:
        """The body if it is at most `limit` bytes (and None); else its first part and an
        iterator over the whole of it, that part first (for a body that must be streamed)."""
        stream = self.stream()
        parts: list[bytes] = []
        size = 0
        async for chunk in stream:
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"", chained(parts, stream)
        return b"".join(parts), None

    def stream(self) -> AsyncIterator[bytes]:
        """The body as it arrives (within `body_timeout` between chunks)."""
        return request_stream(self)


class Responder:
    """How a handler answers: `send` a whole answer, or `start`, `write`... `end` to stream."""

    __slots__ = ("_chunked", "_conn", "_request", "finished", "started", "status")

    def __init__(self, conn: _Connection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self._chunked = False
        self.started = False
        self.finished = False
        self.status = 0

    def _head(
        self, status: int, reason: str | None, headers: Iterable[tuple[str, str]], framing: str
    ) -> bytes:
        self.started = True
        self.status = status
        conn = self._conn
        request = self._request
        if conn.closing or not request.keep_alive or not request.body_complete:
            conn.closing = True
            framing += "Connection: close\r\n"
        elif request.version == "1.0":
            framing += "Connection: keep-alive\r\n"
        start = f"HTTP/1.1 {status} {reason or reason_for(status)}"
        try:
            return head_bytes(start, headers, framing)
        except HeaderInjection:
            log.warning("answer_header_refused", status=status)
            self.status = 502
            return head_bytes("HTTP/1.1 502 Bad Gateway", (), framing + "Content-Length: 0\r\n")

    def send(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        reason: str | None = None,
        length: int | None = None,
    ) -> None:
        """A whole answer in one write. `length` is the Content-Length to announce for HEAD."""
        if self.started:
            raise RuntimeError("the answer has started already")
        no_body = status in (204, 304) or 100 <= status < 200
        size = len(body) if length is None else length
        framing = "" if no_body else f"Content-Length: {size}\r\n"
        head = self._head(status, reason, headers, framing)
        if self._request.method == "HEAD" or no_body:
            self._conn.write(head)
        else:
            self._conn.write(head + body)
        self.finished = True

    def start(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        *,
        length: int | None,
        reason: str | None = None,
    ) -> None:
        """The head of a streamed answer: Content-Length when known, else chunked (or, for an
        HTTP/1.0 client, the end of the connection)."""
        if self.started:
            raise RuntimeError("the answer has started already")
        request = self._request
        if length is not None:
            framing = f"Content-Length: {length}\r\n"
        elif request.version == "1.1" and request.method != "HEAD":
            framing = "Transfer-Encoding: chunked\r\n"
            self._chunked = True
        else:
            framing = ""
            self._conn.closing = True
        self._conn.write(self._head(status, reason, headers, framing))
        if request.method == "HEAD":
            self.finished = True

    async def write(self, chunk: bytes) -> None:
        if self.finished or not chunk:
            return
        conn = self._conn
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            conn.write(chunk)
        await conn.drain()

    async def end(self) -> None:
        if self.finished:
            return
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        self.finished = True
        await self._conn.drain()

    def abort(self) -> None:
        """The answer cannot be completed honestly (its source failed mid-body): cut the
        connection so the client sees a truncated answer, not a complete wrong one."""
        self._conn.closing = True
        self._conn.abort()


def problem_body(status: int, kind: str, title: str, detail: str, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "type": f"urn:cutover:problem:{kind}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return orjson.dumps(body)


class _HeadTooLarge(Exception):
    pass


class _Connection(WriteFlow):
    """One client connection: parses, queues, hands requests to the handler in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.closing = False
        self.closed = False
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._parsing: Request | None = None  # headers in, body still arriving
        self.current: Request | None = None
        self._queue: deque[Request] = deque()
        self._paused: set[str] = set()
        # deadlines, checked by HttpServer's sweep (None: not in that state)
        self.head_since: float | None = None
        self.idle_since: float | None = None
        self.body_wait_since: float | None = None
        self.write_wait_since: float | None = None
        self._any_byte = False
        self._head_begun = False  # a request's first bytes are in, its head is not complete
        # the connection's worker task (see _serve): finishing a request, or waiting for the next
        self._serving = False
        self._handoff: Request | None = None
        self._next: asyncio.Future[Request | None] | None = None

    # -- transport events -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast("asyncio.Transport", transport)
        transport = self.transport
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            server.refused["connections"] += 1
            transport.write(
                _canned(503, "overloaded", "Too many connections", "try again shortly", retry=True)
            )
            transport.close()
            self.closed = True
            return
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head_since = time.monotonic()  # a new connection must say something soon

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._any_byte = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self._refuse(cause)
            else:
                log.error("http_callback_failed", error=repr(cause))
                self._refuse(BadRequest("the request could not be read"))
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(f"malformed request: {exc}"))

    def eof_received(self) -> bool:
        parsing = self._parsing
        if parsing is not None:
            parsing._body.fail(ClientGone())
        # keep our side open while an answer is being produced; close after it
        self.closing = True
        return not (self.current is None and not self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._release_worker()
        for request in (self._parsing, self.current, *self._queue):
            if request is not None:
                request._body.fail(ClientGone())
        self._drain_failed(ClientGone())

    # -- parser callbacks (httptools) -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._fields = []
        self._head_size = 0
        self._head_begun = True
        if self.head_since is None:  # (a new connection's clock started when it opened)
            self.head_since = time.monotonic()
        self.idle_since = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_bytes:
            raise UriTooLong(f"request targets are limited to {self.limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # runs for every header of every request: the checks are inline, not a call each
        fields = self._fields
        fields.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_header_bytes or len(fields) > self.limits.max_headers:
            raise self._too_large()

    def _too_large(self) -> HeadersTooLarge:
        limits = self.limits
        if len(self._fields) > limits.max_headers:
            return HeadersTooLarge(f"at most {limits.max_headers} header fields")
        return HeadersTooLarge(
            f"the request line and headers are limited to {limits.max_header_bytes} bytes"
        )

    def on_headers_complete(self) -> None:
        parser = self._parser
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise BadRequest("CONNECT is not proxied")
        version = parser.get_http_version()
        if version not in _VERSIONS:
            if version.startswith("0."):
                raise BadRequest("HTTP/0.9 requests are not accepted")
            raise VersionNotSupported(f"HTTP/{version} is not spoken here; HTTP/1.1 is")
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._fields]
        )
        if "Transfer-Encoding" in headers:
            codings = headers.getall("Transfer-Encoding")
            if version == "1.0":  # RFC 9112 §6.1: faulty framing, whatever else it says
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            if len(codings) != 1 or codings[0].strip().lower() != "chunked":
                raise BadRequest("Transfer-Encoding other than 'chunked' is not accepted")
        hosts = headers.getall("Host", ())
        if len(hosts) > 1 or (version == "1.1" and not hosts):
            raise BadRequest("an HTTP/1.1 request has exactly one Host header")
        if hosts and not _HOST.match(hosts[0]):
            raise BadRequest("the Host header is not a host[:port]")
        target = b"".join(self._url).decode("latin-1")
        if not target.startswith("/") or "#" in target:
            raise BadRequest(
                "the request target must be a path (origin-form: no scheme, host or fragment)"
            )
        request = Request(self, method, target, version, headers, parser.should_keep_alive())
        length = request.content_length
        if length is not None and length > self.limits.max_body:
            raise PayloadTooLarge(f"bodies are limited to {self.limits.max_body} bytes")
        self.head_since = None
        self._head_begun = False
        self._parsing = request
        if self.current is None:
            self._start(request)
        else:
            self._queue.append(request)
            self.pause("pipeline")

    def on_body(self, body: bytes) -> None:
        parsing = self._parsing
        if parsing is not None:
            parsing._body.feed(body, self.limits.max_body)

    def on_message_complete(self) -> None:
        parsing = self._parsing
        if parsing is not None:
            parsing._body.finish()
            self._parsing = None

    # -- handling ---------------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        server = self.server
        self.current = request
        self.idle_since = None
        if server.in_flight >= self.limits.max_in_flight:
            server.refused["in_flight"] += 1
            self._answer_now(request, Overloaded("too many requests in flight; retry shortly"))
            return
        server.in_flight += 1
        if server.gate is not None:
            server.gate.enter()
        if self._serving:  # the worker is finishing the request before (pipelined): it takes it
            self._handoff = request
            return
        waiter = self._next
        if waiter is not None:  # the worker waits for this connection's next request
            self._next = None
            waiter.set_result(request)
            return
        task = server.loop.create_task(self._serve(request))
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)

    async def _serve(self, request: Request | None) -> None:
        """The connection's worker: its requests one after the other, in one task for as long
        as the connection is kept alive. A task per request cost ~3 µs on this kind of host
        (creating it, asyncio's registry of tasks, its done callbacks); with it, and with
        per-request values as plain dataclasses, went 5.5 % of a pass-through request's
        instructions."""
        while request is not None:
            self._serving = True
            try:
                await self._run(request)  # which ends in _done: it may hand the next one over
            finally:
                self._serving = False
            request, self._handoff = self._handoff, None
            if request is None and not (self.closed or self.closing):
                waiter = self._next = self.server.loop.create_future()
                request = await waiter  # _start, or None once the connection goes

    def _release_worker(self) -> None:
        """The connection is gone: a worker waiting for its next request ends."""
        waiter = self._next
        if waiter is not None:
            self._next = None
            if not waiter.done():
                waiter.set_result(None)

    async def _run(self, request: Request) -> None:
        respond = Responder(self, request)
        try:
            await self.server.handler(request, respond)
        except Exception:  # the handler's own boundary failed: a bug costs one request
            log.exception("request_failed", method=request.method)
            if not respond.started:
                respond.send(
                    500,
                    _problem_headers(),
                    problem_body(500, "internal", "Internal error", "see cutover's log"),
                )
            else:
                respond.abort()
        finally:
            self.server.in_flight -= 1
            if self.server.gate is not None:
                self.server.gate.leave()
            transport = self.transport
            gone = self.closed or transport is None or transport.is_closing()
            if respond.started and not respond.finished:
                respond.abort()
            elif not respond.started and not gone:  # a handler that forgot to answer: a bug
                respond.send(500, _problem_headers(), b"")
            self._done()

    def _answer_now(self, request: Request, error: RequestRejected) -> None:
        """Answer without a handler (the server's own refusals)."""
        respond = Responder(self, request)
        extra = "Retry-After: 1\r\n" if isinstance(error, Overloaded) else ""
        body = problem_body(error.status, error.kind, error.title, str(error))
        head = respond._head(
            error.status, None, _problem_headers(), f"{extra}Content-Length: {len(body)}\r\n"
        )
        self.write(head + body)
        respond.finished = True
        self._done()

    def _done(self) -> None:
        """The current answer is out: the next request, an idle keep-alive, or the end."""
        self.current = None
        if self.closed:
            return
        if self.closing:
            self.close()
            return
        if self._queue:
            self._start(self._queue.popleft())
            return
        self.resume("pipeline")
        if self._parsing is None and self.head_since is None:
            self.idle_since = time.monotonic()
        # else a head is arriving (its deadline runs), or a body (the handler's wait bounds it)

    def _refuse(self, error: RequestRejected) -> None:
        """A request the server will not hand on: answer it (when no answer is being written)
        and close."""
        self.closing = True
        self.pause("refused")
        self.server.refused[_REFUSAL_COUNTER.get(type(error), "malformed")] += 1
        parsing = self._parsing
        if parsing is not None:
            parsing._body.fail(error)
        if self.current is None and not self._queue:
            status, body = (
                error.status,
                problem_body(error.status, error.kind, error.title, str(error)),
            )
            self.write(
                head_bytes(
                    f"HTTP/1.1 {status} {reason_for(status)}",
                    _problem_headers(),
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n",
                )
                + body
            )
            self.close()

    def _upgrade(self) -> None:
        """llhttp stops at a protocol switch. CONNECT is refused; an Upgrade offer on a normal
        request is declined by answering it as HTTP/1.1 and closing after."""
        if self._parser.get_method() == b"CONNECT":
            self._refuse(BadRequest("CONNECT is not proxied"))
            return
        self.closing = True
        self.pause("upgrade")

    def expired(self, now: float) -> None:
        limits = self.limits
        if (
            self.head_since is not None
            and self.current is None
            and now - self.head_since > limits.header_timeout
        ):
            if self._any_byte:
                self._refuse(
                    RequestTimeout(f"the request head took over {limits.header_timeout:g}s")
                )
            else:
                self.close()  # never said a word
            return
        if self.idle_since is not None and now - self.idle_since > limits.keepalive_timeout:
            self.close()
            return
        if self.body_wait_since is not None and now - self.body_wait_since > limits.body_timeout:
            self.server.refused["slow_body"] += 1
            self.closing = True
            for request in (self._parsing, self.current):
                if request is not None:
                    request._body.fail(RequestTimeout(f"no body data for {limits.body_timeout:g}s"))
            return
        if self.write_wait_since is not None and now - self.write_wait_since > limits.body_timeout:
            self.server.refused["slow_reader"] += 1
            self.abort()

    # -- plumbing ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full; ClientGone once it is gone (a
        transport closing under us stops taking writes before it reports the loss)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ClientGone
        if not self._writing_paused:
            return
        drained = self._drained = self.server.loop.create_future()
        self.write_wait_since = time.monotonic()
        try:
            await drained
        finally:
            self.write_wait_since = None
            self._drained = None

    def pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    @property
    def idle(self) -> bool:
        """No request on it at all: none being handled, queued, read, or begun."""
        return (
            self.current is None
            and not self._queue
            and self._parsing is None
            and not self._head_begun
        )


#: which `HttpServer.refused` counter a refusal goes to (anything else: "malformed")
_REFUSAL_COUNTER: Final[dict[type[RequestRejected], str]] = {
    HeadersTooLarge: "headers",
    UriTooLong: "headers",
    PayloadTooLarge: "body",
    RequestTimeout: "slow_head",
}


def _problem_headers() -> list[tuple[str, str]]:
    return [("Content-Type", PROBLEM_TYPE)]


def _canned(status: int, kind: str, title: str, detail: str, *, retry: bool = False) -> bytes:
    body = problem_body(status, kind, title, detail)
    extra = "Retry-After: 1\r\n" if retry else ""
    return (
        head_bytes(
            f"HTTP/1.1 {status} {reason_for(status)}",
            _problem_headers(),
            f"{extra}Content-Length: {len(body)}\r\nConnection: close\r\n",
        )
        + body
    )


class HttpServer:
    """Owns the listening socket, the connections, and the tasks running the handler."""

    def __init__(self, handler: Handler, limits: Limits, gate: IdleGate | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.gate = gate  # told when requests start and end: comparisons wait for idle
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.refused: dict[str, int] = dict.fromkeys(
            ("malformed", "headers", "body", "slow_head", "slow_body", "slow_reader"), 0
        ) | {"connections": 0, "in_flight": 0}
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    async def start(self, host: str, port: int, *, reuse_port: bool, backlog: int = 2048) -> int:
        self._server = await self.loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=backlog,
        )
        self._sweeper = self.loop.call_later(SWEEP_EVERY, self._sweep)
        sockets = cast(Any, self._server).sockets  # a list on uvloop, a tuple by its types
        return int(sockets[0].getsockname()[1]) if sockets else port

    def set_limits(self, limits: Limits) -> None:
        """New connections take these; open ones keep theirs (a reload is not a reconnect)."""
        self.limits = limits

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.expired(now)
        self._sweeper = self.loop.call_later(SWEEP_EVERY, self._sweep)

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "in_flight": self.in_flight,
            "refused": dict(self.refused),
        }

    async def shutdown(self, timeout: float) -> int:
        """Stop accepting, close idle connections, let the requests being handled finish
        (their connections close after their answers), then cut what is left. Returns how
        many requests were still running at the deadline."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.closing = True
        # bytes a client sent before the signal may still wait in the socket: a connection
        # that is about to become busy gets a moment to say so before idle ones are closed
        await asyncio.sleep(SHUTDOWN_GRACE)
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        # a request whose first bytes are in is in flight too: its head gets `header_timeout`
        # to complete, then it is handled like the others
        deadline = self.loop.time() + timeout
        while self.tasks or any(not c.idle and not c.closed for c in self.connections):
            left = deadline - self.loop.time()
            if left <= 0:
                break
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=min(left, SHUTDOWN_POLL))
            else:
                await asyncio.sleep(min(left, SHUTDOWN_POLL))
        # still handling a request (a worker waiting for a next request that will not come is
        # not one of them: it ends with its connection)
        pending = [conn for conn in self.connections if conn.current is not None]
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        return len(pending)
