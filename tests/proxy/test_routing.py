"""Sticky bucketing and decisions: shares, monotonicity, stickiness across routes, rollback."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.table import RouteTable
from proxy.identity import Identity
from proxy.routing import BUCKETS, bucket_of, decide, is_rolled_back
from tests.configs import base_doc, load

CUSTOMERS = [f"C-{i}" for i in range(100_000)]


def table_with(weight: float, **route_extra: object) -> RouteTable:
    doc = base_doc()
    doc["routes"][0]["weights"] = {"default": weight}
    doc["routes"][0].update(route_extra)
    doc["routes"][1]["weights"] = {"default": weight}
    return load(doc)


def who(customer: str | None, channel: str = "web", cohort: str = "everyone") -> Identity:
    return Identity(channel=channel, customer=customer, cohort=cohort)


@pytest.mark.parametrize("weight", [0, 1, 5, 10, 25, 33.33, 50, 75, 99, 100])
def test_share_on_new_is_within_half_a_point_of_the_weight(weight):
    """At weight W, the share of 100 000 synthetic customers on new is W +- 0.5 points."""
    on_new = sum(bucket_of("crm-2026", c) < weight * 100 for c in CUSTOMERS)
    assert abs(on_new / len(CUSTOMERS) * 100 - weight) <= 0.5


def test_decide_matches_the_share_through_the_route():
    table = table_with(30)
    route = table.route("contacts")
    assert route is not None
    on_new = sum(
        decide(table, route, who(c), "GET", 0).primary == "new" for c in CUSTOMERS[:20_000]
    )
    assert abs(on_new / 20_000 * 100 - 30) <= 1.0


@given(
    st.floats(0, 100),
    st.floats(0, 100),
    st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=50),
)
@settings(max_examples=200)
def test_raising_a_weight_never_moves_a_customer_back_to_old(w1, w2, customers):
    low, high = sorted((w1, w2))
    t_low, t_high = table_with(round(low, 2)), table_with(round(high, 2))
    r_low, r_high = t_low.route("contacts"), t_high.route("contacts")
    assert r_low is not None and r_high is not None
    for customer in customers:
        if decide(t_low, r_low, who(customer.strip() or "x"), "GET", 0).primary == "new":
            assert decide(t_high, r_high, who(customer.strip() or "x"), "GET", 0).primary == "new"


def test_a_customer_is_on_the_same_side_for_every_route_with_equal_weights():
    table = table_with(37)
    contacts, tickets = table.route("contacts"), table.route("tickets")
    assert contacts is not None and tickets is not None
    for customer in CUSTOMERS[:5000]:
        a = decide(table, contacts, who(customer), "GET", 0).primary
        b = decide(table, tickets, who(customer), "POST", 0).primary
        assert a == b


def test_buckets_are_stable_and_in_range():
    """The same key always lands in the same bucket (no per-process hash seed)."""
    assert bucket_of("crm-2026", "C-1001") == bucket_of("crm-2026", "C-1001")
    assert all(0 <= bucket_of("s", c) < BUCKETS for c in CUSTOMERS[:1000])


def test_the_salt_reshuffles_customers():
    """Another migration buckets customers independently (about half agree at 50 %)."""
    same = sum((bucket_of("a", c) < 5000) == (bucket_of("b", c) < 5000) for c in CUSTOMERS[:20_000])
    assert 0.45 < same / 20_000 < 0.55


def test_no_customer_key_goes_to_old_unless_the_route_says_otherwise():
    table = table_with(100)
    route = table.route("contacts")
    assert route is not None
    assert decide(table, route, who(None), "GET", 0).primary == "old"
    assert decide(table, route, who(None), "GET", 0).reason == "no-customer"
    table = table_with(0, without_customer="new")
    route = table.route("contacts")
    assert route is not None
    assert decide(table, route, who(None), "GET", 0).primary == "new"


@pytest.mark.parametrize(
    ("rollback", "cell", "rolled_back"),
    [
        (True, ("contacts", "chat", "pilot"), True),
        ([{"route": "contacts"}], ("contacts", "chat", "pilot"), True),
        ([{"route": "contacts"}], ("tickets", "chat", "pilot"), False),
        ([{"channel": "chat"}], ("tickets", "chat", "everyone"), True),
        ([{"channel": "chat"}], ("tickets", "web", "everyone"), False),
        ([{"cohort": "pilot"}], ("contacts", "web", "pilot"), True),
        (
            [{"route": "contacts", "channel": "chat", "cohort": "pilot"}],
            ("contacts", "chat", "pilot"),
            True,
        ),
        (
            [{"route": "contacts", "channel": "chat", "cohort": "pilot"}],
            ("contacts", "chat", "everyone"),
            False,
        ),
        (False, ("contacts", "chat", "pilot"), False),
    ],
)
def test_rollback_scopes(rollback, cell, rolled_back):
    doc = dict(base_doc(), rollback=rollback)
    for route in doc["routes"]:
        route["weights"] = {"default": 100}
    table = load(doc)
    route_name, channel, cohort = cell
    route = table.route(route_name)
    assert route is not None
    decision = decide(table, route, who("C-1", channel, cohort), "GET", 0)
    assert (decision.primary == "old" and decision.reason == "rollback") == rolled_back
    assert is_rolled_back(table.rollback, *cell) == rolled_back


def test_a_route_level_rollback_and_runtime_flags():
    doc = base_doc()
    for route in doc["routes"]:
        route["weights"] = {"default": 100}
    doc["routes"][0]["rollback"] = True
    table = load(doc)
    contacts, tickets = table.route("contacts"), table.route("tickets")
    assert contacts is not None and tickets is not None
    assert decide(table, contacts, who("C-1"), "GET", 0).primary == "old"
    assert decide(table, tickets, who("C-1"), "GET", 0).primary == "new"
    flags = frozenset({("tickets", None, None)})
    assert decide(table, tickets, who("C-1"), "GET", 0, extra_rollback=flags).primary == "old"


def test_shadow_only_for_reads_and_by_sample():
    table = table_with(0, shadow_percent=25, dual_write=True)
    route = table.route("contacts")
    assert route is not None
    assert decide(table, route, who("C-1"), "GET", 2499).shadow
    assert not decide(table, route, who("C-1"), "GET", 2500).shadow
    assert not decide(table, route, who("C-1"), "POST", 0).shadow
    assert decide(table, route, who("C-1"), "POST", 0).dual_write
    assert not decide(table, route, who("C-1"), "GET", 0).dual_write


def test_weights_by_channel_and_cohort_through_decide():
    table = load(base_doc())  # chat: default 10, pilot 100
    route = table.route("contacts")
    assert route is not None
    assert decide(table, route, who("C-1001", "chat", "pilot"), "GET", 0).primary == "new"
    assert decide(table, route, who("C-1001", "email", "pilot"), "GET", 0).primary == "old"
