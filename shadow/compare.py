"""Pure comparison of two platforms' answers: (old, new, rules) -> Comparison.

Status code, the headers a route lists, then the body: as JSON trees when both sides are JSON
(the new side translated to the old contract first, then `ignore` and `normalize` on both),
by bytes otherwise, and by hash when a body was too large to keep. Differences at paths learnt to
be noise are kept apart in `Comparison.noise`, never dropped. Nothing here raises on what an
upstream sends: invalid JSON is compared as bytes, and nesting deeper than `MAX_DEPTH` is compared
as a whole and reported at the place it starts.

Speed: the function parses each body itself and edits those documents in place (no deep copies),
skips the tree walk for subtrees that are equal, and matches byte-identical bodies unparsed when
no contract has to translate the new side.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from shadow import jsonpath
from shadow.jsonpath import ConcretePath
from shadow.rules import CompareRules, RuleNode, prepare, step

if TYPE_CHECKING:
    from shadow.noise import NoiseSet

__all__ = [
    "MAX_DEPTH",
    "Comparison",
    "Difference",
    "Observation",
    "compare",
    "compare_docs",
    "compare_repeat",
    "describe_body",
]

MAX_DEPTH: Final = 128
"""JSON nested deeper is compared as one value: recursion stays far from Python's limit."""

_JSON_START = re.compile(rb"\s*[\[{]")
_SORTED = orjson.OPT_SORT_KEYS
_TOO_DEEP = f"<nested deeper than {MAX_DEPTH} levels>"

Kind = Literal["changed", "missing", "extra", "type"]
Mode = Literal["json", "bytes", "hash"]


@dataclass(slots=True)  # not frozen: made per request (a frozen dataclass's __init__ is ~4x slower)
class Observation:
    """One platform's answer, as captured by the proxy."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes | None  # None when larger than max_body: then only the hash and size are known
    body_sha256: str  # hex; may be "" when `body` is there (then it is computed when needed)
    body_size: int
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where the answers differ; `path` is concrete and canonical.

    `$.comments[2].body` in a JSON body, `@status`, `@headers.content-type`, `$` for a whole
    non-JSON body, `@contract` when the contract could not translate the new side.
    """

    path: str
    kind: str  # "changed" | "missing" (in old, not in new) | "extra" (in new, not old) | "type"
    old: Any  # JSON-able value, or None when absent
    new: Any


@dataclass(slots=True)  # not frozen: made per request (a frozen dataclass's __init__ is ~4x slower)
class Comparison:
    """The outcome; `old_doc`/`new_doc` are the documents as compared (json mode only)."""

    match: bool  # True when there are no real differences (noise excluded)
    differences: tuple[Difference, ...]
    noise: tuple[Difference, ...]
    mode: str  # "json" | "bytes" | "hash"
    old_doc: Any = None
    new_doc: Any = None


_Found = tuple[ConcretePath | str, str, Any, Any]

_KINDS: Final[dict[type, str]] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


def _kind(value: Any) -> str:
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "other"


def describe_body(observation: Observation) -> str:
    """`<123 bytes sha256:abcd1234…>`: what a difference says about a body it cannot show."""
    return f"<{observation.body_size} bytes sha256:{sha256_of(observation)[:8]}…>"


def sha256_of(observation: Observation) -> str:
    return observation.body_sha256 or hashlib.sha256(observation.body or b"").hexdigest()


# --- the tree walk -----------------------------------------------------------------------------


def _equal(left: Any, right: Any) -> bool:
    """Equal as JSON, quickly, for skipping equal subtrees; False when unsure (then we walk).

    Python's == says true == 1; orjson's text does not, so both must agree. 1 and 1.0 fail the
    second test and are walked, where numbers compare by value.
    """
    try:
        if left != right:
            return False
    except (RecursionError, TypeError):
        return False
    return _same_text(left, right)


def _same_text(left: Any, right: Any) -> bool:
    """The same bytes sorted-serialised: equal as JSON; False too when orjson cannot say
    (nested deeper than it goes, or not JSON)."""
    try:
        return orjson.dumps(left, option=_SORTED) == orjson.dumps(right, option=_SORTED)
    except (RecursionError, TypeError, orjson.JSONEncodeError):
        return False


def _walk(
    old: Any,
    new: Any,
    path: list[str | int],
    nodes: tuple[RuleNode, ...] | None,
    out: list[_Found],
    depth: int,
) -> None:
    old_kind, new_kind = _kind(old), _kind(new)
    if old_kind != new_kind:
        out.append((tuple(path), "type", old, new))
        return
    if old_kind == "object":
        if depth >= MAX_DEPTH:
            _too_deep(old, new, path, out)
        elif not _equal(old, new):
            _walk_object(old, new, path, nodes, out, depth)
    elif old_kind == "array":
        if depth >= MAX_DEPTH:
            _too_deep(old, new, path, out)
        elif not _equal(old, new):
            key = _rule(nodes, "list_key")
            if key is None:
                _walk_list(old, new, path, nodes, out, depth)
            else:
                _walk_keyed(old, new, key, path, nodes, out, depth)
    elif old_kind == "number":
        if old != new:
            tolerance = _rule(nodes, "tolerance")
            if tolerance is None or not _within(old, new, tolerance):
                out.append((tuple(path), "changed", old, new))
    elif old != new:
        out.append((tuple(path), "changed", old, new))


def _within(old: float, new: float, tolerance: float) -> bool:
    try:
        return abs(old - new) <= tolerance
    except OverflowError:  # an integer too large for a float: not close to anything finite
        return False


def _rule(nodes: tuple[RuleNode, ...] | None, name: str) -> Any:
    if nodes:
        for node in nodes:
            value = getattr(node, name)
            if value is not None:
                return value
    return None


def _too_deep(old: Any, new: Any, path: list[str | int], out: list[_Found]) -> None:
    if not _deep_equal(old, new):
        out.append((tuple(path), "changed", _TOO_DEEP, _TOO_DEEP))


def _deep_equal(old: Any, new: Any) -> bool:
    """Equal as JSON, without recursion: for what lies beyond MAX_DEPTH."""
    stack = [(old, new)]
    while stack:
        left, right = stack.pop()
        kind = _kind(left)
        if kind != _kind(right):
            return False
        if kind == "object":
            if left.keys() != right.keys():
                return False
            stack.extend((value, right[key]) for key, value in left.items())
        elif kind == "array":
            if len(left) != len(right):
                return False
            stack.extend(zip(left, right, strict=True))
        elif left != right:
            return False
    return True


def _walk_object(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    path: list[str | int],
    nodes: tuple[RuleNode, ...] | None,
    out: list[_Found],
    depth: int,
) -> None:
    for key, old_value in old.items():
        path.append(key)
        if key in new:
            _walk(old_value, new[key], path, step(nodes, key) if nodes else None, out, depth + 1)
        else:
            out.append((tuple(path), "missing", old_value, None))
        path.pop()
    for key, new_value in new.items():
        if key not in old:
            out.append(((*path, key), "extra", None, new_value))


def _walk_list(
    old: list[Any],
    new: list[Any],
    path: list[str | int],
    nodes: tuple[RuleNode, ...] | None,
    out: list[_Found],
    depth: int,
) -> None:
    common = min(len(old), len(new))
    for index in range(common):
        path.append(index)
        _walk(old[index], new[index], path, step(nodes, index) if nodes else None, out, depth + 1)
        path.pop()
    out.extend(((*path, index), "missing", old[index], None) for index in range(common, len(old)))
    out.extend(((*path, index), "extra", None, new[index]) for index in range(common, len(new)))


def _element_key(element: Any, key: str) -> tuple[str, Any] | None:
    if not isinstance(element, dict) or key not in element:
        return None
    value = element[key]
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


def _walk_keyed(
    old: list[Any],
    new: list[Any],
    key: str,
    path: list[str | int],
    nodes: tuple[RuleNode, ...] | None,
    out: list[_Found],
    depth: int,
) -> None:
    """Elements matched by their key field; unkeyed (or repeated) ones by their order."""
    new_at: dict[tuple[str, Any], int] = {}
    new_loose: list[int] = []
    for index, element in enumerate(new):
        found = _element_key(element, key)
        if found is None or found in new_at:
            new_loose.append(index)
        else:
            new_at[found] = index
    seen: set[tuple[str, Any]] = set()
    loose = iter(new_loose)
    matched: set[int] = set()
    for index, element in enumerate(old):
        found = _element_key(element, key)
        if found is not None and found not in seen:
            seen.add(found)
            partner = new_at.get(found)
        else:
            partner = next(loose, None)
        path.append(index)
        if partner is None:
            out.append((tuple(path), "missing", element, None))
        else:
            matched.add(partner)
            _walk(
                element, new[partner], path, step(nodes, index) if nodes else None, out, depth + 1
            )
        path.pop()
    out.extend(
        ((*path, index), "extra", None, new[index])
        for index in range(len(new))
        if index not in matched
    )


# --- putting it together -----------------------------------------------------------------------


def _format(path: ConcretePath | str) -> str:
    return path if isinstance(path, str) else jsonpath.format_path(path)


def _result(
    found: list[_Found], mode: str, noise: NoiseSet | None, old_doc: Any = None, new_doc: Any = None
) -> Comparison:
    real: list[Difference] = []
    noisy: list[Difference] = []
    for path, kind, old, new in found:
        difference = Difference(_format(path), kind, old, new)
        if noise is not None and noise.is_noise(path):
            noisy.append(difference)
        else:
            real.append(difference)
    return Comparison(not real, tuple(real), tuple(noisy), mode, old_doc, new_doc)


def _diff_docs(old_doc: Any, new_doc: Any, rules: CompareRules, found: list[_Found]) -> None:
    """Most shadow reads match: two documents whose sorted serialisations are the same bytes
    are equal as JSON (under any tolerance or list key too), decided in C without Python's
    `==` over both first (_equal) or a walk; the walk finds what differs in the others."""
    if _same_text(old_doc, new_doc):
        return
    _walk(old_doc, new_doc, [], rules.diff_trie, found, 0)


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NOT_JSON: Final = _Sentinel("NOT_JSON")
_FAILED: Final = _Sentinel("FAILED")


def _declares_json(observation: Observation) -> bool:
    content_type = observation.content_type or observation.headers.get("content-type", "")
    return "json" in content_type.lower()


def _parse(observation: Observation) -> Any:
    """The parsed body, or _NOT_JSON: JSON by content type, or by looks when it parses."""
    body = observation.body
    if body is None or not (_declares_json(observation) or _JSON_START.match(body)):
        return _NOT_JSON
    try:
        return orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return _NOT_JSON


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _head(old: Observation, new: Observation, rules: CompareRules, found: list[_Found]) -> None:
    if old.status != new.status:
        found.append(("@status", "changed", old.status, new.status))
    for name in rules.headers:
        old_value, new_value = _header(old.headers, name), _header(new.headers, name)
        if old_value == new_value:
            continue
        kind = "missing" if new_value is None else "extra" if old_value is None else "changed"
        found.append((f"@headers.{name}", kind, old_value, new_value))


def _translate(doc: Any, rules: CompareRules, found: list[_Found]) -> Any:
    assert rules.contract is not None
    try:
        return rules.contract.body_to_old(doc, copy=False)
    except Exception as exc:  # a hook's bug must not become the proxy's; QA sees it as a difference
        found.append(("@contract", "changed", None, f"<translation failed: {type(exc).__name__}>"))
        return _FAILED


def compare(
    old: Observation,
    new: Observation,
    rules: CompareRules,
    *,
    noise: NoiseSet | None = None,
    new_is_translated: bool = False,
) -> Comparison:
    """Compare two platforms' answers to one request under a route's rules.

    The new side is translated to the old contract unless `new_is_translated` says the caller
    did so already (the proxy translates a new primary's answer for the client anyway).
    """
    return _compare(
        old, new, rules, noise, translate_old=False, translate_new=not new_is_translated
    )


def compare_repeat(
    first: Observation, second: Observation, rules: CompareRules, *, side: Literal["old", "new"]
) -> Comparison:
    """Two answers of the same platform to one request (a noise probe), in old-contract terms.

    A new-platform pair is translated on both sides, so that what is learnt names the same paths
    as the differences it will later be matched against.
    """
    both = side == "new"
    return _compare(first, second, rules, None, translate_old=both, translate_new=both)


def _compare(
    old: Observation,
    new: Observation,
    rules: CompareRules,
    noise: NoiseSet | None,
    *,
    translate_old: bool,
    translate_new: bool,
) -> Comparison:
    found: list[_Found] = []
    _head(old, new, rules, found)
    contract = rules.contract
    if contract is None or not contract.translates_bodies:
        translate_old = translate_new = False
    if rules.ignore_body:
        return _result(found, "json" if _declares_json(old) else "bytes", noise)
    if old.body is None or new.body is None:
        if old.body_sha256 != new.body_sha256:
            found.append(("$", "changed", describe_body(old), describe_body(new)))
        return _result(found, "hash", noise)
    if old.body == new.body and translate_old == translate_new:
        return _result(found, "json" if _declares_json(old) else "bytes", noise)
    old_doc, new_doc = _parse(old), _parse(new)
    if old_doc is not _NOT_JSON and new_doc is not _NOT_JSON:
        if translate_old:
            old_doc = _translate(old_doc, rules, found)
        if translate_new:
            new_doc = _translate(new_doc, rules, found)
        if old_doc is _FAILED or new_doc is _FAILED:
            return _result(found, "json", noise)
        old_doc, new_doc = prepare(old_doc, rules), prepare(new_doc, rules)
        _diff_docs(old_doc, new_doc, rules, found)
        return _result(found, "json", noise, old_doc, new_doc)
    if old_doc is not _NOT_JSON or new_doc is not _NOT_JSON:
        found.append(("$", "type", describe_body(old), describe_body(new)))
    elif old.body != new.body:
        found.append(("$", "changed", describe_body(old), describe_body(new)))
    return _result(found, "bytes", noise)


def compare_docs(
    old_doc: Any, new_doc: Any, rules: CompareRules, *, noise: NoiseSet | None = None
) -> Comparison:
    """Compare two parsed documents, both already in the old contract; the inputs stay untouched."""
    found: list[_Found] = []
    if rules.ignore_body:
        return _result(found, "json", noise)
    if rules.edits_documents:
        old_doc, new_doc = jsonpath.copy_doc(old_doc), jsonpath.copy_doc(new_doc)
        old_doc, new_doc = prepare(old_doc, rules), prepare(new_doc, rules)
    _diff_docs(old_doc, new_doc, rules, found)
    return _result(found, "json", noise, old_doc, new_doc)
