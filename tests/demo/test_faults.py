"""Fault settings: validation, scope, and the deterministic flaky draw."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.demo.faults import FaultError, Faults, FaultState


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "sideways"}, "mode"),
        ({"mode": "slow"}, "delay_ms"),
        ({"mode": "slow", "delay_ms": -5}, "delay_ms"),
        ({"mode": "flaky"}, "error_rate"),
        ({"mode": "flaky", "error_rate": 1.5}, "error_rate"),
        ({"mode": "flaky", "error_rate": 0.5, "seed": "x"}, "seed"),
        ({"mode": "wrong_field"}, "field"),
        ({"mode": "status", "status": 200}, "status"),
        ({"mode": "status", "status": 600}, "status"),
        ({"mode": "down", "down_for_ms": 0}, "down_for_ms"),
        ({"mode": "ok", "methods": 3}, "methods"),
        ({"mode": "ok", "paths": [1]}, "paths"),
        ({"mode": "reset", "commit": "yes"}, "commit"),
        ({"mode": "ok", "colour": "red"}, "colour"),
    ],
)
def test_bad_settings_are_refused_with_the_key(settings: dict[str, Any], message: str) -> None:
    """Each refusal names the setting at fault."""
    with pytest.raises(FaultError, match=message):
        Faults.parse(settings)


def test_settings_round_trip_through_json() -> None:
    """What GET /_sim/faults shows parses back to the same settings."""
    faults = Faults.parse(
        {"mode": "flaky", "error_rate": 0.25, "seed": 3, "methods": ["get"], "paths": "/api"}
    )
    assert faults.methods == frozenset({"GET"})
    assert faults.paths == ("/api",)
    assert Faults.parse(faults.to_json()) == faults


@pytest.mark.parametrize(
    ("settings", "method", "path", "applies"),
    [
        ({"mode": "slow", "delay_ms": 1}, "GET", "/api/contacts/1", True),
        ({"mode": "status", "status": 422}, "GET", "/api/contacts/1", False),
        ({"mode": "status", "status": 422}, "PATCH", "/api/contacts/1", True),
        ({"mode": "status", "methods": ["GET"]}, "GET", "/api/contacts", True),
        ({"mode": "reset", "methods": ["POST"]}, "GET", "/api/contacts", False),
        ({"mode": "reset", "paths": "/api/tickets"}, "GET", "/api/tickets/5001", True),
        ({"mode": "reset", "paths": ["/api/tickets"]}, "GET", "/api/attachments", False),
    ],
)
def test_scope(settings: dict[str, Any], method: str, path: str, applies: bool) -> None:
    """Methods and path prefixes narrow a fault; "status" hits writes unless told otherwise."""
    assert Faults.parse(settings).applies_to(method, path) is applies


@pytest.mark.parametrize(
    ("rate", "pattern"),
    [
        (0.5, [False, True] * 5),
        (1 / 3, [False, False, True] * 4),
        (0.3, [False, False, False, True, False, False, True, False, False, True]),
        (1.0, [True] * 5),
        (0.0, [False] * 5),
    ],
)
def test_flaky_without_seed_fails_an_exact_even_share(rate: float, pattern: list[bool]) -> None:
    """Request n fails when floor(n*rate) steps up: the same requests on every run."""
    state = FaultState()
    state.set(Faults.parse({"mode": "flaky", "error_rate": rate}))
    assert [state.should_fail() for _ in pattern] == pattern


def test_flaky_with_seed_repeats_and_restarts_on_set() -> None:
    """A seeded draw is random-looking but the same after every `set`."""
    state = FaultState()
    faults = Faults.parse({"mode": "flaky", "error_rate": 0.5, "seed": 9})
    state.set(faults)
    first = [state.should_fail() for _ in range(40)]
    state.set(faults)
    assert [state.should_fail() for _ in range(40)] == first
    assert 5 < sum(first) < 35
