"""Normalizers: each spelling on the left becomes the canonical value on the right."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.normalize import compile_normalizers

CASES = [
    # rule, value, expected
    ("lower", "Ann@Example.COM", "ann@example.com"),
    ("lower", 42, 42),
    ("upper", "open", "OPEN"),
    ("upper", None, None),
    ("trim", "  a b  ", "a b"),
    ("trim", ["  a "], ["  a "]),
    ("collapse_space", "  1  Main\t\nStreet ", "1 Main Street"),
    ("digits", "(020) 7946-0018", "02079460018"),
    ("digits", 2079460018, 2079460018),
    ("e164:44", "(020) 7946 0018", "+442079460018"),
    ("e164:44", "+44 20 7946 0018", "+442079460018"),
    ("e164:44", "+44 (0)20 7946 0018", "+442079460018"),
    ("e164:44", "0044 20 7946 0018", "+442079460018"),
    ("e164:44", "020 7946 0018 ext. 12", "+442079460018"),
    ("e164:44", "tel:+44-20-7946-0018", "+442079460018"),
    ("e164:+49", "030 123456", "+4930123456"),
    ("e164:1", "(212) 555-0100", "+12125550100"),
    ("e164:1", "1 212 555 0100", "+12125550100"),
    ("e164:39", "06 1234 5678", "+390612345678"),
    ("e164", "+44 20 7946 0018", "+442079460018"),
    ("e164", "020 7946 0018", "02079460018"),
    ("e164", "n/a", "n/a"),
    ("e164", "", ""),
    ("e164", 442079460018, 442079460018),
    ("iso8601", "2026-11-23T10:00:00+01:00", "2026-11-23T09:00:00Z"),
    ("iso8601", "2026-11-23T09:00:00Z", "2026-11-23T09:00:00Z"),
    ("iso8601", "2026-11-23T09:00:00.000Z", "2026-11-23T09:00:00Z"),
    ("iso8601", "2026-11-23T10:00:00.5+01:00", "2026-11-23T09:00:00.500000Z"),
    ("iso8601", "2026-11-23 09:00:00", "2026-11-23T09:00:00Z"),
    ("iso8601", "20261123T100000+0100", "2026-11-23T09:00:00Z"),
    ("iso8601", "2026-11-23", "2026-11-23"),
    ("iso8601", "20261123", "2026-11-23"),
    ("iso8601", "2026-11-23T00:30:00+01:00", "2026-11-22T23:30:00Z"),
    ("iso8601", "yesterday", "yesterday"),
    ("iso8601", "2026-13-01T00:00:00Z", "2026-13-01T00:00:00Z"),
    ("iso8601", "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+01:00"),
    ("iso8601", 1700000000, 1700000000),
    ("sort", ["b", "a", "c"], ["a", "b", "c"]),
    ("sort", [10, 9, 1.5], [1.5, 9, 10]),
    ("sort", [{"b": 1}, "x", 2, None], ["x", 2, None, {"b": 1}]),  # by JSON text
    ("sort", [True, 1, False], [1, False, True]),
    ("sort", "not a list", "not a list"),
    ("number", "12.50", 12.5),
    ("number", "7", 7),
    ("number", " -3 ", -3),
    ("number", "1e3", 1000.0),
    ("number", "1e999", "1e999"),
    ("number", "1_000", "1_000"),
    ("number", "NaN", "NaN"),
    ("number", "12 apples", "12 apples"),
    ("number", 12, 12),
    ("number", True, True),
    (["trim", "lower"], "  Ann@Example.com ", "ann@example.com"),
    (["digits", "number"], "tel 0123", 123),
]


@pytest.mark.parametrize(("rule", "value", "expected"), CASES)
def test_normalizer(rule, value, expected):
    """One spelling in, the canonical value out; a value of the wrong kind passes unchanged."""
    result = compile_normalizers(rule)(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("rule", ["shout", "e164:abc", "e164:0", "lower:1", []])
def test_bad_rules_are_refused_at_compile_time(rule):
    """A typo in routes.yaml is an error at load, not a silently inert rule."""
    with pytest.raises(ValueError):
        compile_normalizers(rule)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
NAMES = ["lower", "upper", "trim", "collapse_space", "digits", "e164", "e164:44", "iso8601"]
NAMES += ["sort", "number"]


@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3), json_values)
@settings(max_examples=300)
def test_normalizer_chains_never_raise(names, value):
    """Any JSON value through any chain of normalizers: no exception."""
    compile_normalizers(names)(value)


PHONEISH = st.text(alphabet="0123456789 +()-.x", max_size=20)


@given(st.sampled_from(NAMES), json_values | PHONEISH)
@settings(max_examples=300)
def test_each_normalizer_is_idempotent(name, value):
    """Normalizing a normalized value changes nothing, so both sides meet at one spelling."""
    normalize = compile_normalizers(name)
    once = normalize(value)
    assert normalize(once) == once
