"""Connections from cutover to one platform API: a bounded keep-alive pool per (upstream, role).

A request is `async with pool.request(method, target, headers, body) as answer:`: the answer's
head is in when the block starts; its body is read inside the block (`read()` or `chunks()`);
the connection goes back to the pool on exit when the answer was read whole and the platform
keeps it alive, and is closed otherwise. Every wait is bounded:

    a pool slot           `timeout`          (all `limit` connections busy)
    connecting            `connect_timeout`
    the answer's head     `timeout`, from the last byte of the request
    each body chunk       `timeout`, between two chunks (the platform may be streaming a file)
    sending a body        `timeout`, while the platform's socket stays full

The last three are deadlines on the connection, checked every TICK (0.1 s) by one timer per
busy pool, so they fire up to 0.1 s late.

Errors are mapped here, once, into proxy.errors' Upstream* (STYLE.md §6):

    UpstreamRefused        the connection could not be made: nothing was sent
    UpstreamTimeout        one of the waits above ran out
    UpstreamConnectError   reset or closed before the answer was complete
    UpstreamProtocolError  not HTTP/1.x as llhttp reads it (strict mode), a head over the limits,
                           or a 101 nobody asked for

A pooled connection the platform closed while it sat idle fails without a byte of answer; such
a request is sent again once on a new connection when that is safe (Go's net/http rule: no body
or a body in memory, and a method that is safe to repeat or an Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Final, cast

import httptools
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
)
from proxy.http1.streams import answer_chunks
from proxy.http1.wire import BODY_METHODS, HeaderInjection, WriteFlow, head_bytes

Body = bytes | AsyncIterable[bytes] | None

#: an answer's head (status line and headers) larger than this, or with more fields, is refused
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEAD_FIELDS: Final = 200
#: unread body bytes held per connection before the socket stops being read
READ_HIGH_WATER: Final = 256 * 1024
READ_LOW_WATER: Final = 64 * 1024
#: an idle pooled connection older than this is closed instead of reused
KEEPALIVE_S: Final = 30.0
#: how often busy connections are checked against their deadlines: timeouts fire up to this late
TICK: Final = 0.1
#: methods that may be sent twice when a pooled connection turns out to be dead (RFC 9110 §9.2.2
#: "idempotent", narrowed as Go does: PUT and DELETE only with an Idempotency-Key)
REPLAYABLE: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _TLS  # noqa: PLW0603 - one default context per process, made on first use
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class _Stale(Exception):
    """A reused connection died before the answer's first byte."""


class Answer:
    """One response from a platform. `status`, `reason`, `headers` and `content_length` are
    there at once; the body comes through `read()` or `chunks()`."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_timeout",
        "_waiter",
        "complete",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
    )

    def __init__(
        self,
        conn: _Conn,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        content_length: int | None,
        keep_alive: bool,
        timeout: float,
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.complete = False
        self._timeout = timeout
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- fed by the connection ------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > READ_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the caller ---------------------------------------------------------------------

    def take(self) -> bytes:
        """The whole body of an answer that is `complete` (it all came in; the usual case for
        an answer of a few KiB), without a coroutine to wait for it."""
        assert self.complete, "take() is for an answer that is complete"
        if self._error is not None:  # it failed first (a timeout), then the connection closed
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def read(self) -> bytes:
        """The whole body (callers bound its size through the answer's Content-Length or by
        reading `chunks()` themselves)."""
        if self.complete and self._error is None:
            return self.take()
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; each wait for more is bounded by the upstream's timeout."""
        return answer_chunks(self, READ_LOW_WATER)

    async def _wait(self) -> None:
        conn = self._conn
        waiter = self._waiter = conn.loop.create_future()
        conn.deadline = time.monotonic() + self._timeout
        try:
            await waiter
        finally:
            conn.deadline = 0.0
            self._waiter = None

    def release(self) -> None:
        """Back to the pool when read whole and reusable; closed otherwise."""
        conn = self._conn
        conn.pool.release(conn, self.complete and self.keep_alive and self._error is None)


class _Conn(WriteFlow):
    """One keep-alive connection to a platform; it carries one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        # made by the loop it runs on (create_connection's factory); kept, because on Python
        # 3.11 every get_running_loop() is a getpid() system call (a fork check)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.counted = True  # against the pool's limit, until discarded
        self.deadline = 0.0  # monotonic; the pool's ticker calls `expire` past it (0: none)
        self._parser: httptools.HttpResponseParser | None = None
        # the parser saw its last answer through to the end (llhttp then waits for the next
        # one): it is reused rather than made anew (~3 k instructions per exchange)
        self._parser_clean = False
        self._expecting = False  # between a request and the end of its answer
        self._head: asyncio.Future[Answer] | None = None
        self._answer: Answer | None = None
        self._received = False
        self._head_only = False
        self._timeout = 0.0
        self._reason = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._status = 0
        self._close_delimited = False
        self._reading_paused = False

    # -- transport events -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or not self._expecting:  # a platform talking out of turn
            self.abort()
            return
        self._received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._failed(
                cause
                if isinstance(cause, UpstreamError)
                else UpstreamProtocolError(self.pool.name, "invalid HTTP response")
            )
        except httptools.HttpParserError as exc:
            self._failed(UpstreamProtocolError(self.pool.name, f"invalid HTTP response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        head, answer = self._head, self._answer
        if head is not None and not head.done():
            if self.reused and not self._received:
                head.set_exception(_Stale())
            else:
                head.set_exception(
                    UpstreamConnectError(self.pool.name, "connection closed before the answer")
                )
        elif answer is not None and not answer.complete:
            if self._close_delimited and exc is None:
                answer._finish()
            else:
                answer._fail(UpstreamConnectError(self.pool.name, "connection closed mid-body"))
        self._drain_failed(UpstreamConnectError(self.pool.name, "connection closed"))
        self.pool.lost(self)

    # -- parser callbacks (httptools) ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._expecting:
            raise UpstreamProtocolError(self.pool.name, "more than one answer to one request")
        self._reason = b""
        self._fields = []
        self._head_size = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        # runs for every header of every answer: the checks are inline, not a call each
        fields = self._fields
        fields.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES or len(fields) > MAX_HEAD_FIELDS:
            raise UpstreamProtocolError(
                self.pool.name,
                f"answer head over {MAX_HEAD_BYTES} bytes or {MAX_HEAD_FIELDS} fields",
            )

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        self._status = status
        if status < 200:
            if status == 101:
                raise UpstreamProtocolError(self.pool.name, "101 Switching Protocols unasked")
            return  # 1xx: informational, the real answer follows
        headers: CIMultiDict[str] = CIMultiDict(
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._fields]
        )
        length_text = headers.get("Content-Length")
        length = int(length_text) if length_text is not None else None  # llhttp checked it
        no_body = self._head_only or status in (204, 304)
        chunked = "Transfer-Encoding" in headers
        self._close_delimited = not no_body and length is None and not chunked
        answer = Answer(
            self,
            status,
            self._reason.decode("latin-1"),
            headers,
            length,
            parser.should_keep_alive() and not self._close_delimited,
            self._timeout,
        )
        self._answer = answer
        if no_body:  # nothing follows the head (llhttp cannot be told so for HEAD)
            self._expecting = False
            answer._finish()
        head = self._head
        if head is not None and not head.done():
            head.set_result(answer)

    def on_body(self, body: bytes) -> None:
        answer = self._answer
        if answer is not None:
            answer._feed(body)

    def on_message_complete(self) -> None:
        if self._status < 200 or not self._expecting:
            return
        self._expecting = False  # anything after the answer is out of turn
        # after a HEAD, llhttp still waits for the body its Content-Length announced
        self._parser_clean = not self._head_only
        answer = self._answer
        if answer is not None:
            answer._finish()

    # -- used by the pool and the answer ---------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _failed(self, error: UpstreamError) -> None:
        head, answer = self._head, self._answer
        if head is not None and not head.done():
            head.set_exception(error)
        elif answer is not None:
            answer._fail(error)
        self._expecting = False
        self.abort()

    async def exchange(
        self, method: str, head: bytes, body: Body, length: int | None, timeout: float
    ) -> Answer:
        """Send one request and wait for the answer's head."""
        assert self.transport is not None
        if not self._parser_clean or self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_clean = False
        self._expecting = True
        self._answer = None
        self._received = False
        self._head_only = method == "HEAD"
        self._timeout = timeout
        waiter = self._head = self.loop.create_future()
        try:
            if body is None or isinstance(body, bytes):
                self.transport.write(head + body if body else head)
            else:
                self.transport.write(head)
                await self._send_stream(body, length is None)
            self.deadline = time.monotonic() + timeout
            answer: Answer = await waiter
            return answer
        finally:
            self.deadline = 0.0
            self._head = None

    def expire(self) -> None:
        """Past the deadline (the pool's ticker says so): whatever waits gets UpstreamTimeout
        and the connection is cut. Deadlines instead of a timer per request: a timer costs
        ~2 µs to arm and cancel on uvloop, and every exchange had one or two."""
        self.deadline = 0.0
        name, timeout = self.pool.name, self._timeout
        head, answer = self._head, self._answer
        if head is not None and not head.done():
            head.set_exception(UpstreamTimeout(name, f"no answer within {timeout:g}s"))
        elif answer is not None and answer._waiter is not None:
            answer._fail(UpstreamTimeout(name, f"no body data within {timeout:g}s"))
        else:
            self._drain_failed(UpstreamTimeout(name, f"could not send within {timeout:g}s"))
        self.abort()

    async def _send_stream(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        assert self.transport is not None
        async for chunk in body:
            if self.closed:
                raise UpstreamConnectError(self.pool.name, "connection closed while sending")
            if not chunk:
                continue
            self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._writing_paused:
                await self._drain()
        if chunked:
            self.transport.write(b"0\r\n\r\n")

    async def _drain(self) -> None:
        drained = self._drained = self.loop.create_future()
        self.deadline = time.monotonic() + self._timeout
        try:
            await drained
        finally:
            self.deadline = 0.0
            self._drained = None


class Pool:
    """At most `limit` connections to one upstream, reused LIFO (the warmest first)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        limit: int,
        timeout: float,
        connect_timeout: float,
        keepalive: float = KEEPALIVE_S,
    ) -> None:
        parsed = URL(url)
        self.name = name
        self.limit = limit
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.host = parsed.host or "127.0.0.1"
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.tls = parsed.scheme == "https"
        self.base_path = parsed.raw_path.rstrip("/")
        self.host_header = parsed.raw_authority
        self.open = 0  # connections counted against the limit: idle, busy and being made
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.closing = False
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._ticker: asyncio.TimerHandle | None = None

    def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Body = None,
        length: int | None = None,
    ) -> Exchange:
        return Exchange(self, method, target, headers, body, length)

    def head(
        self, method: str, target: str, headers: CIMultiDict[str], body: Body, length: int | None
    ) -> bytes:
        if body is None:
            framing = "Content-Length: 0\r\n" if method in BODY_METHODS else ""
        elif isinstance(body, bytes):
            framing = f"Content-Length: {len(body)}\r\n"
        elif length is not None:
            framing = f"Content-Length: {length}\r\n"
        else:
            framing = "Transfer-Encoding: chunked\r\n"
        if " " in target or "\r" in target or "\n" in target:
            raise UpstreamProtocolError(self.name, "not sent: a space or line break in the target")
        start = f"{method} {self.base_path}{target} HTTP/1.1\r\nHost: {self.host_header}"
        try:
            return head_bytes(start, headers.items(), framing)
        except HeaderInjection as exc:
            raise UpstreamProtocolError(self.name, f"not sent: {exc}") from None

    def reuse(self) -> _Conn | None:
        """A warm idle connection, taken at once (busy from now on); None when there is none
        and the caller must `await acquire()`. No coroutine on the usual path: two of them
        (acquire, _acquire) per upstream request were ~1 % of a shadow read."""
        conn = self._warm() if self.idle else None
        if conn is not None:
            self._busy(conn)
        return conn

    def _warm(self) -> _Conn | None:
        """The warmest idle connection still fit for reuse; the stale ones met on the way are
        discarded."""
        now = time.monotonic()
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                conn.reused = True
                return conn
            self._discard(conn)
        return None

    async def acquire(self) -> _Conn:
        conn = await self._acquire()
        self._busy(conn)
        return conn

    def _busy(self, conn: _Conn) -> None:
        self.busy.add(conn)
        if self._ticker is None:
            self._ticker = conn.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        """Every TICK while connections are busy: expire those past their deadline."""
        now = time.monotonic()
        for conn in [c for c in self.busy if c.deadline and now > c.deadline]:
            conn.expire()
        self._ticker = (
            asyncio.get_running_loop().call_later(TICK, self._tick) if self.busy else None
        )

    async def _acquire(self) -> _Conn:
        conn = self._warm()
        if conn is not None:
            return conn
        if self.open < self.limit:
            self.open += 1
            return await self._connect()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Conn | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                handed = await waiter
        except TimeoutError:
            self._pass_on(waiter)
            raise UpstreamTimeout(
                self.name, f"all {self.limit} connections busy for {self.timeout:g}s"
            ) from None
        except BaseException:
            self._pass_on(waiter)
            raise
        if handed is None:  # a slot, reserved for us, rather than a connection
            return await self._connect()
        handed.reused = True
        return handed

    def _pass_on(self, waiter: asyncio.Future[_Conn | None]) -> None:
        """A waiter gave up: what it was handed at that moment goes to the next one."""
        if not waiter.done():
            waiter.cancel()
            return
        if waiter.cancelled() or waiter.exception() is not None:
            return
        handed = waiter.result()
        if handed is not None:
            self.release(handed, True)
        else:
            self._slot_freed()  # the slot reserved for it

    async def _connect(self) -> _Conn:
        """A new connection in a slot already counted in `open`."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self),
                    self.host,
                    self.port,
                    ssl=_tls() if self.tls else None,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            self._slot_freed()
            raise UpstreamTimeout(
                self.name, f"cannot connect within {self.connect_timeout:g}s"
            ) from None
        except ssl.SSLError as exc:
            self._slot_freed()
            raise UpstreamConnectError(self.name, f"TLS: {exc.reason or exc}") from None
        except OSError as exc:
            self._slot_freed()
            raise UpstreamRefused(self.name, f"cannot connect: {exc.strerror or exc}") from None
        except BaseException:
            self._slot_freed()
            raise
        conn.reused = False
        return conn

    def release(self, conn: _Conn, reusable: bool) -> None:
        self.busy.discard(conn)
        conn.deadline = 0.0
        if reusable and not conn.closed and not self.closing:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
            return
        self._discard(conn)

    def lost(self, conn: _Conn) -> None:
        """The connection closed (either side); an idle one leaves the idle list at once."""
        if conn in self.idle:
            self.idle.remove(conn)
            self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        self.busy.discard(conn)
        conn.abort()
        if conn.counted:
            conn.counted = False
            self._slot_freed()

    def _slot_freed(self) -> None:
        """One connection fewer; a waiter, if any, gets the slot (counted for it at once, so
        nobody else takes it in between)."""
        self.open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.open += 1
                waiter.set_result(None)
                return

    def sweep(self, now: float) -> None:
        """Close idle connections past their keep-alive."""
        expired = [c for c in self.idle if now - c.idle_since >= self.keepalive]
        for conn in expired:
            self.idle.remove(conn)
            self._discard(conn)

    def close(self) -> None:
        """No more keeping: idle connections are closed now, busy ones when released. Requests
        already routed here (a reload swapped the pool out under them) still go through."""
        self.closing = True
        idle, self.idle = self.idle, []
        for conn in idle:
            self._discard(conn)


def _replayable(method: str, headers: CIMultiDict[str], body: Body) -> bool:
    if body is not None and not isinstance(body, bytes):
        return False
    return method in REPLAYABLE or "Idempotency-Key" in headers


class Exchange:
    """`async with pool.request(...) as answer:`; a class, not a generator-based context
    manager: it runs for every request."""

    __slots__ = ("_answer", "_body", "_headers", "_length", "_method", "_pool", "_target")

    def __init__(
        self,
        pool: Pool,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Body,
        length: int | None,
    ) -> None:
        self._pool = pool
        self._method = method
        self._target = target
        self._headers = headers
        self._body = body
        self._length = length
        self._answer: Answer | None = None

    async def __aenter__(self) -> Answer:
        pool = self._pool
        head = pool.head(self._method, self._target, self._headers, self._body, self._length)
        for attempt in (0, 1):
            conn = pool.reuse() or await pool.acquire()
            try:
                answer = await conn.exchange(
                    self._method, head, self._body, self._length, pool.timeout
                )
            except _Stale:
                pool.release(conn, False)
                if attempt == 0 and _replayable(self._method, self._headers, self._body):
                    continue
                raise UpstreamConnectError(
                    pool.name, "connection closed before the answer"
                ) from None
            except BaseException:
                pool.release(conn, False)
                raise
            self._answer = answer
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._answer is not None:
            self._answer.release()
            self._answer = None
