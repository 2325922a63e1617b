"""compare: status, headers and bodies under a route's rules, as tables and as properties."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config.spec import CompareSpec, ContractSpec
from shadow.compare import (
    MAX_DEPTH,
    Comparison,
    Difference,
    Observation,
    compare,
    compare_docs,
    compare_repeat,
)
from shadow.contract import Contract, compile_contract
from shadow.rules import CompareRules, compile_rules

JSON = "application/json"


def rules(contract: Contract | None = None, **spec: Any) -> CompareRules:
    return compile_rules(CompareSpec.model_validate(spec), contract, ("routes", 0, "compare"))


def observe(
    body: Any, status: int = 200, content_type: str = JSON, headers: dict[str, str] | None = None
) -> Observation:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Observation(
        status=status,
        headers={"content-type": content_type, **(headers or {})},
        body=raw,
        body_sha256=hashlib.sha256(raw).hexdigest(),
        body_size=len(raw),
        content_type=content_type,
    )


def desc(body: Any) -> str:
    """What a difference shows for a body it does not diff: its size and hash."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return f"<{len(raw)} bytes sha256:{hashlib.sha256(raw).hexdigest()[:8]}…>"


def summary(result: Comparison) -> list[tuple[str, str, Any, Any]]:
    return [(d.path, d.kind, d.old, d.new) for d in result.differences]


# --- the tree diff, one case per line: old doc, new doc, rules, expected differences -----------

R: dict[str, Any] = {}  # no rules
DOC_CASES = [
    ("equal", {"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, R, []),
    ("changed", {"a": 1}, {"a": 2}, R, [("$.a", "changed", 1, 2)]),
    ("missing", {"a": 1, "b": 2}, {"a": 1}, R, [("$.b", "missing", 2, None)]),
    ("extra", {"a": 1}, {"a": 1, "c": {"x": 1}}, R, [("$.c", "extra", None, {"x": 1})]),
    ("type str/num", {"a": "1"}, {"a": 1}, R, [("$.a", "type", "1", 1)]),
    ("type null", {"a": None}, {"a": "x"}, R, [("$.a", "type", None, "x")]),
    ("type bool/int", {"a": True}, {"a": 1}, R, [("$.a", "type", True, 1)]),
    ("type bool/int deep", {"a": [{"b": False}]}, {"a": [{"b": 0}]}, R,
     [("$.a[0].b", "type", False, 0)]),
    ("type obj/list", {"a": {}}, {"a": []}, R, [("$.a", "type", {}, [])]),
    ("int equals float", {"a": 1, "b": [2.0]}, {"a": 1.0, "b": [2]}, R, []),
    ("nested", {"address": {"city": "London"}}, {"address": {"city": "Paris"}}, R,
     [("$.address.city", "changed", "London", "Paris")]),
    ("odd key", {"a b": 1}, {"a b": 2}, R, [("$['a b']", "changed", 1, 2)]),
    ("root scalar", 1, 2, R, [("$", "changed", 1, 2)]),
    ("root type", {"a": 1}, [1], R, [("$", "type", {"a": 1}, [1])]),
    # lists by position
    ("list changed", {"l": [1, 2, 3]}, {"l": [1, 5, 3]}, R, [("$.l[1]", "changed", 2, 5)]),
    ("list shorter", {"l": [1, 2, 3]}, {"l": [1]}, R,
     [("$.l[1]", "missing", 2, None), ("$.l[2]", "missing", 3, None)]),
    ("list longer", {"l": [1]}, {"l": [1, 2]}, R, [("$.l[1]", "extra", None, 2)]),
    ("list order matters", {"l": [1, 2]}, {"l": [2, 1]}, R,
     [("$.l[0]", "changed", 1, 2), ("$.l[1]", "changed", 2, 1)]),
    # lists matched by key
    ("keyed reorder", {"c": [{"id": 1, "t": "a"}, {"id": 2, "t": "b"}]},
     {"c": [{"id": 2, "t": "b"}, {"id": 1, "t": "a"}]}, {"list_keys": {"$.c": "id"}}, []),
    ("keyed change reports old index", {"c": [{"id": 1, "t": "a"}, {"id": 2, "t": "b"}]},
     {"c": [{"id": 2, "t": "B"}, {"id": 1, "t": "a"}]}, {"list_keys": {"$.c": "id"}},
     [("$.c[1].t", "changed", "b", "B")]),
    ("keyed missing", {"c": [{"id": 1}, {"id": 2}]}, {"c": [{"id": 2}]},
     {"list_keys": {"$.c": "id"}}, [("$.c[0]", "missing", {"id": 1}, None)]),
    ("keyed extra reports new index", {"c": [{"id": 1}]}, {"c": [{"id": 3}, {"id": 1}]},
     {"list_keys": {"$.c": "id"}}, [("$.c[0]", "extra", None, {"id": 3})]),
    ("keyed unkeyed by order", {"c": [{"id": 1}, {"x": 1}, 5]}, {"c": [{"x": 2}, {"id": 1}, 5]},
     {"list_keys": {"$.c": "id"}}, [("$.c[1].x", "changed", 1, 2)]),
    ("keyed nested wildcard", {"t": [{"c": [{"id": "a", "v": 1}, {"id": "b", "v": 2}]}]},
     {"t": [{"c": [{"id": "b", "v": 2}, {"id": "a", "v": 9}]}]},
     {"list_keys": {"$.t[*].c": "id"}}, [("$.t[0].c[0].v", "changed", 1, 9)]),
    ("keyed true is not 1", {"c": [{"id": True}]}, {"c": [{"id": 1}]},
     {"list_keys": {"$.c": "id"}},
     [("$.c[0]", "missing", {"id": True}, None), ("$.c[0]", "extra", None, {"id": 1})]),
    # tolerance
    ("tolerance within", {"balance": 10.0}, {"balance": 10.005}, {"tolerance": {"$.balance": 0.01}},
     []),
    ("tolerance edge", {"balance": 10}, {"balance": 11}, {"tolerance": {"$.balance": 1}}, []),
    ("tolerance beyond", {"balance": 10.0}, {"balance": 10.02}, {"tolerance": {"$.balance": 0.01}},
     [("$.balance", "changed", 10.0, 10.02)]),
    ("tolerance only where listed", {"balance": 1, "x": 1}, {"balance": 1.001, "x": 1.001},
     {"tolerance": {"$.balance": 0.01}}, [("$.x", "changed", 1, 1.001)]),
    ("tolerance wildcard", {"lines": [{"amount": 1.0}, {"amount": 2.0}]},
     {"lines": [{"amount": 1.001}, {"amount": 2.5}]}, {"tolerance": {"$.lines[*].amount": 0.01}},
     [("$.lines[1].amount", "changed", 2.0, 2.5)]),
    ("tolerance not for strings", {"balance": "10"}, {"balance": "10.001"},
     {"tolerance": {"$.balance": 1}}, [("$.balance", "changed", "10", "10.001")]),
    # ignore
    ("ignore key", {"a": 1, "etag": "x"}, {"a": 1, "etag": "y"}, {"ignore": ["$.etag"]}, []),
    ("ignore absent on one side", {"a": 1, "etag": "x"}, {"a": 1}, {"ignore": ["$.etag"]}, []),
    ("ignore wildcard", {"c": [{"at": 1, "b": 1}, {"at": 2, "b": 2}]},
     {"c": [{"at": 3, "b": 1}, {"at": 4, "b": 3}]}, {"ignore": ["$.c[*].at"]},
     [("$.c[1].b", "changed", 2, 3)]),
    ("ignore subtree", {"meta": {"x": 1, "y": 2}}, {"meta": 5}, {"ignore": ["$.meta"]}, []),
    ("ignore list element", {"l": [0, 1, 2]}, {"l": [9, 1, 2]}, {"ignore": ["$.l[0]"]}, []),
    ("ignore whole body", {"a": 1}, {"b": 2}, {"ignore": ["$"]}, []),
    # normalize
    ("normalize lower", {"email": "Ann@X.com"}, {"email": "ann@x.com"},
     {"normalize": {"$.email": "lower"}}, []),
    ("normalize chain", {"email": " Ann@X.com "}, {"email": "ann@x.com"},
     {"normalize": {"$.email": ["trim", "lower"]}}, []),
    ("normalize shows normalized values", {"email": "A@x"}, {"email": "B@x"},
     {"normalize": {"$.email": "lower"}}, [("$.email", "changed", "a@x", "b@x")]),
    ("normalize e164", {"phone": "(020) 7946 0018"}, {"phone": "+442079460018"},
     {"normalize": {"$.phone": "e164:44"}}, []),
    ("normalize iso8601", {"at": "2026-11-23T10:00:00+01:00"}, {"at": "2026-11-23T09:00:00Z"},
     {"normalize": {"$.at": "iso8601"}}, []),
    ("normalize sort", {"tags": ["b", "a"]}, {"tags": ["a", "b"]}, {"normalize": {"$.tags": "sort"}},
     []),
    ("normalize number", {"n": "12.50"}, {"n": 12.5}, {"normalize": {"$.n": "number"}}, []),
    ("normalize digits", {"n": "12-34"}, {"n": "1234"}, {"normalize": {"$.n": "digits"}}, []),
    ("normalize collapse_space", {"s": "a  b"}, {"s": " a b"},
     {"normalize": {"$.s": "collapse_space"}}, []),
    ("normalize upper", {"s": "open"}, {"s": "OPEN"}, {"normalize": {"$.s": "upper"}}, []),
    ("normalize wildcard", {"c": [{"at": "2026-01-01T01:00:00+01:00"}]},
     {"c": [{"at": "2026-01-01T00:00:00Z"}]}, {"normalize": {"$.c[*].at": "iso8601"}}, []),
    ("normalize children before parents", {"t": ["B", "a"]}, {"t": ["b", "A"]},
     {"normalize": {"$.t[*]": "lower", "$.t": "sort"}}, []),
    ("normalize wrong type is a difference", {"n": 1}, {"n": "one"},
     {"normalize": {"$.n": "number"}}, [("$.n", "type", 1, "one")]),
    # ignore and normalize together
    ("ignore + normalize", {"email": "A@x", "etag": 1, "tags": ["b", "a"]},
     {"email": "a@x", "etag": 2, "tags": ["a", "b"]},
     {"ignore": ["$.etag"], "normalize": {"$.email": "lower", "$.tags": "sort"}}, []),
    ("ignore inside a normalized list", {"c": [{"id": 2, "at": 1}, {"id": 1, "at": 2}]},
     {"c": [{"id": 1, "at": 3}, {"id": 2, "at": 4}]},
     {"ignore": ["$.c[*].at"], "normalize": {"$.c": "sort"}}, []),
    # records of list answers get the record rules
    ("top-level array records", [{"etag": 1, "a": 1}, {"etag": 2, "a": 2}],
     [{"etag": 3, "a": 1}, {"etag": 4, "a": 5}], {"ignore": ["$.etag"]},
     [("$[1].a", "changed", 2, 5)]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "spec", "expected"),
    [case[1:] for case in DOC_CASES],
    ids=[case[0] for case in DOC_CASES],
)
def test_compare_docs(old, new, spec, expected):
    """Tree differences under ignore, normalize, tolerance and list_keys; inputs untouched."""
    before = copy.deepcopy((old, new))
    result = compare_docs(old, new, rules(**spec))
    assert summary(result) == expected
    assert result.match is (not expected)
    assert result.mode == "json"
    assert (old, new) == before


# --- whole observations ------------------------------------------------------------------------

CONTRACT = compile_contract(
    ContractSpec.model_validate(
        {
            "collection": {"old": "$.items", "new": "$.data"},
            "envelope": {"$.total": "$.meta.total"},
            "fields": {"$.full_name": "$.name", "$.phone": "$.phone_e164"},
            "values": {"$.status": {"open": "OPEN", "closed": "RESOLVED"}},
        }
    ),
    ("routes", 0, "contract"),
)


def fails(direction: str, doc: Any) -> Any:
    raise ValueError("hook bug")


HOOKED = compile_contract(ContractSpec(hook=f"{__name__}:fails"))


def big(obs: Observation) -> Observation:
    return Observation(obs.status, obs.headers, None, obs.body_sha256, obs.body_size, JSON)


OBS_CASES = [
    ("status", observe({"a": 1}, 200), observe({"a": 1}, 404), rules(),
     "json", [("@status", "changed", 200, 404)]),
    ("listed header changed", observe({}, headers={"etag": "1"}), observe({}, headers={"etag": "2"}),
     rules(headers=["ETag"]), "json", [("@headers.etag", "changed", "1", "2")]),
    ("listed header missing", observe({}, headers={"x-a": "1"}), observe({}),
     rules(headers=["X-A"]), "json", [("@headers.x-a", "missing", "1", None)]),
    ("listed header extra", observe({}), observe({}, headers={"x-a": "1"}),
     rules(headers=["X-A"]), "json", [("@headers.x-a", "extra", None, "1")]),
    ("unlisted header", observe({}, headers={"x-a": "1"}), observe({}, headers={"x-a": "2"}),
     rules(), "json", []),
    ("content type listed", observe({}), observe({}, content_type="application/json; charset=utf-8"),
     rules(headers=["Content-Type"]), "json",
     [("@headers.content-type", "changed", JSON, "application/json; charset=utf-8")]),
    ("bytes equal", observe(b"hello", content_type="text/plain"),
     observe(b"hello", content_type="text/plain"), rules(), "bytes", []),
    ("bytes differ", observe(b"hello", content_type="text/plain"),
     observe(b"world", content_type="text/plain"), rules(), "bytes",
     [("$", "changed", desc(b"hello"), desc(b"world"))]),
    ("json vs html", observe({"a": 1}), observe(b"<html>502</html>", content_type="text/html"),
     rules(), "bytes", [("$", "type", desc({"a": 1}), desc(b"<html>502</html>"))]),
    ("invalid json is bytes", observe(b'{"a":', content_type=JSON), observe(b'{"a":1}'),
     rules(), "bytes", [("$", "type", desc(b'{"a":'), desc({"a": 1}))]),
    ("json by looks", observe(b'{"a":1}', content_type=""), observe(b'{ "a": 1 }', content_type=""),
     rules(), "json", []),
    ("empty bodies", observe(b"", content_type=JSON), observe(b"", content_type=JSON), rules(),
     "json", []),
    ("hash mode equal", big(observe({"a": 1})), big(observe({"a": 1})), rules(), "hash", []),
    ("hash mode differ", big(observe({"a": 1})), observe({"a": 2}), rules(), "hash",
     [("$", "changed", desc({"a": 1}), desc({"a": 2}))]),
    ("new side translated", observe({"full_name": "Ann", "status": "open", "x": 1}),
     observe({"name": "Ann", "status": "OPEN", "x": 1}), rules(CONTRACT), "json", []),
    ("translated list answer",
     observe({"items": [{"full_name": "Ann"}], "total": 1}),
     observe({"data": [{"name": "Bob"}], "meta": {"total": 1}}), rules(CONTRACT), "json",
     [("$.items[0].full_name", "changed", "Ann", "Bob")]),
    ("identical bytes still translated", observe({"status": "OPEN"}), observe({"status": "OPEN"}),
     rules(CONTRACT), "json", [("$.status", "changed", "OPEN", "open")]),
    ("hook failure is a difference", observe({"a": 1}), observe({"a": 2}), rules(HOOKED), "json",
     [("@contract", "changed", None, "<translation failed: ValueError>")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "compiled", "mode", "expected"),
    [case[1:] for case in OBS_CASES],
    ids=[case[0] for case in OBS_CASES],
)
def test_compare(old, new, compiled, mode, expected):
    """Status, listed headers, bodies as JSON, bytes or hashes."""
    result = compare(old, new, compiled)
    assert summary(result) == expected
    assert result.mode == mode
    assert result.match is (not expected)


def test_new_is_translated_skips_the_contract():
    """A new answer the proxy already translated for the client is not translated twice."""
    old, translated, raw = (
        observe({"full_name": "Ann"}),
        observe({"full_name": "Ann"}),
        observe({"name": "Ann"}),
    )
    assert compare(old, raw, rules(CONTRACT)).match
    assert compare(old, translated, rules(CONTRACT), new_is_translated=True).match
    assert not compare(old, raw, rules(CONTRACT), new_is_translated=True).match


def test_json_mode_returns_the_documents_as_compared():
    """old_doc/new_doc are after mapping, ignore and normalize: what QA sees side by side."""
    result = compare(
        observe({"full_name": "Ann", "etag": 1, "email": "A@x"}),
        observe({"name": "Ann", "etag": 2, "email": "a@x"}),
        rules(CONTRACT, ignore=["$.etag"], normalize={"$.email": "lower"}),
    )
    assert result.old_doc == result.new_doc == {"full_name": "Ann", "email": "a@x"}


def test_repeat_probes_on_the_new_platform_compare_in_old_terms():
    """compare_repeat translates both answers of a new-platform pair."""
    first = observe({"name": "Ann", "phone_e164": "1"})
    second = observe({"name": "Ann", "phone_e164": "2"})
    result = compare_repeat(first, second, rules(CONTRACT), side="new")
    assert summary(result) == [("$.phone", "changed", "1", "2")]
    assert compare_repeat(first, second, rules(CONTRACT), side="old").differences[0].path == (
        "$.phone_e164"
    )


def nest(depth: int, leaf: Any) -> Any:
    doc = leaf
    for _ in range(depth):
        doc = {"a": doc}
    return doc


def test_deep_nesting_is_a_difference_not_a_crash():
    """Beyond MAX_DEPTH the rest is compared as one value and reported where it starts."""
    deep_path = "$" + ".a" * MAX_DEPTH
    assert compare_docs(nest(900, 1), nest(900, 1), rules()).match
    result = compare_docs(nest(900, 1), nest(900, 2), rules())
    assert [(d.path, d.kind) for d in result.differences] == [(deep_path, "changed")]
    # orjson refuses to parse beyond its own limit: then the bodies are compared as bytes
    too_deep = b"[" * 2000 + b"]" * 2000
    assert compare(observe(too_deep), observe(too_deep + b" "), rules()).mode == "bytes"


def test_identical_bytes_match_without_parsing():
    """The fast path: byte-identical bodies match even when they are not valid JSON."""
    result = compare(observe(b"{not json"), observe(b"{not json"), rules(ignore=["$.x"]))
    assert result.match
    assert result.old_doc is None


# --- properties --------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(["a", "b", "id", "tags", "c"])
RULE_PATHS = st.lists(KEYS | st.sampled_from(["*", 0]), min_size=1, max_size=3).map(
    lambda parts: (
        "$" + "".join("[*]" if p == "*" else f"[{p}]" if p == 0 else f".{p}" for p in parts)
    )
)
NORMALIZER_NAMES = st.sampled_from(
    ["lower", "upper", "trim", "collapse_space", "digits", "e164:44", "iso8601", "sort", "number"]
)


@st.composite
def rule_specs(draw: st.DrawFn) -> dict[str, Any]:
    ignore = draw(st.lists(RULE_PATHS, max_size=2, unique=True))
    spec: dict[str, Any] = {"ignore": ignore}
    spec["normalize"] = draw(
        st.dictionaries(RULE_PATHS, st.lists(NORMALIZER_NAMES, min_size=1, max_size=2), max_size=2)
    )
    spec["tolerance"] = draw(st.dictionaries(RULE_PATHS, st.floats(0, 10), max_size=2))
    spec["list_keys"] = draw(st.dictionaries(RULE_PATHS, KEYS, max_size=2))
    return spec


def compiled_or_none(spec: dict[str, Any]) -> CompareRules | None:
    try:
        return rules(**spec)
    except ValueError:  # a random rule under a random ignore: refused, which test_rules covers
        return None


def reorder(doc: Any) -> Any:
    """The same document with every object's keys in reverse order."""
    if isinstance(doc, dict):
        return {k: reorder(doc[k]) for k in reversed(list(doc))}
    if isinstance(doc, list):
        return [reorder(x) for x in doc]
    return doc


@given(JSON_VALUES, rule_specs())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_document_compared_with_itself_has_no_differences(doc, spec):
    """Same document (keys in another order) on both sides: a match, under any rules."""
    compiled = compiled_or_none(spec)
    if compiled is None:
        return
    result = compare_docs(doc, reorder(doc), compiled)
    assert result.differences == ()
    assert result.match


@given(JSON_VALUES, JSON_VALUES, rule_specs())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_compare_never_raises_on_arbitrary_json(old, new, spec):
    """Any two documents, any rules: a Comparison, with canonical paths and known kinds."""
    compiled = compiled_or_none(spec)
    if compiled is None:
        return
    result = compare_docs(old, new, compiled)
    assert result.match is (not result.differences)
    for difference in result.differences:
        assert difference.path.startswith("$")
        assert difference.kind in {"changed", "missing", "extra", "type"}


BODIES = st.binary(max_size=40) | JSON_VALUES.map(
    lambda v: orjson.dumps(v, default=str) if _dumpable(v) else b"[]"
)


def _dumpable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


@given(BODIES, BODIES, st.sampled_from(["", JSON, "text/plain"]), st.booleans())
@settings(max_examples=300, deadline=None)
def test_compare_never_raises_on_garbage_bodies(old_body, new_body, content_type, translate):
    """Arbitrary bytes, declared JSON or not, through a contract or not: never an exception."""
    compiled = rules(CONTRACT) if translate else rules()
    result = compare(observe(old_body, content_type=content_type), observe(new_body), compiled)
    assert result.mode in {"json", "bytes"}
    assert result.match is (not result.differences)


# documents in the old contract, for the mapping property (orjson writes 64-bit integers)
JSON_64 = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
OLD_RECORDS = st.fixed_dictionaries(
    {"id": st.integers(0, 10**6)},
    optional={
        "full_name": st.text(max_size=8),
        "phone": st.text(max_size=8),
        "status": st.sampled_from(["open", "closed", "other"]),
        "notes": JSON_64,
    },
)


@given(st.lists(OLD_RECORDS, max_size=3) | OLD_RECORDS, st.booleans())
@settings(max_examples=200, deadline=None)
def test_a_document_mapped_to_new_matches_its_source(doc, as_collection):
    """The new side being the old document translated by the contract: no differences."""
    if as_collection and isinstance(doc, list):
        doc = {"items": doc, "total": len(doc)}
    result = compare(observe(doc), observe(CONTRACT.body_to_new(doc)), rules(CONTRACT))
    assert result.differences == ()


DISJOINT_IGNORE = ["$.etag", "$.c[*].at", "$.meta"]
DISJOINT_NORMALIZE = {"$.email": ["trim", "lower"], "$.tags": "sort", "$.c[*].n": "number"}
PREPARED_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "etag": SCALARS,
        "email": st.text(max_size=6) | SCALARS,
        "tags": st.lists(st.text(max_size=3), max_size=4) | SCALARS,
        "meta": JSON_VALUES,
        "c": st.lists(
            st.fixed_dictionaries(
                {}, optional={"at": SCALARS, "n": st.sampled_from(["1", "2.5", "x"])}
            ),
            max_size=3,
        ),
    },
)


@given(PREPARED_DOCS)
@settings(max_examples=200, deadline=None)
def test_ignore_and_normalize_compose_in_any_order(doc):
    """On disjoint paths, ignore-then-normalize equals normalize-then-ignore, and both are
    idempotent: comparing the prepared documents again changes nothing."""
    both = rules(ignore=DISJOINT_IGNORE, normalize=DISJOINT_NORMALIZE)
    only_ignore = rules(ignore=DISJOINT_IGNORE)
    only_normalize = rules(normalize=DISJOINT_NORMALIZE)
    once = compare_docs(doc, {}, both).old_doc
    ignore_first = compare_docs(compare_docs(doc, {}, only_ignore).old_doc, {}, only_normalize)
    normalize_first = compare_docs(compare_docs(doc, {}, only_normalize).old_doc, {}, only_ignore)
    assert once == ignore_first.old_doc == normalize_first.old_doc
    assert compare_docs(once, {}, both).old_doc == once


def test_differences_are_frozen_values():
    """Difference and Comparison are immutable records, safe to share with log writers."""
    difference = Difference("$.a", "changed", 1, 2)
    with pytest.raises(AttributeError):
        difference.path = "$.b"  # type: ignore[misc]
