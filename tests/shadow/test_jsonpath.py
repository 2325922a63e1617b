"""Reading, editing and relating documents along JSONPath-subset paths."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.jsonpath import (
    MISSING,
    WILDCARD,
    copy_doc,
    covers,
    delete_at,
    find,
    format_path,
    generalize,
    get_at,
    matches,
    overlaps,
    parse,
    set_at,
    slots,
)

DOC = {
    "name": "Ann",
    "address": {"city": "London", "postcode": "N1"},
    "comments": [{"id": 1, "body": "a"}, {"id": 2}, {"id": 3, "body": "c"}],
    "odd key": {"x": 1},
    "tags": ["b", "a"],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", [("$", DOC)]),
        ("$.name", [("$.name", "Ann")]),
        ("$.address.city", [("$.address.city", "London")]),
        ("$.missing", []),
        ("$.name.deeper", []),
        ("$.comments[0].id", [("$.comments[0].id", 1)]),
        ("$.comments[-1].id", [("$.comments[2].id", 3)]),
        ("$.comments[9].id", []),
        ("$.comments[*].body", [("$.comments[0].body", "a"), ("$.comments[2].body", "c")]),
        ("$.address[*]", [("$.address.city", "London"), ("$.address.postcode", "N1")]),
        ("$['odd key'].x", [("$['odd key'].x", 1)]),
        ("$.tags[*]", [("$.tags[0]", "b"), ("$.tags[1]", "a")]),
        ("$.name[*]", []),
        ("$.address[0]", []),
    ],
)
def test_find_yields_every_concrete_place_in_document_order(path, expected):
    """find() resolves wildcards and negative indices into concrete, canonical places."""
    got = [(format_path(p), v) for p, v in find(DOC, parse(path))]
    assert got == expected


def test_get_at_distinguishes_null_from_absent():
    """A JSON null is a value; an absent key is MISSING (or the default given)."""
    doc = {"a": None}
    assert get_at(doc, ("a",)) is None
    assert get_at(doc, ("b",)) is MISSING
    assert get_at(doc, ("b",), default=0) == 0
    assert get_at(doc, ("a", WILDCARD)) is MISSING


@pytest.mark.parametrize(
    ("doc", "path", "value", "expected", "ok"),
    [
        ({}, "$.a.b", 1, {"a": {"b": 1}}, True),
        ({"a": 5}, "$.a.b", 1, {"a": 5}, False),
        ({}, "$.a[0].b", 1, {"a": [{"b": 1}]}, True),
        ({"a": [1]}, "$.a[1]", 2, {"a": [1, 2]}, True),
        ({"a": [1]}, "$.a[3]", 2, {"a": [1]}, False),
        ({"a": [1, 2]}, "$.a[-1]", 9, {"a": [1, 9]}, True),
        ({"a": 1}, "$.a", 2, {"a": 2}, True),
        ({}, "$.a[*]", 2, {}, False),
    ],
)
def test_set_at_creates_what_is_missing_and_never_overwrites_on_the_way(
    doc, path, value, expected, ok
):
    """set_at makes objects and lists on the way, appends at len(), refuses a scalar in the way."""
    assert set_at(doc, parse(path), value) is ok
    assert doc == expected


def test_set_at_without_create_only_replaces():
    """create=False never adds containers."""
    doc: dict[str, object] = {}
    assert set_at(doc, parse("$.a.b"), 1, create=False) is False
    assert doc == {}


@pytest.mark.parametrize(
    ("doc", "path", "expected", "ok"),
    [
        ({"a": {"b": 1, "c": 2}}, "$.a.b", {"a": {"c": 2}}, True),
        ({"a": [1, 2, 3]}, "$.a[1]", {"a": [1, 3]}, True),
        ({"a": [1, 2, 3]}, "$.a[-1]", {"a": [1, 2]}, True),
        ({"a": 1}, "$.b", {"a": 1}, False),
        ({"a": 1}, "$", {"a": 1}, False),
    ],
)
def test_delete_at_removes_one_place(doc, path, expected, ok):
    """delete_at removes a key or closes up a list; nothing there is not an error."""
    assert delete_at(doc, parse(path)) is ok
    assert doc == expected


def test_slots_allow_editing_while_iterating():
    """slots() are collected first, so replacing or deleting during the loop is safe."""
    doc = {"a": [{"x": 1}, {"x": 2}], "b": {"k": "v", "l": "w"}}
    for container, key in slots(doc, parse("$.a[*].x")):
        container[key] *= 10  # type: ignore[index]
    for container, key in slots(doc, parse("$.b[*]")):
        del container[key]  # type: ignore[arg-type]
    assert doc == {"a": [{"x": 10}, {"x": 20}], "b": {}}
    assert slots(doc, ()) == []


@pytest.mark.parametrize(
    ("rule", "path", "match", "cover", "overlap"),
    [
        ("$.a", "$.a", True, True, True),
        ("$.a", "$.a.b", False, True, True),
        ("$.a.b", "$.a", False, False, True),
        ("$.a[*].b", "$.a[3].b", True, True, True),
        ("$.a[*].b", "$.a[3]", False, False, True),
        ("$.a[*].b", "$.a.k.b", True, True, True),
        ("$.a[0].b", "$.a[1].b", False, False, False),
        ("$.a", "$.b", False, False, False),
        ("$", "$.x", False, True, True),
        ("$.x", "$", False, False, True),
        ("$.a['0']", "$.a[0]", False, False, False),
    ],
)
def test_rule_paths_relate_to_concrete_paths(rule, path, match, cover, overlap):
    """matches: same place; covers: at or under; overlaps: one contains the other."""
    r, p = parse(rule), parse(path)
    assert matches(r, p) is match
    assert covers(r, p) is cover
    assert overlaps(r, p) is overlap


def test_generalize_turns_indices_into_wildcards():
    """Reports aggregate $.comments[3].body and $.comments[7].body as one field."""
    assert format_path(generalize(parse("$.comments[3].body"))) == "$.comments[*].body"
    assert generalize(parse("$.a['0']")) == ("a", "0")


def test_copy_doc_is_deep_and_survives_what_orjson_refuses():
    """Big integers and deep nesting fall back to the loop copier."""
    doc: dict[str, Any] = {"big": 2**80, "list": [{"a": 1}]}
    copied = copy_doc(doc)
    assert copied == doc
    copied["list"][0]["a"] = 2
    assert doc["list"][0]["a"] == 1
    deep: list[object] = []
    node = deep
    for _ in range(600):
        child: list[object] = []
        node.append(child)
        node = child
    assert copy_doc(deep) is not deep
    assert copy_doc("text") == "text"


keys = st.text(max_size=6)
concrete_paths = st.lists(keys | st.integers(0, 20), max_size=6).map(tuple)


@given(concrete_paths)
@settings(max_examples=300)
def test_format_then_parse_is_the_identity(path):
    """Every concrete path a difference reports can be read back (noise and redact rely on it)."""
    assert parse(format_path(path)) == path
