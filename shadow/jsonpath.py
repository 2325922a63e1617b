"""The small JSONPath subset that routes.yaml speaks.

    $                 the document
    $.name            a key (letters, digits, _ and -)
    $['odd key']      a key with any other characters
    $.items[0]        a list index
    $.items[*]        every element of a list (or every value of an object)

Paths are parsed once, when routes.yaml is loaded, into tuples of segments: a `str` key, an `int`
index, or `WILDCARD`. Nothing else of JSONPath (filters, slices, recursive descent) is accepted:
a rule that silently matched nothing would hide differences from QA.
"""

from __future__ import annotations

import re
from typing import Final


class _Wildcard:
    """The `[*]` segment: a sentinel of its own, so that a key named "*" stays a key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WILDCARD"


WILDCARD: Final = _Wildcard()

Segment = str | int | _Wildcard
Path = tuple[Segment, ...]

_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_BRACKET = re.compile(r"""\[(?:(\*)|(-?\d+)|'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]""")


class PathError(ValueError):
    """A path outside the subset; the message says where it stopped making sense."""


def parse(text: str) -> Path:
    """Parse `$.a.b[*]` into `('a', 'b', WILDCARD)`."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathError(f"a path starts with '$', got {text!r}")
    segments: list[Segment] = []
    pos = 1
    while pos < len(text):
        char = text[pos]
        if char == ".":
            match = _NAME.match(text, pos + 1)
            if match is None:
                raise PathError(f"expected a key name after '.' at offset {pos} of {text!r}")
            segments.append(match.group(0))
            pos = match.end()
        elif char == "[":
            match = _BRACKET.match(text, pos)
            if match is None:
                raise PathError(f"expected [*], [n] or ['key'] at offset {pos} of {text!r}")
            star, index, single, double = match.groups()
            if star:
                segments.append(WILDCARD)
            elif index is not None:
                segments.append(int(index))
            else:
                quoted = single if single is not None else double
                segments.append(re.sub(r"\\(.)", r"\1", quoted))
            pos = match.end()
        else:
            raise PathError(f"unexpected {char!r} at offset {pos} of {text!r}")
    return tuple(segments)


def format_path(path: Path) -> str:
    """The canonical text of a path, as diff records and reports show it."""
    out = ["$"]
    for segment in path:
        if isinstance(segment, str):
            if _NAME.fullmatch(segment):
                out.append(f".{segment}")
            else:
                escaped = segment.replace("\\", "\\\\").replace("'", "\\'")
                out.append(f"['{escaped}']")
        elif isinstance(segment, int):
            out.append(f"[{segment}]")
        else:
            out.append("[*]")
    return "".join(out)


def is_concrete(path: Path) -> bool:
    """True when the path names one place (no wildcard)."""
    return all(segment is not WILDCARD for segment in path)
