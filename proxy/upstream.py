"""Talking to the platforms: one pooled ClientSession per upstream and role, and the one place
where aiohttp's client errors become cutover's `UpstreamError`s.

Each upstream gets two sessions with separate connection pools: one for primary traffic and one
for secondary (mirror, dual-write) traffic, so that a slow secondary can never take connections a
client is waiting for (PITFALLS.md: a 2 s secondary sharing the pool pushed the primary's p99 from
5 ms to 354 ms). Client defaults are set for a proxy, not a browser: no decompression, no
redirects, no cookie jar, no invented headers, explicit timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import aiohttp
from aiohttp import ClientResponse, ClientSession, ClientTimeout, DummyCookieJar, TCPConnector
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from proxy.config.table import RouteTable, Upstream
from proxy.errors import (
    CutoverError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
)

Role = Literal["primary", "secondary"]
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
#: response header lines longer than this are refused rather than relayed
MAX_UPSTREAM_FIELD_SIZE = 16 * 1024


def mapped_error(exc: BaseException, upstream: Upstream) -> CutoverError | None:
    """The one mapping from aiohttp/OS errors to cutover's upstream errors (None: not ours to
    map: a cutover error already, a cancellation, or a bug)."""
    if isinstance(exc, CutoverError):
        return None
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(upstream.name, f"no answer within {upstream.timeout:g}s")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or exc.os_error
        return UpstreamRefused(upstream.name, f"cannot connect: {reason}")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)):
        return UpstreamConnectError(upstream.name, "connection closed or reset")
    if isinstance(
        exc, (aiohttp.ClientResponseError, aiohttp.ClientPayloadError, HttpProcessingError)
    ):
        return UpstreamProtocolError(upstream.name, "invalid HTTP response")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamConnectError(upstream.name, type(exc).__name__)
    return None


@contextmanager
def map_client_errors(upstream: Upstream) -> Iterator[None]:
    """`mapped_error` for a block."""
    try:
        yield
    except Exception as exc:
        mapped = mapped_error(exc, upstream)
        if mapped is None:
            raise
        raise mapped from exc


class Call:
    """One request to an upstream as an async context manager: the response once its head is
    in; errors (while sending, or while the caller reads the body) mapped to `UpstreamError`s;
    the connection back to the pool (or closed) on exit. A class rather than a generator-based
    context manager: this runs for every request (bench/README.md, profile notes)."""

    __slots__ = ("_data", "_headers", "_method", "_response", "_session", "_upstream", "_url")

    def __init__(
        self,
        session: ClientSession,
        upstream: Upstream,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        data: Any,
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._method = method
        self._url = url
        self._headers = headers
        self._data = data
        self._response: ClientResponse | None = None

    async def __aenter__(self) -> ClientResponse:
        try:
            self._response = await self._session.request(
                self._method,
                self._url,
                headers=self._headers,
                data=self._data,
                allow_redirects=False,
                compress=None,
            )
        except Exception as exc:
            mapped = mapped_error(exc, self._upstream)
            if mapped is None:
                raise
            raise mapped from exc
        return self._response

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if self._response is not None:
            self._response.release()
        if exc is not None and isinstance(exc, Exception):
            mapped = mapped_error(exc, self._upstream)
            if mapped is not None:
                raise mapped from exc


class UpstreamClients:
    """Owns the sessions; built at start-up, re-synced on reload, closed at shutdown."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str, Role], tuple[Upstream, ClientSession]] = {}

    def sync(self, table: RouteTable) -> list[ClientSession]:
        """Open sessions for new or changed upstreams; return the ones no longer needed (the
        caller closes them once requests in flight on them are done)."""
        wanted: dict[tuple[str, str, Role], Upstream] = {}
        for (side, api), upstream in table.upstreams.items():
            for role in ("primary", "secondary"):
                wanted[(side, api, role)] = upstream
        stale = []
        for key, (current, session) in list(self._sessions.items()):
            if wanted.get(key) != current:
                stale.append(session)
                del self._sessions[key]
        for key, upstream in wanted.items():
            if key not in self._sessions:
                self._sessions[key] = (upstream, self._open(upstream, key[2]))
        return stale

    @staticmethod
    def _open(upstream: Upstream, role: Role) -> ClientSession:
        limit = upstream.pool if role == "primary" else max(upstream.mirror.concurrency, 1)
        connector = TCPConnector(
            limit=limit,
            limit_per_host=limit,
            ttl_dns_cache=60,
            keepalive_timeout=30,
            enable_cleanup_closed=False,
        )
        return ClientSession(
            connector=connector,
            timeout=ClientTimeout(
                total=None,
                connect=upstream.timeout,  # a free pooled connection, or a new one
                sock_connect=upstream.connect_timeout,
                sock_read=upstream.timeout,  # the head after sending, each chunk after that
            ),
            auto_decompress=False,
            cookie_jar=DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
            raise_for_status=False,
            max_field_size=MAX_UPSTREAM_FIELD_SIZE,
            read_bufsize=2**16,
        )

    def session(self, upstream: Upstream, role: Role) -> ClientSession:
        return self._sessions[(upstream.side, upstream.api, role)][1]

    def request(
        self,
        upstream: Upstream,
        role: Role,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        data: Any = None,
    ) -> Call:
        """One request: `async with clients.request(...) as response:`. The head must arrive
        within the upstream's timeout and so must every chunk of the body after it (the
        session's sock_read); waiting for a pooled connection and connecting are bounded too
        (connect, sock_connect). The body is read by the caller inside the block."""
        url = URL(upstream.url + target, encoded=True)
        return Call(self.session(upstream, role), upstream, method, url, headers, data)

    async def close(self) -> None:
        sessions = [session for _, session in self._sessions.values()]
        self._sessions.clear()
        await close_sessions(sessions)


async def close_sessions(sessions: list[ClientSession]) -> None:
    if sessions:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
