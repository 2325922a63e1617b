"""cutover's exception tree. Low-level errors are mapped into it in one place each
(`proxy.http1.client` for the network), and one boundary turns them into answers.

    CutoverError
    ├── ConfigError                 routes.yaml cannot run (proxy.config.load)
    ├── ClientGone                  the client hung up mid-answer; nobody left to tell
    ├── RequestRejected             the client's request is refused before any upstream sees it
    │   ├── BadRequest              400: malformed path, identity or framing
    │   ├── PayloadTooLarge         413
    │   ├── RequestTimeout          408: the head or the body did not come in time
    │   ├── HeadersTooLarge         431
    │   ├── UriTooLong              414
    │   ├── VersionNotSupported     505: neither HTTP/1.0 nor HTTP/1.1
    │   ├── Overloaded              503: too many requests in flight (Retry-After)
    │   ├── NoRoute                 404
    │   ├── OutboxUnavailable       503: a dual-write cannot be journaled, so it is not accepted
    │   └── IdMapUnavailable        503: the id map's store is down (proxy.translate)
    └── UpstreamError               an upstream failed; the answer names the route and platform
        ├── UpstreamConnectError    502: reset or closed early (the request may have arrived)
        │   └── UpstreamRefused     502: could not connect (the request certainly did not arrive)
        ├── UpstreamProtocolError   502: not valid HTTP, or not what cutover can relay
        └── UpstreamTimeout         504: connect or answer past the upstream's timeout
"""

from __future__ import annotations


class CutoverError(Exception):
    """Base of everything cutover raises on purpose."""


class ClientGone(CutoverError):
    """Raised in place of the server's ConnectionResetError, not to blame the upstream for it."""


class RequestRejected(CutoverError):
    status = 400
    kind = "bad-request"
    title = "Bad request"


class BadRequest(RequestRejected):
    pass


class PayloadTooLarge(RequestRejected):
    status = 413
    kind = "payload-too-large"
    title = "Payload too large"


class RequestTimeout(RequestRejected):
    status = 408
    kind = "request-timeout"
    title = "Request timeout"


class HeadersTooLarge(RequestRejected):
    status = 431
    kind = "headers-too-large"
    title = "Request header fields too large"


class UriTooLong(RequestRejected):
    status = 414
    kind = "uri-too-long"
    title = "URI too long"


class VersionNotSupported(RequestRejected):
    status = 505
    kind = "http-version-not-supported"
    title = "HTTP version not supported"


class Overloaded(RequestRejected):
    status = 503
    kind = "overloaded"
    title = "Too many requests in flight"


class NoRoute(RequestRejected):
    status = 404
    kind = "no-route"
    title = "No route"


class OutboxUnavailable(RequestRejected):
    status = 503
    kind = "outbox-unavailable"
    title = "Outbox unavailable"


class UpstreamError(CutoverError):
    status = 502
    kind = "upstream-error"
    title = "Upstream error"

    def __init__(self, upstream: str, detail: str) -> None:
        super().__init__(f"{upstream}: {detail}")
        self.upstream = upstream
        self.detail = detail


class UpstreamConnectError(UpstreamError):
    kind = "upstream-unreachable"
    title = "Upstream unreachable"


class UpstreamRefused(UpstreamConnectError):
    """Connecting failed, so nothing was sent: a write can be forgotten safely."""


class UpstreamProtocolError(UpstreamError):
    kind = "upstream-bad-response"
    title = "Upstream answered invalid HTTP"


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "upstream-timeout"
    title = "Upstream timed out"
