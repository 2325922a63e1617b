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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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


@contextmanager
def map_client_errors(upstream: Upstream) -> Iterator[None]:
    """The one mapping from aiohttp/OS errors to cutover's upstream errors."""
    try:
        yield
    except CutoverError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(upstream.name, f"no answer within {upstream.timeout:g}s") from exc
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or exc.os_error
        raise UpstreamRefused(upstream.name, f"cannot connect: {reason}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError) as exc:
        raise UpstreamConnectError(upstream.name, "connection closed or reset") from exc
    except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError, HttpProcessingError) as exc:
        raise UpstreamProtocolError(upstream.name, "invalid HTTP response") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(upstream.name, type(exc).__name__) from exc


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
                sock_connect=upstream.connect_timeout,
                sock_read=upstream.timeout,
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

    @asynccontextmanager
    async def request(
        self,
        upstream: Upstream,
        role: Role,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        data: Any = None,
    ) -> AsyncIterator[ClientResponse]:
        """Send one request; yields the response once its headers are in (within the upstream's
        timeout). The body is read by the caller inside the block; errors while reading it are
        mapped too. The connection goes back to the pool (or is closed) when the block ends."""
        session = self.session(upstream, role)
        url = URL(upstream.url + target, encoded=True)
        with map_client_errors(upstream):
            async with asyncio.timeout(upstream.timeout):
                response = await session.request(
                    method, url, headers=headers, data=data, allow_redirects=False, compress=None
                )
            try:
                yield response
            finally:
                response.release()

    async def close(self) -> None:
        sessions = [session for _, session in self._sessions.values()]
        self._sessions.clear()
        await close_sessions(sessions)


async def close_sessions(sessions: list[ClientSession]) -> None:
    if sessions:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
