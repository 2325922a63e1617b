"""routes.yaml loading: every error has a place, a valid file compiles to the right table."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import ConfigError, load_config, parse_config
from proxy.config.table import resolve_weight
from tests.configs import REPO, base_doc, dump, load


def errors_of(doc: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(
            dump(doc) if not isinstance(doc, bytes) else doc, source="t.yaml", env=env or {}
        )
    return [f"{i.where}: {i.message}" for i in info.value.issues]


def test_repository_routes_yaml_is_valid():
    """The demo's routes.yaml at the repository root loads."""
    table = load_config(REPO / "routes.yaml")
    assert {r.name for r in table.routes} >= {"contacts", "tickets"}
    assert table.migration == "crm-2026"


def test_weights_compile_to_basis_points_per_cell():
    table = load(base_doc())
    contacts = table.route("contacts")
    assert contacts is not None
    assert contacts.weight_bp("chat", "pilot") == 10_000
    assert contacts.weight_bp("chat", "business") == 1_000
    assert contacts.weight_bp("phone", "pilot") == 0


@pytest.mark.parametrize(
    ("weights", "channel", "cohort", "expected"),
    [
        ({"default": 5}, "chat", "pilot", 5),
        ({"default": 5, "chat": 20}, "chat", "pilot", 20),
        ({"default": 5, "chat": {"default": 20}}, "chat", "everyone", 20),
        ({"default": 5, "chat": {"pilot": 90}}, "chat", "everyone", 5),
        ({"default": 5, "pilot": 50, "chat": {"default": 20}}, "chat", "pilot", 50),
        ({"default": 5, "pilot": 50, "chat": {"pilot": 70}}, "chat", "pilot", 70),
        ({"pilot": 50}, "email", "everyone", 0),
        ({}, "chat", "pilot", 0),
    ],
)
def test_weight_resolution_most_specific_first(weights, channel, cohort, expected):
    """channel.cohort > cohort > channel default > default > 0."""
    assert resolve_weight(weights, channel, cohort) == expected


def _route0(doc: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = doc["routes"][0]
    return route


BAD_CASES: list[tuple[str, Any, str]] = [
    (
        "percent over 100",
        lambda d: _route0(d)["weights"]["chat"].update(pilot=140),
        "routes[0].weights.chat.pilot: 140 is not a percentage 0-100",
    ),
    (
        "negative shadow",
        lambda d: _route0(d).update(shadow_percent=-1),
        "routes[0].shadow_percent: -1 is not a percentage 0-100",
    ),
    ("unknown key", lambda d: _route0(d).update(shadow_pct=5), "routes[0].shadow_pct: unknown key"),
    ("unknown top key", lambda d: d.update(rollbak=True), "rollbak: unknown key"),
    (
        "unknown channel",
        lambda d: _route0(d)["weights"].update(fax=1),
        "routes[0].weights.fax: unknown channel or cohort 'fax'",
    ),
    (
        "unknown cohort",
        lambda d: _route0(d)["weights"]["chat"].update(vip=1),
        "routes[0].weights.chat.vip: unknown cohort 'vip'",
    ),
    (
        "overlap",
        lambda d: d["routes"].append({"name": "c2", "api": "crm", "path": "/api/contacts"}),
        "routes[2].path: GET /api/contacts is already matched by routes[0]",
    ),
    (
        "duplicate name",
        lambda d: d["routes"][1].update(name="contacts"),
        "routes[1].name: route 'contacts' is already routes[0]",
    ),
    (
        "unknown api",
        lambda d: _route0(d).update(api="billing"),
        "routes[0].api: 'billing' is not an API of platform old",
    ),
    (
        "bad duration",
        lambda d: d["platforms"]["old"]["crm"].update(timeout="soon"),
        "platforms.old.crm.timeout: expected a duration",
    ),
    (
        "bad url",
        lambda d: d["platforms"]["old"]["crm"].update(url="localhost:9001"),
        "platforms.old.crm.url: expected an http:// or https:// URL",
    ),
    ("missing platform", lambda d: d["platforms"].pop("new"), "platforms.new: required"),
    (
        "unset variable",
        lambda d: d["platforms"]["old"]["crm"].update(headers={"Authorization": "Bearer ${NOPE}"}),
        "platforms.old.crm.headers.Authorization: environment variable NOPE is not set",
    ),
    (
        "bad method",
        lambda d: _route0(d).update(methods=["GET", "FETCH"]),
        "routes[0].methods[1]: expected",
    ),
    (
        "rollback unknown route",
        lambda d: d.update(rollback=[{"route": "nope"}]),
        "rollback[0].route: unknown route 'nope'",
    ),
    (
        "cohort after catch-all",
        lambda d: d["cohorts"].append({"name": "late", "customers": ["x"]}),
        "cohorts[3]: unreachable",
    ),
    (
        "default channel unknown",
        lambda d: d["identify"]["channel"].update(default="fax"),
        "identify.channel.default: 'fax' is not one of the channels",
    ),
    (
        "path traversal in prefix",
        lambda d: _route0(d).update(path="/api/../admin"),
        "routes[0].path: a path without",
    ),
    (
        "two customer sources in one",
        lambda d: d["identify"].update(customer={"header": "X", "query": "c"}),
        "identify.customer[0]: give exactly one of header, query or path",
    ),
    (
        "bad jsonpath",
        lambda d: _route0(d).update(compare={"ignore": ["updated_at"]}),
        "routes[0].compare.ignore[0]: a path starts with '$'",
    ),
    ("version 2", lambda d: d.update(version=2), "version: expected 1"),
    (
        "trusted proxy not an address",
        lambda d: d.update(server={"trusted_proxies": ["10.0.0.0/8", "lb.internal"]}),
        "server.trusted_proxies[1]: expected an IP address or network",
    ),
    (
        "header limit too small",
        lambda d: d.update(server={"max_headers": 2}),
        "server.max_headers: ",
    ),
    (
        "server timeout not a duration",
        lambda d: d.update(server={"header_timeout": "soon"}),
        "server.header_timeout: expected a duration",
    ),
    (
        "channel also a cohort",
        lambda d: d["cohorts"].insert(0, {"name": "chat", "customers": ["x"]}),
        "cohorts[0].name: 'chat' is also a channel",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), [(c, e) for _, c, e in BAD_CASES], ids=[n for n, _, _ in BAD_CASES]
)
def test_bad_file_is_refused_with_its_place(change, expected):
    doc = base_doc()
    change(doc)
    errors = errors_of(doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_is_reported_in_one_run():
    """A structural error in one place does not hide a cross-reference error in another."""
    doc = base_doc()
    _route0(doc)["weights"]["chat"]["pilot"] = 140
    doc["routes"][1]["shadow_pct"] = 1
    doc["platforms"]["old"]["crm"]["timeout"] = "soon"
    errors = errors_of(doc)
    assert len(errors) == 3, errors


def test_errors_carry_line_numbers():
    text = b"""version: 1
migration: m
platforms:
  old: { crm: { url: "http://a" } }
  new: { crm: { url: "http://b" } }
channels: [web]
routes:
  - name: r
    api: crm
    path: /x
    weights: { default: 101 }
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="routes.yaml", env={})
    assert (
        str(info.value)
        == "routes.yaml:11: routes[0].weights.default: 101 is not a percentage 0-100"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"version: 1\n  bad: indent: here\n", "invalid YAML"),
        (b"- just\n- a list\n", "expected a mapping at the top"),
        (b"", "expected a mapping at the top"),
        (b"\xff\xfe", "not UTF-8"),
        (b"version: 1\nversion: 1\n", "invalid YAML"),
    ],
)
def test_unparseable_files(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert expected in str(info.value)


def test_env_substitution_and_escape():
    doc = base_doc()
    doc["platforms"]["old"]["crm"]["headers"] = {
        "Authorization": "Bearer ${OLD_TOKEN}",
        "X-Price": "$$5",
    }
    table = load(doc, env={"OLD_TOKEN": "s3cret"})
    assert dict(table.upstream("old", "crm").headers) == {
        "Authorization": "Bearer s3cret",
        "X-Price": "$5",
    }


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_rollback_forms():
    assert load(dict(base_doc(), rollback=True)).rollback == frozenset({(None, None, None)})
    table = load(
        dict(base_doc(), rollback=[{"route": "contacts", "channel": "chat", "reason": "x"}])
    )
    assert table.rollback == frozenset({("contacts", "chat", None)})
    doc = base_doc()
    doc["routes"][1]["rollback"] = True
    assert load(doc).rollback == frozenset({("tickets", None, None)})


def test_version_is_a_content_hash():
    doc = base_doc()
    a, b = load(doc), load(copy.deepcopy(doc))
    doc["routes"][1]["weights"]["default"] = 1
    assert a.version == b.version != load(doc).version


# --- properties ---------------------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
PERCENT = st.one_of(
    st.integers(0, 100), st.floats(0, 100, allow_nan=False).map(lambda f: round(f, 2))
)


@st.composite
def valid_docs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=2, max_size=8, unique=True))
    split = draw(st.integers(1, len(names) - 1))
    channels, cohorts = names[:split], names[split:]
    cohorts = [c for c in cohorts if c != "default"] or ["grp"]
    weights: dict[str, Any] = {}
    if draw(st.booleans()):
        weights["default"] = draw(PERCENT)
    for channel in channels:
        if draw(st.booleans()):
            if draw(st.booleans()):
                weights[channel] = draw(PERCENT)
            else:
                weights[channel] = {c: draw(PERCENT) for c in cohorts if draw(st.booleans())}
    for cohort in cohorts:
        if draw(st.booleans()):
            weights[cohort] = draw(PERCENT)
    doc = base_doc()
    doc["channels"] = channels
    doc["identify"] = {"channel": {"default": channels[0]}}
    doc["cohorts"] = [{"name": c, "customers": [f"C-{i}"]} for i, c in enumerate(cohorts)]
    doc["routes"] = [{"name": "r", "api": "crm", "path": "/api/r", "weights": weights}]
    return doc


@given(valid_docs())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_valid_documents_load_and_resolve_every_cell(doc):
    """Any well-formed document loads, and every cell's weight is what resolve_weight says."""
    table = load(doc)
    route = table.route("r")
    assert route is not None
    weights = doc["routes"][0]["weights"]
    for channel in doc["channels"]:
        for cohort in table.cohort_names:
            assert route.weight_bp(channel, cohort) == round(
                resolve_weight(weights, channel, cohort) * 100
            )


@given(
    valid_docs(),
    st.one_of(
        st.integers(101, 10_000),
        st.integers(-1000, -1),
        st.floats(100.01, 1e6),
        st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), max_size=5),
    ),
)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_a_bad_percentage_is_reported_at_its_place(doc, bad):
    doc = copy.deepcopy(doc)
    doc["routes"][0]["weights"]["default"] = bad
    errors = errors_of(doc)
    assert any(e.startswith("routes[0].weights.default: ") for e in errors), errors


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "migration",
                "platforms",
                "channels",
                "routes",
                "cohorts",
                "identify",
                "rollback",
                "listen",
                "admin",
                "x",
            ]
        ),
        JSONISH,
        max_size=8,
    )
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_never_raises_anything_but_config_error(doc):
    """Whatever the document, the loader answers with a ConfigError whose issues have text."""
    try:
        parse_config(dump(doc), env={})
    except ConfigError as exc:
        assert exc.issues
        assert all(issue.message for issue in exc.issues)


@given(valid_docs(), st.data())
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_valid_documents_never_crash(doc, data):
    """Replace one value anywhere in a valid document with garbage: a ConfigError or a table."""
    doc = copy.deepcopy(doc)
    node: Any = doc
    for _ in range(data.draw(st.integers(1, 5))):
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict | list) or data.draw(st.booleans()):
                node[key] = data.draw(JSONISH)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            index = data.draw(st.integers(0, len(node) - 1))
            if not isinstance(node[index], dict | list) or data.draw(st.booleans()):
                node[index] = data.draw(JSONISH)
                break
            node = node[index]
        else:
            break
    try:
        parse_config(dump(doc), env={})
    except ConfigError as exc:
        assert exc.issues
