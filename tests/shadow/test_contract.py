"""Contract translation: old contract <-> new platform, both ways, rules compiled once."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.spec import ContractSpec
from shadow.contract import Contract, RuleError, compile_contract

EXAMPLE = {
    "new_path": "/v2/contacts",
    "query": {
        "status": {"name": "state", "values": {"open": "OPEN", "closed": "RESOLVED"}},
        "customer": "customer",
    },
    "collection": {"old": "$.items", "new": "$.data"},
    "envelope": {"$.total": "$.meta.total"},
    "fields": {
        "$.full_name": "$.name",
        "$.phone": "$.phone_e164",
        "$.address": "$.location",
        "$.address.postcode": "$.location.postal_code",
        "$.channel": "$.preferred_channel",
        "$.comments[*].body": "$.comments[*].text",
    },
    "values": {"$.status": {"open": "OPEN", "closed": "RESOLVED"}},
    "defaults": {"$.segment": "consumer"},
    "new_defaults": {"$.origin": "cutover"},
}


def contract(**spec: Any) -> Contract:
    return compile_contract(ContractSpec.model_validate(spec), ("routes", 0, "contract"))


FULL = contract(**EXAMPLE)

OLD_CONTACT = {
    "id": 42,
    "full_name": "Ann Smith",
    "phone": "020 7946 0018",
    "status": "open",
    "segment": "business",
    "address": {"street": "1 Main St", "city": "London", "postcode": "N1 9GU"},
    "channel": "chat",
    "comments": [{"id": 1, "body": "hello", "created_at": "2026-01-01T10:00:00+01:00"}],
    "balance": 12.5,
}
NEW_CONTACT = {
    "id": 42,
    "name": "Ann Smith",
    "phone_e164": "020 7946 0018",
    "status": "OPEN",
    "segment": "business",
    "location": {"street": "1 Main St", "city": "London", "postal_code": "N1 9GU"},
    "preferred_channel": "chat",
    "comments": [{"id": 1, "text": "hello", "created_at": "2026-01-01T10:00:00+01:00"}],
    "balance": 12.5,
    "origin": "cutover",
}


def test_a_record_translates_to_the_new_schema_and_back():
    """The routes.yaml example: renames, nesting, value maps, wildcards and new_defaults."""
    assert FULL.body_to_new(OLD_CONTACT) == NEW_CONTACT
    assert FULL.body_to_old(NEW_CONTACT) == OLD_CONTACT


def test_a_list_answer_moves_its_records_and_envelope():
    """collection.old -> collection.new, each record translated, envelope rules on the rest."""
    old = {"items": [OLD_CONTACT, OLD_CONTACT], "total": 2, "page": 1}
    new = {"data": [NEW_CONTACT, NEW_CONTACT], "meta": {"total": 2}, "page": 1}
    assert FULL.body_to_new(old) == new
    assert FULL.body_to_old(new) == old


def test_a_top_level_array_translates_each_record():
    """A bare JSON array: every element is a record; non-objects pass through."""
    assert FULL.body_to_new([OLD_CONTACT, 7, None]) == [NEW_CONTACT, 7, None]


def test_translating_copies_unless_told_the_document_is_owned():
    """The caller's input stays untouched; copy=False edits in place for the proxy's own docs."""
    doc = copy.deepcopy(OLD_CONTACT)
    FULL.body_to_new(doc)
    assert doc == OLD_CONTACT
    result = FULL.body_to_new(doc, copy=False)
    assert result is doc
    assert doc == NEW_CONTACT


@pytest.mark.parametrize(
    ("spec", "old", "new"),
    [
        # unknown values pass through; the map is keyed by the OLD path even after a rename
        (
            {"fields": {"$.status": "$.state"}, "values": {"$.status": {"open": "OPEN"}}},
            {"status": "pending"},
            {"state": "pending"},
        ),
        (
            {"fields": {"$.status": "$.state"}, "values": {"$.status": {"open": "OPEN"}}},
            {"status": "open"},
            {"state": "OPEN"},
        ),
        # a swap needs no ordering in the rules
        ({"fields": {"$.a": "$.b", "$.b": "$.a"}}, {"a": 1, "b": 2}, {"a": 2, "b": 1}),
        # a list moved with its elements' renames written in final terms
        (
            {"fields": {"$.comments": "$.notes", "$.comments[*].body": "$.notes[*].text"}},
            {"comments": [{"body": "x", "id": 1}, {"id": 2}]},
            {"notes": [{"text": "x", "id": 1}, {"id": 2}]},
        ),
        # splitting a field out of an object: the emptied object goes, and comes back
        (
            {"fields": {"$.address.postcode": "$.postal_code"}},
            {"address": {"postcode": "N1"}},
            {"postal_code": "N1"},
        ),
        # flattening and nesting
        (
            {"fields": {"$.first": "$.name.given", "$.last": "$.name.family"}},
            {"first": "Ann", "last": "Smith", "x": 1},
            {"name": {"given": "Ann", "family": "Smith"}, "x": 1},
        ),
        # wildcards over object values
        (
            {"fields": {"$.labels[*].text": "$.labels[*].value"}},
            {"labels": {"a": {"text": "1"}, "b": {"text": "2"}}},
            {"labels": {"a": {"value": "1"}, "b": {"value": "2"}}},
        ),
        # true is not 1 in a value map
        (
            {"values": {"$.flag": {"true": "yes"}}},
            {"flag": True},
            {"flag": True},
        ),
        # a null in an object is a value, and unrelated fields are never touched
        ({"fields": {"$.a": "$.b"}}, {"a": None, "c": [1]}, {"b": None, "c": [1]}),
    ],
)
def test_rules_translate_both_ways(spec, old, new):
    """Each case: old-contract record <-> new-platform record."""
    rules = contract(**spec)
    assert rules.body_to_new(old) == new
    assert rules.body_to_old(new) == old


def test_defaults_fill_absent_old_fields_and_new_defaults_fill_absent_new_fields():
    """defaults apply going to old, new_defaults going to new; present values are kept."""
    rules = contract(
        defaults={"$.segment": "consumer", "$.comments[*].visibility": "public"},
        new_defaults={"$.origin": "cutover"},
    )
    assert rules.body_to_old({"comments": [{}, {"visibility": "internal"}]}) == {
        "segment": "consumer",
        "comments": [{"visibility": "public"}, {"visibility": "internal"}],
    }
    assert rules.body_to_new({}) == {"origin": "cutover"}
    assert rules.body_to_new({"origin": "web"}) == {"origin": "web"}
    # a new-platform-only field still at its default says nothing in the old contract ...
    assert rules.body_to_old({"origin": "cutover", "segment": "business"}) == {
        "segment": "business"
    }
    # ... but a value the new platform chose itself stays visible
    assert rules.body_to_old({"origin": "web", "segment": "x"}) == {"origin": "web", "segment": "x"}


def test_default_values_are_not_shared_between_documents():
    """A mutable default is copied into each record."""
    rules = contract(defaults={"$.tags": []})
    first = rules.body_to_old({})
    first["tags"].append("x")
    assert rules.body_to_old({}) == {"tags": []}


def test_query_parameters_are_renamed_and_mapped():
    """Named parameters get their new name and value; others pass through in order."""
    got = FULL.query_to_new([("status", "closed"), ("q", "x"), ("status", "weird")])
    assert got == [("state", "RESOLVED"), ("q", "x"), ("state", "weird")]


def test_paths_translate_for_other_components():
    """path_to_new/path_to_old expose the same path function the records use."""
    assert FULL.path_to_new(("address", "postcode")) == ("location", "postal_code")
    assert FULL.path_to_new(("address", "city")) == ("location", "city")
    assert FULL.path_to_old(("phone_e164",)) == ("phone",)
    assert FULL.path_to_new(("id",)) == ("id",)


def test_a_contract_that_only_moves_the_path_leaves_bodies_alone():
    """translates_bodies lets compare skip translation (and keep its byte fast path)."""
    assert not contract(new_path="/v2/x").translates_bodies
    assert FULL.translates_bodies


def upper_names(direction: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A hook used by the tests: what rules can't say (here: the case of one field).

    It runs after the rules, so it sees new names going to new and old names going to old.
    """
    if direction == "to_new" and "name" in doc:
        doc["name"] = doc["name"].upper()
    if direction == "to_old" and "full_name" in doc:
        doc["full_name"] = doc["full_name"].title()
    return doc


def in_place_hook(direction: str, doc: dict[str, Any]) -> None:
    doc["seen"] = direction


NOT_CALLABLE = 42


def test_the_hook_runs_last_on_each_record():
    """The hook sees the rule-translated record; returning None means 'edited in place'."""
    rules = contract(fields={"$.full_name": "$.name"}, hook=f"{__name__}:upper_names")
    assert rules.body_to_new([{"full_name": "ann"}]) == [{"name": "ANN"}]
    assert rules.body_to_old({"name": "ANN"}) == {"full_name": "Ann"}
    assert contract(hook=f"{__name__}:in_place_hook").body_to_old({}) == {"seen": "to_old"}


@pytest.mark.parametrize(
    ("spec", "place", "message"),
    [
        ({"fields": {"$.a[*].b": "$.c"}}, "fields", "numbers of [*]"),
        ({"fields": {"$.a[*].b": "$.c[*].b"}}, "fields", "don't line up"),
        ({"fields": {"$.a": "$.x", "$.b": "$.x"}}, "fields", "two rules write"),
        ({"fields": {"$.a": "$.x", "$['a']": "$.y"}}, "fields", "two rules read"),
        ({"fields": {"$": "$.x"}}, "fields", "end in a field name"),
        ({"fields": {"$.a[0]": "$.x"}}, "fields", "end in a field name"),
        ({"hook": "no_such_module_xyz:fn"}, "hook", "cannot load hook"),
        ({"hook": f"{__name__}:missing"}, "hook", "cannot load hook"),
        ({"hook": f"{__name__}:NOT_CALLABLE"}, "hook", "not callable"),
        ({"envelope": {"$.total": "$.count"}}, "envelope", "need a collection"),
        (
            {"collection": {"old": "$.items[*]", "new": "$.data"}},
            "collection",
            "without [*]",
        ),
        (
            {"collection": {"old": "$.items", "new": "$.data"}, "envelope": {"$.items": "$.x"}},
            "envelope",
            "overlaps",
        ),
        (
            {"query": {"a": "x", "b": "x"}},
            "query",
            "two query rules",
        ),
        ({"values": {"$": {"a": "b"}}}, "values", "not the whole record"),
        ({"defaults": {"$.a[*]": 1}}, "defaults", "end in a field name"),
    ],
)
def test_rules_that_cannot_be_honoured_are_refused_with_their_place(spec, place, message):
    """RuleError names the place in routes.yaml and says what is wrong."""
    with pytest.raises(RuleError) as caught:
        contract(**spec)
    assert caught.value.place[:4] == ("routes", 0, "contract", place)
    assert message in caught.value.message
    assert str(caught.value).startswith("routes[0].contract.")


# --- properties --------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
# names the example contract uses on either side (an unmapped field must not collide with them)
RESERVED = {
    "full_name", "name", "phone", "phone_e164", "address", "location", "channel",
    "preferred_channel", "comments", "status", "segment", "origin", "items", "data", "meta",
    "total",
}  # fmt: skip
extra_fields = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
        lambda k: k not in RESERVED
    ),
    json_values,
    max_size=4,
)


@st.composite
def old_contacts(draw: st.DrawFn) -> dict[str, Any]:
    """A record in the old contract as the example rules describe it (plus unmapped fields)."""
    doc: dict[str, Any] = draw(extra_fields)
    doc["segment"] = draw(st.sampled_from(["consumer", "business"]))
    optional = {
        "full_name": st.text(max_size=10),
        "phone": st.text(max_size=10) | st.none(),
        "status": st.sampled_from(["open", "closed", "pending"]),
        "channel": st.sampled_from(["chat", "web"]),
        "address": st.fixed_dictionaries(
            {},
            optional={
                "street": st.text(max_size=8),
                "city": st.text(max_size=8),
                "postcode": json_scalars,
            },
        )
        | st.none()
        | st.text(max_size=4),
        "comments": st.lists(
            st.fixed_dictionaries(
                {"id": st.integers(0, 99)},
                optional={"body": json_values, "created_at": st.text(max_size=5)},
            )
            | st.text(max_size=3),
            max_size=3,
        ),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            doc[name] = draw(strategy)
    return doc


@given(old_contacts())
@settings(max_examples=300, deadline=None)
def test_a_record_round_trips(doc):
    """body_to_old(body_to_new(doc)) == doc for any old-contract record the rules describe."""
    before = copy.deepcopy(doc)
    there = FULL.body_to_new(doc)
    assert doc == before, "translating must not touch the input"
    assert FULL.body_to_old(there) == doc


@given(st.lists(old_contacts(), max_size=4), st.integers(0, 10**6), extra_fields)
@settings(max_examples=100, deadline=None)
def test_list_answers_round_trip(records, total, envelope):
    """Top-level arrays and collection envelopes round-trip too."""
    assert FULL.body_to_old(FULL.body_to_new(records)) == records
    body = {**envelope, "items": records, "total": total}
    assert FULL.body_to_old(FULL.body_to_new(body)) == body


@given(old_contacts())
@settings(max_examples=200, deadline=None)
def test_unmapped_fields_are_untouched(doc):
    """A field no rule names keeps its name and its value."""
    there = FULL.body_to_new(doc)
    for key in doc.keys() - RESERVED:
        assert there[key] == doc[key]


FIELD_NAMES = st.text(alphabet="abcdefgh", min_size=1, max_size=3)


@st.composite
def renamings(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, Any]]:
    """Random top-level and nested renames (swaps and cycles included) and a record they fit."""
    names = draw(st.lists(FIELD_NAMES, min_size=1, max_size=6, unique=True))
    fresh = [f"new_{name}" for name in names]
    moved = draw(st.integers(0, len(names)))
    sources = names[:moved]
    targets = draw(st.permutations(sources + fresh[:moved]))[:moved]
    fields = {f"$.{s}": f"$.{t}" for s, t in zip(sources, targets, strict=True)}
    if names[0] in sources and draw(st.booleans()):
        # a nested rule under a moved object, written in final terms
        fields[f"$.{names[0]}.inner"] = f"$.{fields[f'$.{names[0]}'][2:]}.renamed"
    doc = {name: draw(json_values) for name in names}
    if f"$.{names[0]}.inner" in fields:
        doc[names[0]] = {"inner": draw(json_values), "kept": draw(json_values)}
    return fields, doc


@given(renamings())
@settings(max_examples=200, deadline=None)
def test_random_renamings_round_trip(case):
    """Swaps, cycles and nested renames need no ordering and always invert."""
    fields, doc = case
    rules = contract(fields=fields)
    assert rules.body_to_old(rules.body_to_new(doc)) == doc
