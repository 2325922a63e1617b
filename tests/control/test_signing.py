"""Signed fleet commands: what is accepted, what is refused and why; the key never leaks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import content_version
from proxy.control.signing import (
    MAX_FUTURE_S,
    KeyTooShort,
    Refused,
    key_from_env,
    read_unverified,
    sign,
    signature,
    verify,
)

KEY = b"k3y-that-must-never-leak-0123456789"
CONFIG = "cutover/crm-2026/config"
ROLLBACK = "cutover/crm-2026/rollback"
NOW = 1_800_000_000.0
TEXT = "version: 1\nmigration: crm-2026\n"


def config_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "kind": "config",
        "seq": 1_800_000_000_000,
        "ts": NOW,
        "version": content_version(TEXT.encode()),
        "text": TEXT,
    }
    return {**payload, **changes}


def rollback_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "kind": "rollback",
        "seq": 1_800_000_000_000,
        "ts": NOW,
        "scopes": [{"channel": "chat", "reason": "new platform drops messages", "by": "ops"}],
        "by": "ops",
        "reason": "new platform drops messages",
    }
    return {**payload, **changes}


def envelope(topic: str, payload: dict[str, Any], key: bytes = KEY) -> bytes:
    """Signed without sign()'s checks: how a careless or hostile publisher would do it."""
    return orjson.dumps({"payload": payload, "sig": signature(key, topic, payload)})


def test_round_trip_config_and_rollback() -> None:
    """What sign() makes, verify() accepts, and gives back the same payload."""
    for topic, payload in ((CONFIG, config_payload()), (ROLLBACK, rollback_payload())):
        payload["ts"] = time.time()
        assert verify(KEY, topic, sign(KEY, topic, payload)) == payload


def test_empty_rollback_is_the_resume_command() -> None:
    """No scopes is valid: the fleet has no rollback flags."""
    payload = rollback_payload(scopes=[])
    assert verify(KEY, ROLLBACK, envelope(ROLLBACK, payload), now=NOW)["scopes"] == []


CASES: list[tuple[str, Callable[[], tuple[str, bytes]], str]] = [
    ("not JSON", lambda: (ROLLBACK, b"rollback everything!"), "not_json"),
    ("JSON but not an object", lambda: (ROLLBACK, b"[1, 2]"), "invalid"),
    ("unsigned", lambda: (ROLLBACK, orjson.dumps({"payload": rollback_payload()})), "unsigned"),
    (
        "empty signature",
        lambda: (ROLLBACK, orjson.dumps({"payload": rollback_payload(), "sig": ""})),
        "unsigned",
    ),
    ("bare payload", lambda: (ROLLBACK, orjson.dumps(rollback_payload())), "unsigned"),
    (
        "signed with another key",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(), key=b"x" * 32)),
        "bad_signature",
    ),
    (
        "signature made for another topic",
        lambda: ("cutover/other/rollback", envelope(ROLLBACK, rollback_payload())),
        "bad_signature",
    ),
    (
        "signature made for another kind's topic",
        lambda: (CONFIG, envelope(ROLLBACK, rollback_payload())),
        "bad_signature",
    ),
    (
        "tampered payload",
        lambda: (
            ROLLBACK,
            orjson.dumps(
                {
                    "payload": rollback_payload(scopes=[]),
                    "sig": signature(KEY, ROLLBACK, rollback_payload()),
                }
            ),
        ),
        "bad_signature",
    ),
    (
        "signature in capitals",
        lambda: (
            ROLLBACK,
            orjson.dumps(
                {
                    "payload": rollback_payload(),
                    "sig": signature(KEY, ROLLBACK, rollback_payload()).upper(),
                }
            ),
        ),
        "bad_signature",
    ),
    (
        "payload not an object",
        lambda: (ROLLBACK, orjson.dumps({"payload": "x", "sig": "00"})),
        "invalid",
    ),
    (
        "ts from the future",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(ts=NOW + MAX_FUTURE_S + 1))),
        "future",
    ),
    (
        "config version does not match its text",
        lambda: (CONFIG, envelope(CONFIG, config_payload(version="0123456789ab"))),
        "version_mismatch",
    ),
    (
        "config without text",
        lambda: (
            CONFIG,
            envelope(CONFIG, {k: v for k, v in config_payload().items() if k != "text"}),
        ),
        "invalid",
    ),
    (
        "rollback payload on the config topic",
        lambda: (CONFIG, envelope(CONFIG, rollback_payload())),
        "invalid",
    ),
    (
        "unknown kind",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(kind="reboot"))),
        "invalid",
    ),
    ("seq missing", lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(seq=None))), "invalid"),
    ("seq a string", lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(seq="9"))), "invalid"),
    ("seq a bool", lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(seq=True))), "invalid"),
    ("seq zero", lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(seq=0))), "invalid"),
    (
        "seq past 2**53",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(seq=2**60))),
        "invalid",
    ),
    ("ts a string", lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(ts="now"))), "invalid"),
    ("by missing", lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(by=None))), "invalid"),
    (
        "scopes not a list",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(scopes={"channel": "chat"}))),
        "bad_scopes",
    ),
    (
        "scope not an object",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(scopes=["chat"]))),
        "bad_scopes",
    ),
    (
        "scope with an unknown key",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(scopes=[{"chanel": "chat"}]))),
        "bad_scopes",
    ),
    (
        "scope with a bad name",
        lambda: (ROLLBACK, envelope(ROLLBACK, rollback_payload(scopes=[{"route": "a/b#"}]))),
        "bad_scopes",
    ),
    (
        "too large",
        lambda: (ROLLBACK, b" " * (9 * 1024 * 1024)),
        "too_large",
    ),
]


@pytest.mark.parametrize(("case", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_refusals(case: str, make: Callable[[], tuple[str, bytes]], reason: str) -> None:
    """Each malformed, unsigned or forged message is refused with its own reason code."""
    topic, message = make()
    with pytest.raises(Refused) as refused:
        verify(KEY, topic, message, now=NOW)
    assert refused.value.reason == reason, refused.value
    assert isinstance(refused.value, ValueError)
    for text in (str(refused.value), repr(refused.value), refused.value.detail):
        assert KEY.decode() not in text
        assert "new platform drops messages" not in text  # no payload text echoed back


def test_sign_refuses_what_the_fleet_would_refuse() -> None:
    """A publisher hears about a bad command before the fleet does."""
    with pytest.raises(Refused, match="version_mismatch"):
        sign(KEY, CONFIG, config_payload(version="0123456789ab", ts=time.time()))
    with pytest.raises(Refused, match="bad_scopes"):
        sign(KEY, ROLLBACK, rollback_payload(scopes=[{"chanel": "chat"}], ts=time.time()))


def test_read_unverified_checks_shape_but_not_the_signature() -> None:
    """For `cutover status` without a key: readable, never trusted."""
    message = envelope(ROLLBACK, rollback_payload(), key=b"y" * 32)
    assert read_unverified(ROLLBACK, message, now=NOW)["seq"] == 1_800_000_000_000
    with pytest.raises(Refused, match="future"):
        read_unverified(ROLLBACK, envelope(ROLLBACK, rollback_payload(ts=NOW + 3600)), now=NOW)


def test_key_from_env() -> None:
    """Unset or empty is None; a short key is refused without being repeated."""
    assert key_from_env("K", {}) is None
    assert key_from_env("K", {"K": ""}) is None
    assert key_from_env("K", {"K": KEY.decode()}) == KEY
    with pytest.raises(KeyTooShort) as short:
        key_from_env("K", {"K": "hunter2"})
    assert "hunter2" not in str(short.value)
    assert "hunter2" not in repr(short.value)
    assert "$K" in str(short.value)


def test_replay_is_not_a_signature_matter() -> None:
    """An old message verifies: replays are the caller's check, by seq."""
    old = envelope(ROLLBACK, rollback_payload(ts=NOW - 86_400 * 30))
    assert verify(KEY, ROLLBACK, old, now=NOW)["ts"] == NOW - 86_400 * 30


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_byte_tampering_is_refused(data: st.DataObject) -> None:
    """Change any byte of a signed message: refused, unless the change spells the same message."""
    topic, payload = data.draw(
        st.sampled_from([(CONFIG, config_payload()), (ROLLBACK, rollback_payload())])
    )
    message = sign_at(topic, payload)
    position = data.draw(st.integers(0, len(message) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != message[position]))
    tampered = message[:position] + bytes([byte]) + message[position + 1 :]
    try:
        accepted = verify(KEY, topic, tampered, now=NOW)
    except Refused:
        return
    # accepted only if it is still the very same envelope (e.g. an equivalent JSON spelling)
    assert orjson.loads(tampered) == orjson.loads(message)
    assert accepted == payload


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["kind", "seq", "ts", "scopes", "by", "reason", "extra"]),
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.lists(st.dictionaries(st.sampled_from(["route", "channel", "cohort"]), st.text())),
    ),
)
def test_any_payload_change_is_refused(field: str, value: Any) -> None:
    """A payload changed after signing, in any field and to any value, is refused."""
    payload = rollback_payload()
    message = sign_at(ROLLBACK, payload)
    envelope_ = orjson.loads(message)
    if envelope_["payload"].get(field, object()) == value:
        return
    envelope_["payload"][field] = value
    with pytest.raises(Refused):
        verify(KEY, ROLLBACK, orjson.dumps(envelope_), now=NOW)


def sign_at(topic: str, payload: dict[str, Any]) -> bytes:
    """sign() checks ts against the real clock; the tests use a fixed NOW in the future."""
    return orjson.dumps({"payload": payload, "sig": signature(KEY, topic, payload)})
