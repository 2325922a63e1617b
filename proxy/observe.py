"""Logging: structlog events rendered as JSON lines by orjson, with personal data hashed.

Customer keys never appear in clear: `hash_customer` turns them into a keyed hash that is the same
on every instance of a migration (so QA can follow one customer across logs) but cannot be
reversed by enumerating customer numbers without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

HASH_KEY_ENV = "CUTOVER_HASH_KEY"


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on stderr (or `stream`); one call per process, before anything logs."""
    out = stream or sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.BytesLoggerFactory(_binary(out)),
        cache_logger_on_first_use=True,
    )


def _binary(stream: TextIO) -> BinaryIO:
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else stream  # type: ignore[return-value]


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)


class CustomerHasher:
    """Keyed hash of customer keys for logs and diff records."""

    __slots__ = ("_cache", "_key")

    def __init__(self, migration: str, key: str | None = None) -> None:
        secret = key if key is not None else os.environ.get(HASH_KEY_ENV) or migration
        self._key = secret.encode()
        self._cache: dict[str, str] = {}

    def __call__(self, customer: str | None) -> str | None:
        if customer is None:
            return None
        cached = self._cache.get(customer)
        if cached is None:
            digest = hmac.new(self._key, customer.encode(), hashlib.sha256).hexdigest()[:16]
            cached = f"sha256:{digest}"
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[customer] = cached
        return cached
