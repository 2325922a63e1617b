"""What both halves of the HTTP/1.1 layer share: header blocks and reason phrases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

REASONS: Final[dict[int, str]] = {s.value: s.phrase for s in HTTPStatus}
#: methods whose requests have a body even when it is empty (RFC 9110 §8.6: send CL 0)
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


class HeaderInjection(ValueError):
    """A header name or value would break the message's framing (CR, LF or NUL in it)."""


def reason_for(status: int) -> str:
    return REASONS.get(status, "Unknown")


def head_bytes(start_line: str, headers: Iterable[tuple[str, str]], extra: str = "") -> bytes:
    """A message head: start line, headers, `extra` (already formatted lines), blank line.

    Every value crossed a trust boundary (a client, a platform, a translation), so a CR, LF or
    NUL anywhere is refused rather than written: it would let a value start a header of its own.
    """
    pairs = list(map(": ".join, headers))  # in C: no Python frame per message for it
    fields = "\n".join(pairs)
    # one scan each, in C, for all of them: a line break or NUL inside any name or value
    if "\r" in fields or "\x00" in fields or fields.count("\n") != max(len(pairs) - 1, 0):
        raise HeaderInjection("a header holds a line break or NUL")
    lines = fields.replace("\n", "\r\n") + "\r\n" if fields else ""
    text = f"{start_line}\r\n{lines}{extra}\r\n"
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # a configured value beyond latin-1: send its UTF-8 bytes
        return text.encode("utf-8")


class WriteFlow(asyncio.Protocol):
    """Write-side flow control, as both kinds of connection need it: the transport says when
    its buffer passed the high-water mark and when it drained again; a writer that must not
    outrun its peer awaits `_drained` in between."""

    _writing_paused = False
    _drained: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _drain_failed(self, error: BaseException) -> None:
        """The connection is gone: a writer waiting for it to drain gets `error`."""
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(error)
