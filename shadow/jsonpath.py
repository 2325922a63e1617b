"""The small JSONPath subset that routes.yaml speaks.

    $                 the document
    $.name            a key (letters, digits, _ and -)
    $['odd key']      a key with any other characters
    $.items[0]        a list index
    $.items[*]        every element of a list (or every value of an object)

Paths are parsed once, when routes.yaml is loaded, into tuples of segments: a `str` key, an `int`
index, or `WILDCARD`. Nothing else of JSONPath (filters, slices, recursive descent) is accepted:
a rule that silently matched nothing would hide differences from QA.

The second half reads and edits parsed JSON documents along such paths (`find`, `slots`,
`set_at`, `delete_at`) and relates a concrete path, as a difference reports it, to a rule path
(`matches`, `covers`, `overlaps`). They run per request, so they walk only the path, never the
whole document, and never raise on a document of unexpected shape: a path that does not fit
simply finds nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

import orjson


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


# --- reading and writing documents along paths -------------------------------------------------

ConcretePath = tuple[str | int, ...]
"""A path without wildcards and with non-negative indices: one place in one document."""


class _Missing:
    """Absent, as opposed to a JSON null."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


def _step(node: Any, segment: str | int) -> Any:
    """The child of `node` at one concrete segment, or MISSING."""
    if type(segment) is str:
        if isinstance(node, dict):
            return node.get(segment, MISSING)
        return MISSING
    if isinstance(node, list) and type(segment) is int:
        size = len(node)
        if -size <= segment < size:
            return node[segment]
    return MISSING


def get_at(doc: Any, path: Path, default: Any = MISSING) -> Any:
    """The value at a concrete path, or `default` when the document has nothing there."""
    node = doc
    for segment in path:
        if segment is WILDCARD:
            return default
        node = _step(node, segment)  # type: ignore[arg-type]
        if node is MISSING:
            return default
    return node


def find(doc: Any, path: Path) -> Iterator[tuple[ConcretePath, Any]]:
    """Every place the path names in `doc`, with its value, in document order.

    `[*]` visits list elements and object values; a negative index counts from the end and is
    reported as the non-negative index it resolved to. The places are collected before the
    first is yielded, so the caller may edit the document while going through them.
    """
    frontier: list[tuple[ConcretePath, Any]] = [((), doc)]
    for segment in path:
        reached: list[tuple[ConcretePath, Any]] = []
        if segment is WILDCARD:
            for prefix, node in frontier:
                if isinstance(node, dict):
                    reached.extend(((*prefix, key), child) for key, child in node.items())
                elif isinstance(node, list):
                    reached.extend(((*prefix, index), child) for index, child in enumerate(node))
        else:
            for prefix, node in frontier:
                if type(segment) is int and isinstance(node, list) and segment < 0:
                    resolved: str | int = segment + len(node)
                else:
                    resolved = segment  # type: ignore[assignment]
                child = _step(node, resolved)
                if child is not MISSING:
                    reached.append(((*prefix, resolved), child))
        if not reached:
            return
        frontier = reached
    yield from frontier


def values_at(doc: Any, path: Path) -> list[Any]:
    """The values at every place the path names, in document order (find without the paths)."""
    frontier = [doc]
    for segment in path:
        reached: list[Any] = []
        if segment is WILDCARD:
            for node in frontier:
                if isinstance(node, dict):
                    reached.extend(node.values())
                elif isinstance(node, list):
                    reached.extend(node)
        else:
            for node in frontier:
                child = _step(node, segment)  # type: ignore[arg-type]
                if child is not MISSING:
                    reached.append(child)
        if not reached:
            return reached
        frontier = reached
    return frontier


def slots(doc: Any, path: Path) -> list[tuple[dict[str, Any] | list[Any], str | int]]:
    """Every existing place the path names, as (container, key or index), for editing in place.

    Collected before returning, so the caller may delete or replace while going through them.
    The root (`$`) has no container and yields nothing: callers handle it themselves.
    """
    if not path:
        return []
    last = path[-1]
    out: list[tuple[dict[str, Any] | list[Any], str | int]] = []
    for parent in values_at(doc, path[:-1]):
        if isinstance(parent, dict):
            if last is WILDCARD:
                out.extend((parent, key) for key in parent)
            elif type(last) is str and last in parent:
                out.append((parent, last))
        elif isinstance(parent, list):
            size = len(parent)
            if last is WILDCARD:
                out.extend((parent, index) for index in range(size))
            elif type(last) is int and -size <= last < size:
                out.append((parent, last % size))
    return out


def set_at(doc: Any, path: Path, value: Any, *, create: bool = True, merge: bool = False) -> bool:
    """Put `value` at a concrete path; False when the document's shape does not allow it.

    With `create`, missing objects on the way are made (`{}` before a key, `[]` before an index)
    and an index equal to the list's length appends; nothing is ever overwritten on the way.
    With `merge`, an object put where an object already is adds its keys to it instead.
    """
    if not path or not is_concrete(path):
        return False
    return _set(doc, path, value, create, merge)


def _set(doc: Any, path: Path, value: Any, create: bool, merge: bool) -> bool:
    """set_at for a path known to be concrete and not the root (the contract's hot loop)."""
    node = doc
    end = len(path) - 1
    for position, segment in enumerate(path):
        last = position == end
        if type(segment) is str:
            if not isinstance(node, dict):
                return False
            if last:
                existing = node.get(segment) if merge else None
                if isinstance(existing, dict) and isinstance(value, dict):
                    existing.update(value)
                else:
                    node[segment] = value
                return True
            child = node.get(segment, MISSING)
            if child is MISSING:
                if not create:
                    return False
                child = [] if type(path[position + 1]) is int else {}
                node[segment] = child
        else:
            index: int = segment  # type: ignore[assignment]
            if not isinstance(node, list):
                return False
            size = len(node)
            if index < 0:
                index += size
            if last:
                existing = node[index] if merge and 0 <= index < size else None
                if isinstance(existing, dict) and isinstance(value, dict):
                    existing.update(value)
                elif 0 <= index < size:
                    node[index] = value
                elif index == size and create:
                    node.append(value)
                else:
                    return False
                return True
            if 0 <= index < size:
                child = node[index]
            elif index == size and create:
                child = [] if type(path[position + 1]) is int else {}
                node.append(child)
            else:
                return False
        node = child
    return False  # pragma: no cover - the loop returns at the last segment


def put_at(doc: Any, path: ConcretePath, value: Any) -> bool:
    """set_at(create=True, merge=True) for a concrete, non-root path, without re-checking it."""
    return _set(doc, path, value, True, True)


def delete_at(doc: Any, path: Path) -> bool:
    """Remove the value at a concrete path (a list closes up); False when nothing was there."""
    if not path or not is_concrete(path):
        return False
    parent = get_at(doc, path[:-1])
    last = path[-1]
    if isinstance(parent, dict) and type(last) is str and last in parent:
        del parent[last]
        return True
    if isinstance(parent, list) and type(last) is int and -len(parent) <= last < len(parent):
        del parent[last]
        return True
    return False


# --- relating concrete paths to rule paths -----------------------------------------------------


def generalize(path: Path) -> Path:
    """Indices become `[*]`: `$.comments[3].body` and `$.comments[7].body` are one field."""
    return tuple(WILDCARD if type(segment) is int else segment for segment in path)


def _same(rule: Segment, segment: Segment) -> bool:
    if rule is WILDCARD:
        return True
    return type(rule) is type(segment) and rule == segment


def matches(rule: Path, path: Path) -> bool:
    """True when `path` is one of the places `rule` names (`[*]` in the rule matches anything)."""
    return len(rule) == len(path) and all(map(_same, rule, path))


def covers(rule: Path, path: Path) -> bool:
    """True when `path` is at or under a place `rule` names: ignoring `$.address` covers `.city`."""
    return len(rule) <= len(path) and all(map(_same, rule, path))


def overlaps(rule: Path, path: Path) -> bool:
    """True when `path` is at, under or above a place `rule` names (one contains the other)."""
    return all(map(_same, rule, path))


def copy_doc(doc: Any) -> Any:
    """A deep copy of a JSON document, for callers that must not touch their input.

    orjson does it fastest; its limits (64-bit integers, 255 levels) fall back to a loop that
    has none, since documents can be as deep as the parser allowed.
    """
    if not isinstance(doc, dict | list):
        return doc
    try:
        return orjson.loads(orjson.dumps(doc))
    except (TypeError, orjson.JSONEncodeError, orjson.JSONDecodeError):
        pass
    root: Any = {} if isinstance(doc, dict) else []
    stack: list[tuple[Any, Any]] = [(doc, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, value in items:
            if isinstance(value, dict | list):
                child: Any = {} if isinstance(value, dict) else []
                stack.append((value, child))
                value = child  # noqa: PLW2901 - the copy takes the original's place
            if isinstance(target, dict):
                target[key] = value
            else:
                target.append(value)
    return root
