"""Header hygiene for both directions of the proxy (RFC 9110 §7.6.1, PITFALLS.md).

Order matters: first everything the client's Connection header names is removed, then the fixed
hop-by-hop set, and only then does cutover add its own headers, so that a client cannot make
cutover delete them.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, istr

HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    )
)
#: never copied from a client to an upstream: cutover sets or frames these itself
_REQUEST_DROP = HOP_BY_HOP | frozenset(
    (
        "host",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "forwarded",
        "expect",
    )
)
#: the client's credentials: never sent to a secondary platform
CREDENTIALS = frozenset(("authorization", "cookie", "proxy-authorization"))
_RESPONSE_DROP = HOP_BY_HOP | frozenset(("content-length",))
# Header names are compared as lower-case `str`s against frozensets: cheaper per header than
# building an `istr` for each (this runs for every header of every request).

REQUEST_ID = istr("X-Request-ID")
PLATFORM = istr("X-Cutover-Platform")
MIRROR = istr("X-Cutover-Mirror")
_CUTOVER_PREFIX = "x-cutover-"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def connection_named(headers: Mapping[str, str]) -> frozenset[str]:
    """Header names listed in Connection (lower-case): hop-by-hop for this message only."""
    value = headers.get("Connection")
    if not value:
        return _NO_NAMES
    named = _CONNECTION_NAMED.get(value)  # nearly always "keep-alive" or "close"
    if named is None:
        named = frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        if len(_CONNECTION_NAMED) < 64:  # a peer's own values are not remembered past a few
            _CONNECTION_NAMED[value] = named
    return named


_NO_NAMES: frozenset[str] = frozenset()
_CONNECTION_NAMED: dict[str, frozenset[str]] = {}


class RequestIds:
    """X-Request-ID: the client's when it is a sane token (ids end up in logs), else a new one.

    New ids are a random per-process prefix and a counter (24 hex digits, like 12 random
    bytes): unique across a fleet without a getrandom syscall per request."""

    __slots__ = ("_next", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._next = itertools.count(1).__next__

    def new(self) -> str:
        return f"{self._prefix}{self._next():012x}"

    def of(self, headers: Mapping[str, str]) -> str:
        value = headers.get(REQUEST_ID)
        if value is not None and _REQUEST_ID_OK.match(value):
            return value
        return self.new()


def upstream_request_headers(
    client: Iterable[tuple[str, str]],
    named: frozenset[str],
    platform_headers: tuple[tuple[str, str], ...],
    *,
    secondary: bool,
) -> CIMultiDict[str]:
    """The client's end-to-end headers, with each platform's own credentials in place of the
    client's; a secondary never receives the client's credentials at all."""
    replaced = _names(platform_headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client:
        key = name.lower()
        if (
            key in _REQUEST_DROP
            or key in replaced
            or (secondary and key in CREDENTIALS)
            or (named and key in named)
            or key.startswith(_CUTOVER_PREFIX)
        ):
            continue
        out.add(name, value)
    for name, value in platform_headers:
        out.add(name, value)
    return out


_NAMES: dict[tuple[tuple[str, str], ...], frozenset[str]] = {}


def _names(headers: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """The lower-case names of a platform's configured headers, computed once per config."""
    names = _NAMES.get(headers)
    if names is None:
        if len(_NAMES) > 256:  # a long-lived process that reloaded many configs
            _NAMES.clear()
        names = _NAMES[headers] = frozenset(name.lower() for name, _ in headers)
    return names


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a trusted proxy in front of cutover said about the request (server.trusted_proxies):
    the client addresses it saw, and the scheme and host the client used."""

    for_: str | None
    proto: str | None
    host: str | None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Forwarded:
        return cls(headers.get(_XFF), headers.get(_XFP), headers.get(_XFH))


def add_forwarding(
    headers: CIMultiDict[str],
    *,
    peer: str | None,
    proto: str,
    host: str | None,
    request_id: str,
    trusted: Forwarded | None = None,
) -> None:
    """X-Forwarded-* as cutover saw the request. From an untrusted peer the client's own
    X-Forwarded-* are replaced, not extended: nothing it says about its path is believed.
    From a trusted proxy (`trusted`), its list is kept and the proxy's address added to it."""
    if trusted is not None:
        if trusted.for_:
            peer = f"{trusted.for_}, {peer}" if peer else trusted.for_
        proto = trusted.proto or proto
        host = trusted.host or host
    if peer:
        headers[_XFF] = peer
    headers[_XFP] = proto
    if host:
        headers[_XFH] = host
    headers[REQUEST_ID] = request_id


_XFF = istr("X-Forwarded-For")
_XFP = istr("X-Forwarded-Proto")
_XFH = istr("X-Forwarded-Host")


def client_response_headers(
    upstream: Iterable[tuple[str, str]], named: frozenset[str]
) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream:
        key = name.lower()
        if key in _RESPONSE_DROP or (named and key in named) or key.startswith(_CUTOVER_PREFIX):
            continue
        out.add(name, value)
    return out
