"""Translation between the old contract that clients speak and the new platform's API.

A route's `contract` is compiled once, at config load, into a `Contract`. Field rules define a
function on paths: a place under a rule's source moves to the same place under its destination,
the deepest rule winning, so `$.address -> $.location` and `$.address.postcode ->
$.location.postal_code` compose, and `$.comments -> $.notes` carries `$.comments[*].body ->
$.notes[*].text` along. Both sides of a rule are written in their own side's final terms, and the
same rules read backwards translate new -> old.

A record is translated in two phases: every value named by a rule is taken out (deepest rules
first, so a parent carries no child that has a rule of its own), then put at its destination
(shallowest first, so children land in their new parent). That makes swaps and splits work
without any ordering in routes.yaml. An object emptied by taking values out of it is removed, so
that splitting and re-joining round-trips.

Record-level steps, in order:
    to_new: fields -> values (old -> new) -> new_defaults -> hook("to_new", record)
    to_old: drop new_defaults still at their default -> values (new -> old) -> fields backwards
            -> defaults -> hook("to_old", record)

Decisions the rules leave open:
- A value map is keyed by the OLD path and applied where fields put that path. Going to old,
  when several old values map to one new value, the first listed wins; unknown values (and
  true vs 1: JSON types are kept apart) pass through.
- new_defaults name fields only the new platform has: going to old, a field still holding its
  default is dropped (cutover filled it; a round trip gives the input back), while a value the
  new platform chose itself stays visible.
- defaults and new_defaults fill a field only where its parent object exists (the record itself
  always does); they never invent objects.
- Only objects are records: other elements of a list answer pass through untranslated.
- A value that cannot be put at its destination (a scalar in the way) stays where it was.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shadow import jsonpath
from shadow.jsonpath import WILDCARD, ConcretePath, Path, PathError
from shadow.normalize import Normalizer, compile_normalizers

if TYPE_CHECKING:
    from proxy.config.spec import ContractSpec

Place = tuple[str | int, ...]
Direction = Literal["to_new", "to_old"]
Hook = Callable[[Direction, Any], Any]
Record = dict[str, Any]


class RuleError(ValueError):
    """A contract or compare rule that cannot be honoured, with its place in routes.yaml."""

    def __init__(self, place: Place, message: str) -> None:
        self.place = place
        self.message = message
        super().__init__(f"{format_place(place)}: {message}" if place else message)


def format_place(place: Place) -> str:
    """`routes[2].compare.normalize['$.phone']`, as config errors show places."""
    out = ""
    for part in place:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").replace("-", "").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


# --- paths as a function -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Move:
    """One field rule in one direction: take from `src`, put at `dst` (wildcards bound in order)."""

    src: Path
    dst: Path
    src_wild: tuple[int, ...]
    dst_wild: tuple[int, ...]

    @classmethod
    def of(cls, src: Path, dst: Path) -> _Move:
        return cls(src, dst, _wild_positions(src), _wild_positions(dst))

    def target(self, source: ConcretePath) -> ConcretePath:
        if not self.dst_wild:
            return self.dst  # type: ignore[return-value]
        out = list(self.dst)
        for src_at, dst_at in zip(self.src_wild, self.dst_wild, strict=True):
            out[dst_at] = source[src_at]
        return tuple(out)  # type: ignore[arg-type]


def _wild_positions(path: Path) -> tuple[int, ...]:
    return tuple(i for i, segment in enumerate(path) if segment is WILDCARD)


def _prefix_binding(rule: Path, path: Path) -> list[jsonpath.Segment] | None:
    """The segments of `path` bound by the rule's wildcards when `path` is at or under `rule`."""
    if len(rule) > len(path):
        return None
    bound: list[jsonpath.Segment] = []
    for want, have in zip(rule, path, strict=False):
        if want is WILDCARD:
            bound.append(have)
        elif type(want) is not type(have) or want != have:
            return None
    return bound


def _translate(path: Path, moves: Iterable[_Move]) -> Path:
    """Where `path` lands under the deepest move whose source covers it (itself when none)."""
    best: tuple[_Move, list[jsonpath.Segment]] | None = None
    for move in moves:
        bound = _prefix_binding(move.src, path)
        if bound is not None and (best is None or len(move.src) > len(best[0].src)):
            best = (move, bound)
    if best is None:
        return path
    move, bound = best
    head = list(move.dst)
    for value, at in zip(bound, move.dst_wild, strict=True):
        head[at] = value
    return (*head, *path[len(move.src) :])


# --- editing one record ------------------------------------------------------------------------


def _prune(record: Any, path: ConcretePath) -> None:
    """Remove the object at `path` if it is empty, and its parents that become empty by that."""
    while path and type(path[-1]) is str:
        node = jsonpath.get_at(record, path)
        if not isinstance(node, dict) or node:
            return
        parent = jsonpath.get_at(record, path[:-1])
        if not isinstance(parent, dict):
            return
        del parent[path[-1]]
        path = path[:-1]


def _put(record: Any, path: ConcretePath, value: Any) -> bool:
    return bool(path) and jsonpath.put_at(record, path, value)


def _run_moves(record: Any, moves: tuple[_Move, ...]) -> None:
    """Take every ruled value out (deepest first), then put them back (shallowest first)."""
    placed: list[tuple[ConcretePath, ConcretePath, Any]] = []
    for move in moves:
        key = move.src[-1]
        for parent_path, parent in jsonpath.find(record, move.src[:-1]):
            if not isinstance(parent, dict) or key not in parent:
                continue
            value = parent.pop(key)
            source = (*parent_path, key)
            placed.append((move.target(source), source, value))  # type: ignore[arg-type]
            if not parent:
                _prune(record, parent_path)
    placed.sort(key=lambda item: len(item[0]))
    for target, source, value in placed:
        if not _put(record, target, value):
            _put(record, source, value)  # a value that cannot be placed stays where it was


def _value_key(value: Any) -> tuple[str, Any] | None:
    """A lookup key that keeps true apart from 1 (Python's hash does not)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z", None)
    return None


@dataclass(frozen=True, slots=True)
class _ValueMap:
    old_path: Path
    new_path: Path
    to_new: Mapping[tuple[str, Any], Any]
    to_old: Mapping[tuple[str, Any], Any]


def _map_values(record: Any, path: Path, table: Mapping[tuple[str, Any], Any]) -> None:
    for container, key in jsonpath.slots(record, path):
        lookup = _value_key(container[key])  # type: ignore[index]
        if lookup is not None and lookup in table:
            container[key] = table[lookup]  # type: ignore[index]


def _fill(record: Any, path: Path, value: Any) -> None:
    key = path[-1]
    for parent in jsonpath.values_at(record, path[:-1]):
        if isinstance(parent, dict) and key not in parent:
            parent[key] = jsonpath.copy_doc(value)


def _same_json(left: Any, right: Any) -> bool:
    """Equal as JSON: 1 equals 1.0, but true is not 1."""
    left_key, right_key = _value_key(left), _value_key(right)
    if left_key is not None or right_key is not None:
        return left_key == right_key
    return bool(left == right)


def _drop_defaults(record: Any, path: Path, value: Any) -> None:
    for container, key in jsonpath.slots(record, path):
        if isinstance(container, dict) and _same_json(container[key], value):  # type: ignore[index]
            del container[key]  # type: ignore[arg-type]


# --- the compiled contract ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contract:
    """A route's contract, compiled: translate bodies and query strings in either direction."""

    new_path: str | None
    fields: tuple[tuple[Path, Path], ...]
    collection_old: Path | None
    collection_new: Path | None
    _query: Mapping[str, tuple[str, Mapping[str, str]]]
    _to_new: tuple[_Move, ...]
    _to_old: tuple[_Move, ...]
    _envelope_to_new: tuple[_Move, ...]
    _envelope_to_old: tuple[_Move, ...]
    _values: tuple[_ValueMap, ...]
    _defaults: tuple[tuple[Path, Any], ...]
    _new_defaults: tuple[tuple[Path, Any], ...]
    _hook: Hook | None
    _convert_to_new: tuple[tuple[Path, Normalizer], ...] = ()
    _convert_to_old: tuple[tuple[Path, Normalizer], ...] = ()

    @property
    def translates_bodies(self) -> bool:
        """False when bodies pass through unchanged (only the path or query differ)."""
        return bool(
            self._to_new
            or self._envelope_to_new
            or self._values
            or self._defaults
            or self._new_defaults
            or self._hook
            or self._convert_to_new
            or self._convert_to_old
            or self.collection_old != self.collection_new
        )

    @property
    def translates_query(self) -> bool:
        """False when query strings pass through unchanged (no `query` rules)."""
        return bool(self._query)

    def path_to_new(self, path: Path) -> Path:
        """Where an old-contract record path lives on the new platform."""
        return _translate(path, self._to_new)

    def path_to_old(self, path: Path) -> Path:
        """Where a new-platform record path lives in the old contract."""
        return _translate(path, self._to_old)

    def query_to_new(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Query parameters renamed and their values mapped; others pass through, in order."""
        out: list[tuple[str, str]] = []
        for name, value in pairs:
            rule = self._query.get(name)
            if rule is None:
                out.append((name, value))
            else:
                new_name, values = rule
                out.append((new_name, values.get(value, value)))
        return out

    def body_to_new(self, doc: Any, *, copy: bool = True) -> Any:
        """An old-contract body as the new platform expects it.

        With `copy=False` the document is edited in place and returned: for documents the
        caller owns (parsed from a request or response body), it saves a deep copy.
        """
        return self._body(doc, "to_new", copy=copy)

    def body_to_old(self, doc: Any, *, copy: bool = True) -> Any:
        """A new-platform body as old-contract clients expect it (`copy` as for body_to_new)."""
        return self._body(doc, "to_old", copy=copy)

    def _body(self, doc: Any, direction: Direction, *, copy: bool) -> Any:
        if not isinstance(doc, dict | list):
            return doc
        if copy:
            doc = jsonpath.copy_doc(doc)
        if isinstance(doc, list):
            return self._records(doc, direction)
        if direction == "to_new":
            here, there, envelope = self.collection_old, self.collection_new, self._envelope_to_new
        else:
            here, there, envelope = self.collection_new, self.collection_old, self._envelope_to_old
        if here is not None and there is not None:
            items = jsonpath.get_at(doc, here)
            if isinstance(items, list):
                jsonpath.delete_at(doc, here)
                _prune(doc, here[:-1])  # type: ignore[arg-type]  # concrete: checked at compile
                _run_moves(doc, envelope)
                records = self._records(items, direction)
                if not jsonpath.set_at(doc, there, records):
                    jsonpath.set_at(doc, here, records)  # the envelope has no room: keep them
                return doc
        return self._record(doc, direction)

    def _records(self, items: list[Any], direction: Direction) -> list[Any]:
        for index, item in enumerate(items):
            if isinstance(item, dict):
                items[index] = self._record(item, direction)
        return items

    def _record(self, record: Record, direction: Direction) -> Any:
        if direction == "to_new":
            _run_moves(record, self._to_new)
            for rule in self._values:
                _map_values(record, rule.new_path, rule.to_new)
            _convert(record, self._convert_to_new)
            for path, value in self._new_defaults:
                _fill(record, path, value)
        else:
            for path, value in self._new_defaults:
                _drop_defaults(record, path, value)
            for rule in self._values:
                _map_values(record, rule.new_path, rule.to_old)
            _run_moves(record, self._to_old)
            _convert(record, self._convert_to_old)
            for path, value in self._defaults:
                _fill(record, path, value)
        if self._hook is not None:
            result = self._hook(direction, record)
            return record if result is None else result
        return record


def _convert(record: Any, rules: tuple[tuple[Path, Normalizer], ...]) -> None:
    for path, convert in rules:
        for container, key in jsonpath.slots(record, path):
            container[key] = convert(container[key])  # type: ignore[index]


# --- compiling ---------------------------------------------------------------------------------


def _parse(text: str, place: Place) -> Path:
    try:
        return jsonpath.parse(text)
    except PathError as exc:
        raise RuleError(place, str(exc)) from None


def _field_path(text: str, place: Place) -> Path:
    path = _parse(text, place)
    if not path or type(path[-1]) is not str:
        raise RuleError(
            place, f"{text!r} must end in a field name (like $.name or $.items[*].name)"
        )
    return path


def _compile_moves(rules: Mapping[str, str], place: Place) -> tuple[_Move, ...]:
    """Field (or envelope) rules old -> new, checked, deepest source first."""
    moves: list[_Move] = []
    sources: dict[Path, str] = {}
    targets: dict[Path, str] = {}
    for src_text, dst_text in rules.items():
        at = (*place, src_text)
        src = _field_path(src_text, at)
        dst = _field_path(dst_text, at)
        if src in sources:
            raise RuleError(
                at, f"two rules read the same field ({sources[src]!r} and {src_text!r})"
            )
        if dst in targets:
            raise RuleError(
                at, f"two rules write the same field {dst_text!r} (also from {targets[dst]!r})"
            )
        sources[src] = src_text
        targets[dst] = src_text
        moves.append(_Move.of(src, dst))
    for move, (src_text, dst_text) in zip(moves, rules.items(), strict=True):
        _check_wildcards(move, moves, (*place, src_text), src_text, dst_text)
    moves.sort(key=lambda m: -len(m.src))
    return tuple(moves)


def _check_wildcards(
    move: _Move, moves: list[_Move], place: Place, src_text: str, dst_text: str
) -> None:
    """Each [*] of the destination must iterate the list the source's [*] iterates, translated."""
    if len(move.src_wild) != len(move.dst_wild):
        raise RuleError(
            place,
            f"{src_text!r} and {dst_text!r} have different numbers of [*]; "
            "each [*] of the source needs one in the destination",
        )
    for src_at, dst_at in zip(move.src_wild, move.dst_wild, strict=True):
        container = _translate(move.src[:src_at], moves)
        if container != move.dst[:dst_at]:
            raise RuleError(
                place,
                f"the [*] positions of {src_text!r} and {dst_text!r} don't line up: "
                f"{jsonpath.format_path(move.src[:src_at])} translates to "
                f"{jsonpath.format_path(container)}, not {jsonpath.format_path(move.dst[:dst_at])}"
                " (add a rule for the list itself)",
            )


def _reverse(moves: tuple[_Move, ...]) -> tuple[_Move, ...]:
    back = [_Move.of(move.dst, move.src) for move in moves]
    back.sort(key=lambda m: -len(m.src))
    return tuple(back)


def _compile_values(
    spec: Mapping[str, Mapping[Any, Any]], moves: tuple[_Move, ...], place: Place
) -> tuple[_ValueMap, ...]:
    out: list[_ValueMap] = []
    for text, table in spec.items():
        at = (*place, text)
        path = _parse(text, at)
        if not path:
            raise RuleError(at, "a value map names a field, not the whole record ($)")
        to_new: dict[tuple[str, Any], Any] = {}
        to_old: dict[tuple[str, Any], Any] = {}
        for old, new in table.items():
            old_key, new_key = _value_key(old), _value_key(new)
            if old_key is None or new_key is None:
                raise RuleError(at, f"a value map maps scalars, got {old!r}: {new!r}")
            to_new[old_key] = new
            to_old.setdefault(new_key, old)  # several old values on one new: the first wins
        out.append(_ValueMap(path, _translate(path, moves), to_new, to_old))
    return tuple(out)


def _compile_defaults(spec: Mapping[str, Any], place: Place) -> tuple[tuple[Path, Any], ...]:
    return tuple((_field_path(text, (*place, text)), value) for text, value in spec.items())


def _load_hook(text: str, place: Place) -> Hook:
    module_name, _, attribute = text.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # importing runs arbitrary code; any failure is a config error
        raise RuleError(place, f"cannot load hook {text!r}: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise RuleError(place, f"hook {text!r} is not callable")
    hook: Hook = target
    return hook


def _query_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _compile_query(spec: ContractSpec, place: Place) -> dict[str, tuple[str, Mapping[str, str]]]:
    out: dict[str, tuple[str, Mapping[str, str]]] = {}
    written: dict[str, str] = {}
    for old_name, rule in spec.query.items():
        if rule.name in written:
            raise RuleError(
                (*place, "query", old_name),
                f"two query rules write {rule.name!r} (also from {written[rule.name]!r})",
            )
        written[rule.name] = old_name
        values = {str(k): _query_text(v) for k, v in rule.values.items()}
        out[old_name] = (rule.name, values)
    return out


def _collection_path(text: str, place: Place) -> Path:
    path = _parse(text, place)
    if not path or not jsonpath.is_concrete(path):
        raise RuleError(place, f"a collection is one place without [*] and not $, got {text!r}")
    return path


def compile_contract(spec: ContractSpec, place: Place = ()) -> Contract:
    """A `ContractSpec` compiled; RuleError (with its place) for any rule it cannot honour."""
    to_new = _compile_moves(spec.fields, (*place, "fields"))
    envelope = _compile_moves(spec.envelope, (*place, "envelope"))
    collection_old = collection_new = None
    if spec.collection is not None:
        collection_old = _collection_path(spec.collection.old, (*place, "collection", "old"))
        collection_new = _collection_path(spec.collection.new, (*place, "collection", "new"))
        for move in envelope:
            for side, rule_path, coll in (
                ("old", move.src, collection_old),
                ("new", move.dst, collection_new),
            ):
                if jsonpath.overlaps(rule_path, coll) or jsonpath.overlaps(coll, rule_path):
                    raise RuleError(
                        (*place, "envelope", jsonpath.format_path(move.src)),
                        f"an envelope rule overlaps the {side} collection "
                        f"{jsonpath.format_path(coll)}",
                    )
    elif spec.envelope:
        raise RuleError((*place, "envelope"), "envelope rules need a collection")
    hook = _load_hook(spec.hook, (*place, "hook")) if spec.hook else None
    to_new_conv: list[tuple[Path, Normalizer]] = []
    to_old_conv: list[tuple[Path, Normalizer]] = []
    for text, rule in spec.convert.items():
        at = (*place, "convert", text)
        path = _parse(text, at)
        try:
            if rule.to_new:
                to_new_conv.append((_translate(path, to_new), compile_normalizers(rule.to_new)))
            if rule.to_old:
                to_old_conv.append((path, compile_normalizers(rule.to_old)))
        except ValueError as exc:
            raise RuleError(at, str(exc)) from None
    return Contract(
        new_path=spec.new_path,
        fields=tuple((move.src, move.dst) for move in to_new),
        collection_old=collection_old,
        collection_new=collection_new,
        _query=_compile_query(spec, place),
        _to_new=to_new,
        _to_old=_reverse(to_new),
        _envelope_to_new=envelope,
        _envelope_to_old=_reverse(envelope),
        _values=_compile_values(spec.values, to_new, (*place, "values")),
        _defaults=_compile_defaults(spec.defaults, (*place, "defaults")),
        _new_defaults=_compile_defaults(spec.new_defaults, (*place, "new_defaults")),
        _hook=hook,
        _convert_to_new=tuple(to_new_conv),
        _convert_to_old=tuple(to_old_conv),
    )


__all__ = [
    "Contract",
    "Direction",
    "Hook",
    "Place",
    "RuleError",
    "compile_contract",
    "format_place",
]
