"""Header hygiene for both directions of the proxy (RFC 9110 §7.6.1, PITFALLS.md).

Order matters: first everything the client's Connection header names is removed, then the fixed
hop-by-hop set, and only then does cutover add its own headers, so that a client cannot make
cutover delete them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, istr

HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    )
)
#: never copied from a client to an upstream: cutover sets or frames these itself
_REQUEST_DROP = HOP_BY_HOP | frozenset(
    istr(h)
    for h in (
        "Host",
        "Content-Length",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Request-ID",
        "Forwarded",
        "Expect",
    )
)
#: the client's credentials: never sent to a secondary platform
CREDENTIALS = frozenset(istr(h) for h in ("Authorization", "Cookie", "Proxy-Authorization"))
_RESPONSE_DROP = HOP_BY_HOP | frozenset(istr(h) for h in ("Content-Length",))

REQUEST_ID = istr("X-Request-ID")
PLATFORM = istr("X-Cutover-Platform")
MIRROR = istr("X-Cutover-Mirror")
_CUTOVER_PREFIX = "x-cutover-"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def connection_named(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names listed in Connection (lower-case): hop-by-hop for this message only."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def new_request_id() -> str:
    return os.urandom(12).hex()


def request_id_of(headers: Mapping[str, str]) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one (ids end up in logs)."""
    value = headers.get(REQUEST_ID)
    if value is not None and _REQUEST_ID_OK.match(value):
        return value
    return new_request_id()


def upstream_request_headers(
    client: Iterable[tuple[str, str]],
    named: frozenset[str],
    platform_headers: tuple[tuple[str, str], ...],
    *,
    secondary: bool,
) -> CIMultiDict[str]:
    """The client's end-to-end headers, with each platform's own credentials in place of the
    client's; a secondary never receives the client's credentials at all."""
    replaced = {istr(name) for name, _ in platform_headers}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client:
        key = istr(name)
        if (
            key in _REQUEST_DROP
            or key in replaced
            or (secondary and key in CREDENTIALS)
            or (named and key.lower() in named)
            or key.lower().startswith(_CUTOVER_PREFIX)
        ):
            continue
        out.add(key, value)
    for name, value in platform_headers:
        out.add(name, value)
    return out


def add_forwarding(
    headers: CIMultiDict[str], *, peer: str | None, proto: str, host: str | None, request_id: str
) -> None:
    """X-Forwarded-* as cutover saw the request. The client's own X-Forwarded-For is replaced,
    not extended: cutover does not trust what an untrusted peer says about its path."""
    if peer:
        headers[istr("X-Forwarded-For")] = peer
    headers[istr("X-Forwarded-Proto")] = proto
    if host:
        headers[istr("X-Forwarded-Host")] = host
    headers[REQUEST_ID] = request_id


def client_response_headers(
    upstream: Iterable[tuple[str, str]], named: frozenset[str]
) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream:
        key = istr(name)
        if (
            key in _RESPONSE_DROP
            or (named and key.lower() in named)
            or key.lower().startswith(_CUTOVER_PREFIX)
        ):
            continue
        out.add(key, value)
    return out
