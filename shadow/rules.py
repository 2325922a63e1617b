"""A route's `compare` rules, compiled once at config load into `CompareRules`.

Rule paths are in the old contract's terms (the new side is translated before comparing) and,
like contract fields, they name places in one record. A record is the body itself, each element
of a top-level array, or each element of the list at the contract's `collection.old`; a rule
applies to every record and to the body around them, so `ignore: [$.etag]` covers a contact,
each contact of a list answer and the list's own etag alike.

Anything a rule cannot mean is a `RuleError` with its place: an unknown normalizer, a rule under
an ignored path (it would silently do nothing), or a path that names the new platform's field
where the old contract has its own name for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shadow import jsonpath
from shadow.contract import Contract, Place, RuleError
from shadow.jsonpath import WILDCARD, Path, PathError
from shadow.normalize import Normalizer, compile_normalizers

if TYPE_CHECKING:
    from proxy.config.spec import CompareSpec

__all__ = ["CompareRules", "RuleError", "RuleNode", "compile_rules"]

DEFAULT_MAX_BODY = 1024 * 1024


@dataclass(slots=True, eq=False)
class RuleNode:
    """One step of a trie of rule paths, walked alongside a document while diffing or redacting.

    `any_index` exists only for the places records hang from (each element of a top-level array
    or of the collection), so that record rules do not also apply to an object's values.
    """

    keys: dict[str, RuleNode] = field(default_factory=dict)
    indices: dict[int, RuleNode] = field(default_factory=dict)
    wildcard: RuleNode | None = None
    any_index: RuleNode | None = None
    tolerance: float | None = None
    list_key: str | None = None
    redact: bool = False
    mount: bool = False  # a place records hang from, not a step of any rule

    def child(self, segment: str | int, into: list[RuleNode]) -> None:
        """Append the nodes reached from here by one concrete segment."""
        if type(segment) is str:
            node = self.keys.get(segment)
        else:
            node = self.indices.get(segment)  # type: ignore[arg-type]
            if self.any_index is not None:
                into.append(self.any_index)
        if node is not None:
            into.append(node)
        if self.wildcard is not None:
            into.append(self.wildcard)

    def insert(self, path: Path) -> RuleNode:
        node = self
        for segment in path:
            if segment is WILDCARD:
                if node.wildcard is None:
                    node.wildcard = RuleNode()
                node = node.wildcard
            elif type(segment) is str:
                node = node.keys.setdefault(segment, RuleNode())
            else:
                node = node.indices.setdefault(segment, RuleNode())  # type: ignore[arg-type]
        return node


def step(nodes: tuple[RuleNode, ...], segment: str | int) -> tuple[RuleNode, ...]:
    """The trie nodes reached from `nodes` by one segment (empty: no rule below)."""
    reached: list[RuleNode] = []
    for node in nodes:
        node.child(segment, reached)
    return tuple(reached)


def _mounted(root: RuleNode, collection: Path | None) -> tuple[RuleNode, ...]:
    """The trie at the body's root: the rules themselves, and again under every record."""
    mount = RuleNode(any_index=root, mount=True)
    if collection is not None:
        node = mount
        for segment in collection:
            node = node.insert((segment,))
            node.mount = True
        node.any_index = root
    return (root, mount)


@dataclass(frozen=True, slots=True)
class CompareRules:
    """Everything `compare` needs for one route, precompiled; immutable and shared by requests."""

    headers: tuple[str, ...] = ()
    ignore: tuple[Path, ...] = ()
    ignore_body: bool = False
    normalize: tuple[tuple[Path, Normalizer], ...] = ()  # deepest first: children before parents
    tolerance: Mapping[Path, float] = field(default_factory=dict)
    list_keys: Mapping[Path, str] = field(default_factory=dict)
    redact: tuple[Path, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    noise_probe_percent: float = 0.0
    contract: Contract | None = None
    diff_trie: tuple[RuleNode, ...] | None = None  # tolerance and list_keys; None when neither
    redact_trie: tuple[RuleNode, ...] | None = None

    @property
    def collection(self) -> Path | None:
        """Where records of a list answer are, in old-contract terms."""
        return self.contract.collection_old if self.contract is not None else None

    @property
    def edits_documents(self) -> bool:
        """True when preparing a document changes it (ignore or normalize rules)."""
        return bool(self.ignore or self.normalize)


def _parse(text: str, place: Place) -> Path:
    try:
        return jsonpath.parse(text)
    except PathError as exc:
        raise RuleError(place, str(exc)) from None


def _check_old_terms(path: Path, text: str, contract: Contract | None, place: Place) -> None:
    if contract is None:
        return
    if contract.path_to_new(path) == path and (old := contract.path_to_old(path)) != path:
        raise RuleError(
            place,
            f"{text} is the new platform's name; compare rules use the old contract's paths "
            f"(did you mean {jsonpath.format_path(old)}?)",
        )


def compile_rules(
    spec: CompareSpec, contract: Contract | None = None, place: Place = ()
) -> CompareRules:
    """A route's `compare` spec compiled against its contract (None when the APIs are alike)."""
    headers = tuple(dict.fromkeys(name.lower() for name in spec.headers))

    ignore: list[Path] = []
    for index, text in enumerate(spec.ignore):
        at = (*place, "ignore", index)
        path = _parse(text, at)
        _check_old_terms(path, text, contract, at)
        ignore.append(path)

    def check(path: Path, text: str, at: Place) -> None:
        _check_old_terms(path, text, contract, at)
        for ignored in ignore:
            if jsonpath.covers(ignored, path):
                raise RuleError(
                    at,
                    f"{text} is under the ignored {jsonpath.format_path(ignored)}: no effect",
                )

    normalize: dict[Path, tuple[str, Normalizer]] = {}
    for text, names in spec.normalize.items():
        at = (*place, "normalize", text)
        path = _parse(text, at)
        check(path, text, at)
        if path in normalize:
            raise RuleError(at, f"{text} is normalized twice (also as {normalize[path][0]})")
        try:
            normalize[path] = (text, compile_normalizers(names))
        except ValueError as exc:
            raise RuleError(at, str(exc)) from None

    trie = RuleNode()
    tolerance: dict[Path, float] = {}
    for text, amount in spec.tolerance.items():
        at = (*place, "tolerance", text)
        path = _parse(text, at)
        check(path, text, at)
        if not math.isfinite(amount) or amount < 0:
            raise RuleError(at, f"a tolerance is a finite number >= 0, got {amount!r}")
        tolerance[path] = float(amount)
        trie.insert(path).tolerance = float(amount)

    list_keys: dict[Path, str] = {}
    for text, key in spec.list_keys.items():
        at = (*place, "list_keys", text)
        path = _parse(text, at)
        check(path, text, at)
        if not isinstance(key, str) or not key:
            raise RuleError(at, f"a list key names a field of the elements, got {key!r}")
        list_keys[path] = key
        trie.insert(path).list_key = key

    redact_root = RuleNode()
    redact: list[Path] = []
    for index, text in enumerate(spec.redact):
        at = (*place, "redact", index)
        path = _parse(text, at)
        _check_old_terms(path, text, contract, at)
        redact.append(path)
        redact_root.insert(path).redact = True

    collection = contract.collection_old if contract is not None else None
    ordered = sorted(normalize.items(), key=lambda item: -len(item[0]))
    return CompareRules(
        headers=headers,
        ignore=tuple(path for path in ignore if path),
        ignore_body=any(not path for path in ignore),
        normalize=tuple((path, fn) for path, (_, fn) in ordered),
        tolerance=tolerance,
        list_keys=list_keys,
        redact=tuple(redact),
        max_body=int(spec.max_body),
        noise_probe_percent=float(spec.noise_probe_percent),
        contract=contract,
        diff_trie=_mounted(trie, collection) if tolerance or list_keys else None,
        redact_trie=_mounted(redact_root, collection) if redact else None,
    )


def record_slots(doc: Any, rules: CompareRules) -> list[tuple[list[Any], int]]:
    """The records of a list answer, as (list, index): top-level elements or the collection's."""
    if isinstance(doc, list):
        return [(doc, index) for index in range(len(doc))]
    collection = rules.collection
    if collection is not None and isinstance(doc, dict):
        items = jsonpath.get_at(doc, collection)
        if isinstance(items, list):
            return [(items, index) for index in range(len(items))]
    return []


def _apply(doc: Any, rules: CompareRules) -> Any:
    """Ignore, then normalize, on one record (or the body around the records); returns the root."""
    for path in rules.ignore:
        if len(path) == 1 and type(path[0]) is str:  # `$.key`, the common case: no walk
            if type(doc) is dict:
                doc.pop(path[0], None)
            continue
        found = jsonpath.slots(doc, path)
        # delete list elements from the back so earlier indices stay valid
        for container, key in reversed(found):
            del container[key]
    for path, normalizer in rules.normalize:
        if not path:
            doc = normalizer(doc)
            continue
        for container, key in jsonpath.slots(doc, path):
            container[key] = normalizer(container[key])  # type: ignore[index]
    return doc


def prepare(doc: Any, rules: CompareRules) -> Any:
    """Apply ignore and normalize in place to every record and then to the body; returns the root.

    The caller owns `doc` (compare parses its own copies); records first, so a rule on the
    body sees records that are already normalized.
    """
    if not (rules.ignore or rules.normalize):  # edits_documents, inline: twice per comparison
        return doc
    if rules.contract is not None or isinstance(doc, list):  # else it has no records to find
        for items, index in record_slots(doc, rules):
            items[index] = _apply(items[index], rules)
    return _apply(doc, rules)
