"""The comparison engine under fuzzing: arbitrary JSON pairs as the platforms would send them
(bytes, any key, any nesting) through the routes' real compiled rules and contracts.

Properties: it never raises; an answer compared with itself (re-serialised) matches; every
difference names a valid concrete path at which its old and new values really are; swapping the
sides swaps the differences; and a diff-log record (`build_record`, what the diff log writes and
`cutover diff show` displays) never holds a redacted value or the customer key in clear.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import Route, load_config
from proxy.config.spec import CompareSpec
from proxy.observe import CustomerHasher
from proxy.shadowing import Answer, build_record
from shadow import compare as compare_module
from shadow import jsonpath
from shadow.compare import MAX_DEPTH, Comparison, Observation, compare, compare_docs, compare_repeat
from shadow.rules import CompareRules, compile_rules
from tests.configs import REPO

TABLE = load_config(REPO / "routes.yaml", env={})


def route(name: str) -> Route:
    found = TABLE.route(name)
    assert found is not None
    return found


CONTACTS = route("contacts")
TICKETS = route("tickets")
PLAIN = CompareRules()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = st.sampled_from(
    [
        "a",
        "b",
        "id",
        "email",
        "phone",
        "items",
        "data",
        "",
        "a b",
        "a'b",
        'a"b',
        "*",
        "0",
        "$",
        "é",
        "\\",
        "a.b",
        "[",
        "]",
        "full_name",
        "name",
        "status",
        "comments",
        "\u202e",
        "\n",
    ]
) | st.text(max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "",
    ]
)
KEYED_PATHS = st.sampled_from(["$.items", "$.tags", "$", "$.a"])


def observe(body: bytes, content_type: str = "application/json", status: int = 200) -> Observation:
    return Observation(
        status=status,
        headers={"content-type": content_type},
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_size=len(body),
        content_type=content_type,
    )


def serialise(doc: Any, *, reorder: bool = False, pretty: bool = False) -> bytes:
    if reorder:
        doc = _reversed(doc)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 if pretty else 0)


def _reversed(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _reversed(doc[k]) for k in reversed(list(doc))}
    if isinstance(doc, list):
        return [_reversed(v) for v in doc]
    return doc


@st.composite
def rule_sets(draw: st.DrawFn) -> CompareRules:
    """The routes' own rules (contracts, normalizers, ignore, redact), or random ones."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return CONTACTS.rules
    if choice == 1:
        return TICKETS.rules
    if choice == 2:
        return PLAIN
    paths = st.sampled_from(
        ["$.a", "$.b", "$.items[*].a", "$.a.b", "$[*].id", "$['a b']", "$.c[0]"]
    )
    spec = {
        "ignore": draw(st.lists(st.sampled_from(["$.etag", "$.b"]), max_size=1, unique=True)),
        "normalize": draw(
            st.dictionaries(
                st.sampled_from(["$.a", "$.email", "$.items[*].a"]),
                st.sampled_from(
                    ["lower", "trim", "digits", "number", "sort", "iso8601", "e164:44"]
                ),
                max_size=2,
            )
        ),
        "tolerance": draw(st.dictionaries(paths, st.floats(0, 5), max_size=2)),
        "list_keys": draw(st.dictionaries(KEYED_PATHS, st.sampled_from(["id", "a"]), max_size=1)),
        "redact": draw(st.lists(paths, max_size=2, unique=True)),
    }
    try:
        return compile_rules(CompareSpec.model_validate(spec))
    except ValueError:  # a random rule under a random ignore: refused (test_rules covers it)
        return PLAIN


def check_paths(result: Comparison) -> None:
    """Every difference names one valid place: `@status`, `@headers.<name>`, `@contract`, or a
    concrete JSONPath that parses and prints back to itself."""
    assert result.match is (not result.differences)
    for difference in (*result.differences, *result.noise):
        assert difference.kind in {"changed", "missing", "extra", "type"}
        path = difference.path
        if path.startswith("@"):
            assert path in {"@status", "@contract"} or path.startswith("@headers."), path
            continue
        parsed = jsonpath.parse(path)
        assert jsonpath.is_concrete(parsed), path
        assert jsonpath.format_path(parsed) == path, path


def check_values(result: Comparison, rules: CompareRules) -> None:
    """In JSON mode, the values a difference reports are the ones at its path in the documents
    as compared (an old-side index for keyed lists, where the new element is found by key)."""
    if result.mode != "json" or result.old_doc is None:
        return
    for difference in result.differences:
        if difference.path.startswith("@") or "nested deeper" in str(difference.old):
            continue
        parsed = jsonpath.parse(difference.path)
        old = jsonpath.get_at(result.old_doc, parsed)
        new = jsonpath.get_at(result.new_doc, parsed)
        if difference.kind == "missing":
            assert old == difference.old, difference
            if not rules.list_keys:
                assert new is jsonpath.MISSING, difference
        elif difference.kind == "extra":
            assert new == difference.new, difference
            if not rules.list_keys:
                assert old is jsonpath.MISSING, difference
        else:
            assert old == difference.old, difference
            if not rules.list_keys:
                assert new == difference.new, difference


@given(JSON, JSON, rule_sets(), CONTENT_TYPES, CONTENT_TYPES, st.integers(100, 599))
@FUZZ
def test_any_two_answers_compare_without_raising(old, new, rules, old_type, new_type, status):
    """Arbitrary documents, declared JSON or not, any status, under any route's rules."""
    result = compare(
        observe(serialise(old), old_type), observe(serialise(new), new_type, status), rules
    )
    check_paths(result)
    check_values(result, rules)
    if status != 200:
        assert any(d.path == "@status" for d in result.differences)


@given(st.binary(max_size=200), st.binary(max_size=200), rule_sets(), CONTENT_TYPES)
@FUZZ
def test_any_two_byte_strings_compare_without_raising(old, new, rules, content_type):
    """Invalid JSON, truncated JSON, binary: compared as bytes, never an exception."""
    for body in (old, new):
        truncated = body[: len(body) // 2]
        result = compare(observe(body, content_type), observe(truncated, content_type), rules)
        check_paths(result)
    assert compare(observe(old, content_type), observe(old, content_type), rules).match


@given(JSON, rule_sets(), st.booleans())
@FUZZ
def test_an_answer_compared_with_itself_matches(doc, rules, pretty):
    """The same document, serialised with its keys in another order and other whitespace:
    a match under any rules, and so are two answers of one platform (a noise probe)."""
    first = observe(serialise(doc))
    second = observe(serialise(doc, reorder=True, pretty=pretty))
    if rules.contract is None:
        result = compare(first, second, rules)
        assert result.match, result.differences
    sides: tuple[Literal["old", "new"], ...] = ("old", "new")
    for side in sides:
        repeat = compare_repeat(first, second, rules, side=side)
        assert repeat.match, (side, repeat.differences)


SIDE_SWAP = {"missing": "extra", "extra": "missing", "changed": "changed", "type": "type"}


@given(JSON, JSON, rule_sets())
@FUZZ
def test_swapping_the_sides_swaps_the_differences(old, new, rules):
    """Without a contract (which translates one side only) and without keyed lists (which number
    elements by the old side): b vs a reports what a vs b does, missing and extra swapped."""
    forward = compare_docs(old, new, rules)
    backward = compare_docs(new, old, rules)
    assert forward.match is backward.match
    if rules.list_keys or rules.contract is not None:
        return
    there = sorted(
        (d.path, SIDE_SWAP[d.kind], repr(d.new), repr(d.old)) for d in forward.differences
    )
    back = sorted((d.path, d.kind, repr(d.old), repr(d.new)) for d in backward.differences)
    assert there == back


@given(st.integers(MAX_DEPTH - 2, MAX_DEPTH + 40), st.booleans())
@settings(max_examples=30, deadline=None)
def test_deep_documents_are_compared_as_a_whole_beyond_the_limit(depth, differ):
    """Nesting past MAX_DEPTH is compared without recursion and reported where it starts."""
    old = b'{"a":' * depth + b"1" + b"}" * depth
    new = b'{"a":' * depth + (b"2" if differ else b"1") + b"}" * depth
    result = compare(observe(old), observe(new), PLAIN)
    check_paths(result)
    assert result.match is (not differ)
    assert result.mode == "json"


# --- redaction in what the diff log writes ------------------------------------------------------

CUSTOMER = "C-PLANTED-4242"
EMAIL = "planted.person@example.org"
PHONE = "07700 913 579"
PHONE_DIGITS = "7700913579"
SECRET_FORMS = (EMAIL, EMAIL.upper(), PHONE, PHONE_DIGITS)
HASHER = CustomerHasher("crm-2026", key="fuzz-key")


@st.composite
def old_contacts(draw: st.DrawFn) -> dict[str, Any]:
    """A contact in the old contract with the planted personal values (in any case or format)."""
    record: dict[str, Any] = {"id": draw(st.integers(1, 10**6)), "customer": CUSTOMER}
    if draw(st.booleans()):
        record["email"] = draw(st.sampled_from([EMAIL, EMAIL.upper(), f"  {EMAIL} "]))
    if draw(st.booleans()):
        record["phone"] = draw(st.sampled_from([PHONE, f"+44 {PHONE[1:]}", PHONE_DIGITS]))
    extra = draw(
        st.dictionaries(
            st.sampled_from(["full_name", "status", "note", "address"]), JSON, max_size=3
        )
    )
    record.update(extra)
    if draw(st.booleans()):
        record["note"] = f"call {CUSTOMER} back"  # a platform echoing the customer key
    return record


@st.composite
def answers(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["record", "collection"]))
    if shape == "record":
        return draw(old_contacts())
    items = draw(st.lists(old_contacts(), max_size=3))
    return {"items": items, "total": len(items)}


@st.composite
def other_side(draw: st.DrawFn, doc: Any) -> Any:
    """The new platform's answer: the same in its own contract, or something else entirely,
    with the personal values moved, changed or put where the other side has none."""
    if draw(st.booleans()):
        return CONTACTS.rules.contract.body_to_new(draw(answers()))  # type: ignore[union-attr]
    new = CONTACTS.rules.contract.body_to_new(doc)  # type: ignore[union-attr]
    records = new.get("data", [new]) if isinstance(new, dict) else []
    for record in records:
        if isinstance(record, dict):
            choice = draw(st.integers(0, 3))
            if choice == 0:
                record["email"] = EMAIL.replace("planted", "PLANTED")
            elif choice == 1:
                record["phone_e164"] = draw(st.sampled_from([PHONE, [PHONE], {"n": PHONE}]))
            elif choice == 2:
                record.pop("email", None)
    return new


@given(st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_diff_record_never_holds_a_redacted_value_or_the_customer_key(data):
    """The contacts route redacts $.email and $.phone: whatever the two answers hold, the record
    written to the diff log (differences, noise, side-by-side bodies) shows them as "***", and
    the customer key only as its hash."""
    old = data.draw(answers())
    new = data.draw(other_side(old))
    old_obs, new_obs = observe(serialise(old)), observe(serialise(new))
    rules = CONTACTS.rules
    comparison = compare(old_obs, new_obs, rules)
    head = {
        "kind": "shadow",
        "route": "contacts",
        "customer": HASHER(CUSTOMER),
        "path": "/api/contacts",
    }
    record = build_record(
        head,
        Answer(old_obs, 1.0),
        Answer(new_obs, 2.0),
        comparison,
        rules,
        customer=CUSTOMER,
        hasher=HASHER,
    )
    text = orjson.dumps(record).decode()
    for secret in SECRET_FORMS:
        assert secret.lower() not in text.lower(), (secret, text[:2000])
    assert "+447700913579" not in text
    assert CUSTOMER not in text
    if not comparison.match:
        assert record["result"] == "mismatch"
        assert record["differences"]


def _mixed(value: Any) -> Any:
    """The same JSON value with some numbers and booleans swapped for ones Python's == takes
    for equal (1 and True, 0 and False, 2 and 2.0): equal to it for Python, not as JSON."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, int) and abs(value) < 2**53:
        return float(value)
    if isinstance(value, dict):
        return {k: _mixed(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [_mixed(v) for v in value]
    return value


@given(JSON, JSON, rule_sets(), st.booleans())
@FUZZ
def test_the_shortcut_for_equal_documents_finds_what_the_walk_finds(old, other, rules, mixed):
    """Two documents that serialise alike skip the walk (_diff_docs): that must never hide a
    difference the walk reports, however alike the two look to Python's ==."""
    new = _mixed(old) if mixed else other
    found: list[Any] = []
    walked: list[Any] = []
    compare_module._diff_docs(old, new, rules, found)
    compare_module._walk(old, new, [], rules.diff_trie, walked, 0)
    assert found == walked
