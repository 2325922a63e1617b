"""compile_rules: what a route's compare block means, and what it refuses at load."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.spec import CompareSpec, ContractSpec
from shadow.compare import compare_docs
from shadow.contract import RuleError, compile_contract
from shadow.jsonpath import parse
from shadow.rules import compile_rules

CONTRACT = compile_contract(
    ContractSpec.model_validate(
        {
            "fields": {"$.full_name": "$.name", "$.phone": "$.phone_e164"},
            "collection": {"old": "$.items", "new": "$.data"},
        }
    )
)
PLACE = ("routes", 3, "compare")


def compile_spec(**spec: Any):
    return compile_rules(CompareSpec.model_validate(spec), CONTRACT, PLACE)


def test_the_routes_yaml_example_compiles():
    """The example compare block from the design compiles against its contract."""
    rules = compile_spec(
        headers=["Content-Type", "content-type", "ETag"],
        ignore=["$.updated_at", "$.etag", "$.comments[*].created_at"],
        normalize={"$.phone": "e164:44", "$.email": ["trim", "lower"], "$.tags": "sort"},
        tolerance={"$.balance": 0.01},
        redact=["$.email", "$.phone"],
        list_keys={"$.comments": "id"},
        max_body="1MB",
        noise_probe_percent=5,
    )
    assert rules.headers == ("content-type", "etag")
    assert rules.max_body == 1_000_000
    assert rules.noise_probe_percent == 5.0
    assert rules.collection == ("items",)
    assert rules.tolerance == {("balance",): 0.01}
    assert rules.list_keys == {("comments",): "id"}


def test_rules_apply_in_place_of_each_record_of_a_list_answer():
    """Record rules cover every record of the collection and the envelope around it."""
    rules = compile_spec(ignore=["$.etag"], tolerance={"$.balance": 0.5})
    old = {"items": [{"etag": 1, "balance": 1.0}], "etag": "a"}
    new = {"items": [{"etag": 2, "balance": 1.2}], "etag": "b"}
    assert compare_docs(old, new, rules).match


def test_ignoring_the_whole_body_compares_status_and_headers_only():
    """ignore: [$] is allowed and means the body is not compared."""
    assert compile_spec(ignore=["$"]).ignore_body


def test_normalizers_run_deepest_first():
    """Children are normalized before the containers that hold them."""
    rules = compile_spec(normalize={"$.t": "sort", "$.t[*]": "lower"})
    assert [path for path, _ in rules.normalize] == [parse("$.t[*]"), parse("$.t")]


@pytest.mark.parametrize(
    ("spec", "place", "message"),
    [
        ({"normalize": {"$.phone": "e164:abc"}}, ("normalize", "$.phone"), "country calling code"),
        (
            {"ignore": ["$.meta"], "normalize": {"$.meta.at": "iso8601"}},
            ("normalize", "$.meta.at"),
            "under the ignored $.meta",
        ),
        (
            {"ignore": ["$.c[*]"], "tolerance": {"$.c[0].x": 1}},
            ("tolerance", "$.c[0].x"),
            "under the ignored",
        ),
        (
            {"ignore": ["$.c"], "list_keys": {"$.c": "id"}},
            ("list_keys", "$.c"),
            "under the ignored",
        ),
        (
            {"normalize": {"$.phone_e164": "digits"}},
            ("normalize", "$.phone_e164"),
            "did you mean $.phone?",
        ),
        ({"ignore": ["$.name"]}, ("ignore", 0), "new platform's name"),
        ({"redact": ["$.x", "$.phone_e164"]}, ("redact", 1), "new platform's name"),
        (
            {"normalize": {"$.a": "lower", "$['a']": "upper"}},
            ("normalize", "$['a']"),
            "normalized twice",
        ),
        ({"list_keys": {"$.c": ""}}, ("list_keys", "$.c"), "names a field"),
    ],
)
def test_rules_that_cannot_mean_anything_are_refused(spec, place, message):
    """A rule that would silently do nothing (or the wrong thing) is a RuleError with its place."""
    with pytest.raises(RuleError) as caught:
        compile_spec(**spec)
    assert caught.value.place == (*PLACE, *place)
    assert message in caught.value.message


def test_an_unvalidated_spec_with_an_unknown_normalizer_is_refused():
    """compile_rules does not rely on pydantic having checked the names."""
    spec = CompareSpec.model_construct(normalize={"$.a": ["shout"]})
    with pytest.raises(RuleError, match="unknown normalizer 'shout'"):
        compile_rules(spec, None, PLACE)


def test_without_a_contract_any_path_is_old_terms():
    """No contract: no new-platform names to confuse."""
    rules = compile_rules(CompareSpec.model_validate({"ignore": ["$.name"]}))
    assert rules.contract is None
    assert rules.collection is None
