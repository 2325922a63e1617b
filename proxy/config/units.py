"""The value types of routes.yaml: durations, sizes, percentages, names, addresses.

Each is an `Annotated` type whose validator raises ValueError with a sentence a platform engineer
can act on; the loader prefixes it with the file and the place.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
MAX_DURATION = 365 * 24 * 3600.0
"""Longer is a typo, and past what the event loop's timers can hold."""
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def parse_duration(value: Any) -> float:
    """Seconds from `5s`, `250ms`, `2m`, `1h` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 5s, 250ms or 2m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) <= MAX_DURATION else math.inf
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 5s, 250ms or 2m, got {value!r}")
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"a duration of at most 365 days, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from `100MB`, `64KiB`, `1G` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 1MB or 64KiB, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        amount = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
        if not math.isfinite(amount):
            raise ValueError(f"a size must be a finite number of bytes, got {value!r}")
        size = int(amount)
    else:
        raise ValueError(f"expected a size like 1MB or 64KiB, got {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return size


def parse_percent(value: Any) -> float:
    """A percentage 0-100; fractions allowed down to 0.01 (the bucket resolution)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a percentage 0-100, got {value!r}")
    if not 0 <= value <= 100:
        raise ValueError(f"{value!r} is not a percentage 0-100")
    return float(value)


def parse_name(value: Any) -> str:
    """Names of routes, cohorts, channels, APIs: safe in metrics labels, MQTT topics and files."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"expected a name of letters, digits, '_', '-' or '.' (at most 63), got {value!r}"
        )
    return value


def parse_header_name(value: Any) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.match(value):
        raise ValueError(f"expected an HTTP header name, got {value!r}")
    return value


def parse_header_value(value: Any) -> str:
    """A header value cutover sends as configured: CR, LF or another control character in it
    would split or corrupt the request line by line (RFC 9110 §5.5 allows only HTAB)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a header value (text), got {value!r}")
    if _HEADER_VALUE_BAD.search(value):
        raise ValueError("a header value without CR, LF or other control characters")
    return value


def parse_host_port(value: Any) -> str:
    """`host:port` for a listener; `[::1]:8080` for IPv6. Port 0 picks a free port."""
    if not isinstance(value, str):
        raise ValueError(f"expected host:port, got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"expected host:port such as 0.0.0.0:8080, got {value!r}")
    return value


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Percent = Annotated[float, BeforeValidator(parse_percent)]
Name = Annotated[str, BeforeValidator(parse_name)]
HeaderName = Annotated[str, BeforeValidator(parse_header_name)]
HeaderValue = Annotated[str, BeforeValidator(parse_header_value)]
HostPort = Annotated[str, BeforeValidator(parse_host_port)]
