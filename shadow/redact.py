"""Masking personal data: the one place that decides what a diff record may show in clear.

A route's `compare.redact` paths are record paths in the old contract (see `shadow.rules`), so
they apply to a single record, to each record of a list answer, and with wildcards. Masked
("***"), in documents and in differences alike:

- a value at or under a redacted path;
- a value at a path that contains one (a difference at `$.address` when `$.address.city` is
  redacted, a whole record missing from a list, the whole body), as it carries the field inside;
- a value on the way to a redacted path that has the wrong shape to hold it (a string or a list
  where `$.address.city` expects an object): the platform put something else where the field was.

Nulls stay null (nothing to hide), and the size-and-hash descriptions compare makes for whole
bodies stay (they hold no content). Documents and difference paths are judged by walking the
same trie of redacted paths, so the two can never disagree.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final

from shadow import jsonpath
from shadow.compare import Comparison, Difference
from shadow.jsonpath import PathError
from shadow.rules import CompareRules, RuleNode, step

__all__ = ["MASK", "is_redacted", "redact_comparison", "redact_difference", "redact_doc"]

MASK: Final = "***"

_DESCRIPTION = re.compile(r"<\d+ bytes sha256:[0-9a-f]{0,64}…>")


def _fits(nodes: tuple[RuleNode, ...], by_key: bool) -> bool:
    """Whether some rule goes on into an object (by_key) or a list from here."""
    if by_key:
        return any(node.keys or node.wildcard for node in nodes)
    return any(node.indices or node.wildcard or node.any_index for node in nodes)


def _misshapen(nodes: tuple[RuleNode, ...]) -> bool:
    """A rule leads on from here, but not into what the document holds: mask it whole.

    Only a rule's own steps count: where records hang from (mounts) nothing is expected.
    """
    return any(not node.mount for node in nodes)


def _copy_masked(value: Any, nodes: tuple[RuleNode, ...]) -> Any:
    if not nodes:
        return jsonpath.copy_doc(value)
    if value is None:
        return None
    if any(node.redact for node in nodes):
        return MASK
    if isinstance(value, dict) and _fits(nodes, by_key=True):
        return {key: _copy_masked(item, step(nodes, key)) for key, item in value.items()}
    if isinstance(value, list) and _fits(nodes, by_key=False):
        return [_copy_masked(item, step(nodes, index)) for index, item in enumerate(value)]
    return MASK if _misshapen(nodes) else jsonpath.copy_doc(value)


def redact_doc(doc: Any, rules: CompareRules) -> Any:
    """A deep copy of `doc` with every value at a redacted path replaced by "***"."""
    if rules.redact_trie is None:
        return jsonpath.copy_doc(doc)
    return _copy_masked(doc, rules.redact_trie)


def is_redacted(path: str, rules: CompareRules) -> bool:
    """True when a difference at `path` (its canonical text) may hold a redacted value."""
    nodes = rules.redact_trie
    if nodes is None or path.startswith("@"):
        return False
    try:
        parsed = jsonpath.parse(path)
    except PathError:
        return True  # a path we cannot read could be anything: mask
    for segment in parsed:
        if any(node.redact for node in nodes):
            return True
        if not _fits(nodes, by_key=type(segment) is str):
            return _misshapen(nodes)
        nodes = step(nodes, segment)  # type: ignore[arg-type]
        if not nodes:
            return False
    return True  # at a redacted path, or above one


def _mask(value: Any, whole_body: bool) -> Any:
    if value is None:
        return None
    if whole_body and isinstance(value, str) and _DESCRIPTION.fullmatch(value):
        return value
    return MASK


def redact_difference(difference: Difference, rules: CompareRules) -> Difference:
    """The difference as a diff log may hold it: old/new masked if the path touches a redaction."""
    if not is_redacted(difference.path, rules):
        return difference
    whole_body = difference.path == "$"
    return dataclasses.replace(
        difference, old=_mask(difference.old, whole_body), new=_mask(difference.new, whole_body)
    )


def redact_comparison(comparison: Comparison, rules: CompareRules) -> Comparison:
    """The whole comparison made safe to log: differences, noise and both documents."""
    if not rules.redact:
        return comparison
    return dataclasses.replace(
        comparison,
        differences=tuple(redact_difference(d, rules) for d in comparison.differences),
        noise=tuple(redact_difference(d, rules) for d in comparison.noise),
        old_doc=None if comparison.old_doc is None else redact_doc(comparison.old_doc, rules),
        new_doc=None if comparison.new_doc is None else redact_doc(comparison.new_doc, rules),
    )
