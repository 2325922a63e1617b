"""routes.yaml edits made through cutover change only their own lines."""

from __future__ import annotations

import difflib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import parse_config
from proxy.config.table import resolve_weight
from proxy.control.edit import EditError, add_rollback, remove_rollback, set_weight
from tests.configs import REPO

DEMO = (REPO / "routes.yaml").read_text()


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), n=0, lineterm="")
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        (
            {"channel": "chat", "cohort": "business"},
            "    weights: { default: 0, chat: { default: 10, pilot: 100, business: 55 } }",
        ),
        ({"channel": "chat"}, "    weights: { default: 0, chat: { default: 55, pilot: 100 } }"),
        (
            {"cohort": "pilot"},
            "    weights: { default: 0, chat: { default: 10, pilot: 100 }, pilot: 55 }",
        ),
        ({}, "    weights: { default: 55, chat: { default: 10, pilot: 100 } }"),
    ],
)
def test_set_weight_changes_one_line(kwargs, line):
    after = set_weight(DEMO, "contacts", 55, **kwargs)
    assert changed_lines(DEMO, after) == [
        "-    weights: { default: 0, chat: { default: 10, pilot: 100 } }",
        "+" + line,
    ]


def test_a_channel_number_becomes_its_default_when_a_cohort_is_set():
    once = set_weight(DEMO, "tickets", 20, channel="email")
    twice = set_weight(once, "tickets", 80, channel="email", cohort="pilot")
    table = parse_config(twice, env={})
    route = table.route("tickets")
    assert route is not None
    assert route.weight_bp("email", "pilot") == 8000
    assert route.weight_bp("email", "everyone") == 2000


def test_comments_and_layout_elsewhere_survive():
    after = add_rollback(
        set_weight(DEMO, "contacts", 30, channel="web"),
        route="contacts",
        reason="latency",
        by="ops",
        at="2026-11-23T03:00:00Z",
    )
    for comment in [line for line in DEMO.splitlines() if "#" in line and "rollback" not in line]:
        assert comment in after
    assert len(changed_lines(DEMO, after)) == 5  # weights -/+, rollback line -/+, one scope +


def test_rollback_scopes_added_and_lifted():
    text = add_rollback(
        DEMO, route="contacts", channel="chat", reason='a "quoted": #reason', by="ops", at="now"
    )
    text = add_rollback(text, cohort="pilot", reason="pilot issues", by="qa", at="now")
    table = parse_config(text, env={})
    assert table.rollback == {("contacts", "chat", None), (None, None, "pilot")}
    assert table.spec.rollback[0].reason == 'a "quoted": #reason'
    text, lifted = remove_rollback(text, route="contacts", channel="chat")
    assert lifted == 1
    assert parse_config(text, env={}).rollback == {(None, None, "pilot")}
    text, lifted = remove_rollback(text, everything=True)
    assert lifted == 1
    assert text == DEMO


def test_the_same_scope_twice_is_one_scope():
    text = add_rollback(DEMO, route="contacts", reason="one", by="ops", at="t1")
    text = add_rollback(text, route="contacts", reason="two", by="ops", at="t2")
    [scope] = parse_config(text, env={}).spec.rollback
    assert scope.reason == "two"


def test_route_level_rollback_is_lifted_by_resume():
    text = DEMO.replace("    path: /api/tickets\n", "    path: /api/tickets\n    rollback: true\n")
    assert parse_config(text, env={}).rollback == {("tickets", None, None)}
    after, lifted = remove_rollback(text, route="tickets")
    assert lifted == 1
    assert parse_config(after, env={}).rollback == frozenset()


def test_global_rollback_true_becomes_a_list():
    text = DEMO.replace("rollback: false ", "rollback: true  ")
    after = add_rollback(text, route="contacts", reason="x", by="ops", at="t")
    assert parse_config(after, env={}).rollback == {(None, None, None), ("contacts", None, None)}


def test_unknown_route_is_an_edit_error():
    with pytest.raises(EditError, match="no route named 'nope'"):
        set_weight(DEMO, "nope", 5)


CELLS = st.tuples(
    st.sampled_from(["contacts", "tickets", "attachments"]),
    st.one_of(st.none(), st.sampled_from(["phone", "email", "chat", "whatsapp", "web"])),
    st.one_of(st.none(), st.sampled_from(["pilot", "business", "everyone"])),
    st.integers(0, 10_000).map(lambda n: n / 100),
)


@given(st.lists(CELLS, min_size=1, max_size=8))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_any_sequence_of_weight_edits_stays_valid_and_says_what_was_set(edits):
    text = DEMO
    for route, channel, cohort, percent in edits:
        before = text
        text = set_weight(text, route, percent, channel=channel, cohort=cohort)
        assert len(changed_lines(before, text)) <= 2
        table = parse_config(text, env={})
        spec = table.route(route)
        assert spec is not None
        for ch in [channel] if channel else ["phone"]:
            for co in [cohort] if cohort else ["everyone"]:
                expected = resolve_weight(spec.spec.weights, ch, co)
                assert spec.weight_bp(ch, co) == round(expected * 100)
        if channel and cohort:
            assert spec.weight_bp(channel, cohort) == round(percent * 100)
