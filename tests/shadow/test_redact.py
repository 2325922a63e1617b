"""Redaction: no diff record, noise entry or side-by-side document holds a redacted value."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.spec import CompareSpec, ContractSpec
from shadow.compare import Comparison, Difference, compare_docs
from shadow.contract import compile_contract
from shadow.redact import MASK, is_redacted, redact_comparison, redact_difference, redact_doc
from shadow.rules import CompareRules, compile_rules

CONTRACT = compile_contract(
    ContractSpec.model_validate({"collection": {"old": "$.items", "new": "$.data"}})
)
REDACT = ["$.email", "$.phone", "$.address.city", "$.comments[*].author_email", "$.secret"]


def rules(redact: list[str] = REDACT) -> CompareRules:
    return compile_rules(CompareSpec.model_validate({"redact": redact}), CONTRACT)


RULES = rules()


@pytest.mark.parametrize(
    ("path", "masked"),
    [
        ("$.email", True),  # at
        ("$.address.city", True),
        ("$.secret.deeper.still", True),  # under
        ("$.address", True),  # contains $.address.city
        ("$.address.street", False),  # a sibling
        ("$.comments[4].author_email", True),  # wildcard
        ("$.comments[4]", True),  # contains
        ("$.comments", True),
        ("$.comments[4].body", False),
        ("$.items[2].email", True),  # a record of the collection
        ("$.items[2]", True),
        ("$.items", True),
        ("$.items[2].name", False),
        ("$.address[0]", True),  # a list where $.address.city expects an object
        ("$.comments.k.author_email", True),  # [*] also walks an object's values
        ("$.items.k", False),  # not a list of records: no record rule applies
        ("$[3].phone", True),  # a record of a top-level array
        ("$[3]", True),
        ("$.name", False),
        ("$", True),  # the whole body contains everything
        ("@status", False),
        ("@headers.content-type", False),
        ("$.bad[", True),  # cannot read it: mask
    ],
)
def test_which_difference_paths_are_masked(path, masked):
    """At, under or containing a redacted path (in any record): masked; anything else: clear."""
    assert is_redacted(path, RULES) is masked
    result = redact_difference(Difference(path, "changed", "before", "after"), RULES)
    assert (result.old, result.new) == ((MASK, MASK) if masked else ("before", "after"))


def test_redacting_one_field_masks_a_difference_of_its_parent():
    """redact $.address masks a difference at $.address.city, and the other way round."""
    parent = rules(["$.address"])
    child = rules(["$.address.city"])
    city = Difference("$.address.city", "changed", "London", "Paris")
    address = Difference("$.address", "type", {"city": "London"}, "London")
    for compiled in (parent, child):
        assert redact_difference(city, compiled).old == MASK
        assert redact_difference(address, compiled).new == MASK


def test_absent_and_null_values_stay_visible():
    """None says 'absent' or null: nothing to hide, and QA needs to see which side lacks it."""
    result = redact_difference(Difference("$.email", "missing", "a@x", None), RULES)
    assert (result.old, result.new) == (MASK, None)


def test_whole_body_descriptions_hold_no_content_and_stay():
    """Size and hash of a body are kept; a root value itself is masked."""
    described = Difference("$", "changed", "<5 bytes sha256:2cf24dba…>", "<7 bytes sha256:aa…>")
    assert redact_difference(described, RULES) == described
    assert redact_difference(Difference("$", "type", "a@x", 1), RULES).old == MASK


def test_redact_doc_masks_every_match_in_a_copy():
    """Wildcards, nesting, list answers; the input is untouched."""
    doc = {
        "items": [
            {
                "email": "a@x",
                "name": "Ann",
                "address": {"city": "London", "street": "Main"},
                "comments": [{"author_email": "b@x", "body": "hi"}, {"body": "yo"}],
                "phone": None,
            },
            {"address": "1 Main St, London"},
        ],
        "email": "envelope@x",
    }
    before = copy.deepcopy(doc)
    assert redact_doc(doc, RULES) == {
        "items": [
            {
                "email": MASK,
                "name": "Ann",
                "address": {"city": MASK, "street": "Main"},
                "comments": [{"author_email": MASK, "body": "hi"}, {"body": "yo"}],
                "phone": None,
            },
            {"address": MASK},  # a scalar where an object with a redacted field belongs
        ],
        "email": MASK,
    }
    assert doc == before
    assert redact_doc([{"email": "a"}], RULES) == [{"email": MASK}]
    assert redact_doc({"x": [1]}, rules([])) == {"x": [1]}


def test_redact_comparison_covers_differences_noise_and_documents():
    """The one call a diff log writer needs."""
    comparison = Comparison(
        False,
        (Difference("$.email", "changed", "a", "b"),),
        (Difference("$.phone", "changed", "1", "2"),),
        "json",
        {"email": "a", "phone": "1"},
        {"email": "b", "phone": "2"},
    )
    safe = redact_comparison(comparison, RULES)
    assert b'"a"' not in orjson.dumps(
        [safe.differences, safe.noise, safe.old_doc, safe.new_doc],
        default=lambda d: [d.path, d.kind, d.old, d.new],
    )


# --- the property: no secret ever survives ------------------------------------------------------

PLAIN = st.text(alphabet="abcdefgh ", max_size=6)
OTHER = st.none() | st.booleans() | st.integers(-1000, 1000) | PLAIN
SECRETS = st.integers(0, 10**6).map(lambda n: f"SECRET{n}")
# a secret may hide in a container too: a structured phone number, a list of e-mails
SECRET_VALUES = (
    SECRETS
    | st.lists(SECRETS, min_size=1, max_size=2)
    | st.builds(lambda s: {"number": s}, SECRETS)
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    record: dict[str, Any] = {"id": draw(st.integers(0, 5)), "name": draw(PLAIN)}
    if draw(st.booleans()):
        record["email"] = draw(SECRET_VALUES)
    if draw(st.booleans()):
        record["phone"] = draw(SECRET_VALUES | st.none())
    if draw(st.booleans()):
        record["address"] = draw(
            st.fixed_dictionaries({"city": SECRET_VALUES}, optional={"street": PLAIN})
            | SECRETS  # a platform flattening the address into one string
        )
    if draw(st.booleans()):
        record["comments"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"author_email": SECRET_VALUES}, optional={"body": PLAIN, "id": OTHER}
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        record["secret"] = draw(
            st.recursive(SECRETS, lambda c: st.lists(c, max_size=2), max_leaves=4)
        )
    return record


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["record", "array", "collection"]))
    if shape == "record":
        return draw(records())
    items = draw(st.lists(records(), max_size=3))
    if shape == "array":
        return items
    return {"items": items, "total": len(items), "email": draw(SECRETS)}


MISSHAPEN = SECRETS | st.lists(SECRETS, min_size=1, max_size=2)
REPLACEMENTS = {
    "email": SECRET_VALUES | OTHER,
    "phone": SECRET_VALUES | OTHER,
    "secret": SECRET_VALUES | OTHER,
    "address": MISSHAPEN | OTHER,
    "comments": MISSHAPEN | st.lists(MISSHAPEN, max_size=2) | OTHER,
}


@st.composite
def variants(draw: st.DrawFn, body: Any) -> Any:
    """Another answer: some records or fields gone, changed, or of another type."""
    if draw(st.booleans()):
        return draw(bodies())
    changed = copy.deepcopy(body)
    targets = changed if isinstance(changed, list) else changed.get("items", [changed])
    for record in targets if isinstance(targets, list) else []:
        for key in list(record):
            choice = draw(st.integers(0, 4))
            if choice == 0:
                del record[key]
            elif choice == 1:
                # a secret only where the rules claim one: a redacted field, or something
                # shaped otherwise standing where an object holding a redacted field was
                record[key] = draw(REPLACEMENTS.get(key, OTHER))
    if isinstance(targets, list) and targets and draw(st.booleans()):
        targets.reverse()
    return changed


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_no_redacted_value_ever_reaches_the_log_in_clear(data):
    """Whatever the two answers look like, the redacted comparison holds no secret."""
    old = data.draw(bodies())
    new = data.draw(variants(old))
    for compiled in (
        RULES,
        compile_rules(
            CompareSpec.model_validate({"redact": REDACT, "list_keys": {"$.comments": "id"}}),
            CONTRACT,
        ),
    ):
        safe = redact_comparison(compare_docs(old, new, compiled), compiled)
        logged = orjson.dumps(
            [safe.differences, safe.noise, safe.old_doc, safe.new_doc],
            default=lambda d: [d.path, d.kind, d.old, d.new],
        )
        assert b"SECRET" not in logged
    assert b"SECRET" not in orjson.dumps(redact_doc(old, RULES))
