"""Signed fleet commands: the envelope, its HMAC, and every check a command must pass.

MQTT authenticates a connection to the broker, never a message: anyone who may publish on a topic
can put anything there. So every command (`config`, `rollback`) travels as

    {"payload": {...}, "sig": "<hex HMAC-SHA256(key, topic + "\\n" + canonical payload)>"}

where canonical is orjson with sorted keys. The topic is inside the MAC, so a signature cannot be
moved from one topic (or migration) to another. Pure functions, no I/O; replays (a `seq` not above
the last one accepted) are checked by the caller, which knows the last seq (proxy.control.fleet).

Exceptions: `Refused` (a ValueError) with a short, stable `reason` code (used as a counter label)
and a `detail` for people. Neither ever contains the key, and neither carries the routes.yaml text.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson
from pydantic import ValidationError

from proxy.config.load import MAX_FILE_BYTES, content_version
from proxy.config.spec import RollbackScope

#: how far ahead of our clock a command's `ts` may be (clock skew between operator and fleet)
MAX_FUTURE_S = 300.0
#: the routes.yaml size limit, plus room for JSON escaping and the envelope
MAX_MESSAGE_BYTES = 2 * MAX_FILE_BYTES + 64 * 1024
#: seqs are milliseconds since the epoch in practice; capped to stay exact in every JSON reader
MAX_SEQ = 2**53 - 1
MAX_SCOPES = 1000
MIN_KEY_BYTES = 16
KINDS = ("config", "rollback")

#: the reason codes `Refused` carries (fleet.py adds "replay", "wrong_migration", "unknown_topic")
REASONS = (
    "too_large",
    "not_json",
    "unsigned",
    "bad_signature",
    "invalid",
    "future",
    "version_mismatch",
    "bad_scopes",
)


class Refused(ValueError):
    """A control message that must not be applied; `reason` is a stable code, `detail` prose."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class KeyTooShort(ValueError):
    """A control key that is too easy to guess; the message names the variable, never the value."""


def key_from_env(name: str, env: Mapping[str, str] | None = None) -> bytes | None:
    """The control key from `$name` (its UTF-8 bytes), or None when unset or empty."""
    value = (os.environ if env is None else env).get(name, "")
    if not value:
        return None
    key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise KeyTooShort(
            f"${name} is shorter than {MIN_KEY_BYTES} bytes; use e.g. `openssl rand -hex 32`"
        )
    return key


def canonical(payload: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: one spelling per payload, whoever serialised it."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def signature(key: bytes, topic: str, payload: Mapping[str, Any]) -> str:
    """The hex MAC alone; `sign` is what publishers use (it also checks the payload)."""
    mac = hmac.new(key, topic.encode() + b"\n" + canonical(payload), hashlib.sha256)
    return mac.hexdigest()


def sign(key: bytes, topic: str, payload: Mapping[str, Any]) -> bytes:
    """The envelope for `payload` on `topic`; refuses (Refused) what every verifier would refuse,
    so an operator hears about a bad command before the fleet does."""
    check_payload(topic, payload)
    return orjson.dumps({"payload": dict(payload), "sig": signature(key, topic, payload)})


def verify(key: bytes, topic: str, message: bytes, *, now: float | None = None) -> dict[str, Any]:
    """The payload of a message that is signed with `key` for `topic` and well formed."""
    payload, sig = _envelope(message)
    if not isinstance(sig, str) or not sig:
        raise Refused("unsigned", "no signature")
    # the hex is compared as sent (lowercase, as `signature` writes it): any other spelling of the
    # same bytes is a change to the message, and a changed message is refused
    if not hmac.compare_digest(signature(key, topic, payload).encode(), sig.encode()):
        raise Refused("bad_signature", "the signature does not match this topic and payload")
    check_payload(topic, payload, now=now)
    return payload


def read_unverified(topic: str, message: bytes, *, now: float | None = None) -> dict[str, Any]:
    """The payload, checked for shape but not for its signature: for display without a key only,
    never for applying."""
    payload, _ = _envelope(message)
    check_payload(topic, payload, now=now)
    return payload


def _envelope(message: bytes) -> tuple[dict[str, Any], Any]:
    if len(message) > MAX_MESSAGE_BYTES:
        raise Refused("too_large", f"{len(message)} bytes, at most {MAX_MESSAGE_BYTES}")
    try:
        envelope = orjson.loads(message)
    except orjson.JSONDecodeError:
        raise Refused("not_json", "the message is not JSON") from None
    if not isinstance(envelope, dict):
        raise Refused("invalid", "expected an object {payload, sig}")
    if "sig" not in envelope:
        raise Refused("unsigned", "no signature")
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise Refused("invalid", "expected 'payload' to be an object")
    return payload, envelope["sig"]


def check_payload(topic: str, payload: Mapping[str, Any], *, now: float | None = None) -> None:
    """Fields and types of a command, and the facts that must hold between them."""
    kind = payload.get("kind")
    if kind not in KINDS:
        raise Refused("invalid", f"'kind' must be one of {', '.join(KINDS)}")
    if topic.rsplit("/", 1)[-1] != kind:
        raise Refused("invalid", f"a {kind} command on the wrong topic")
    seq = payload.get("seq")
    if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
        raise Refused("invalid", f"'seq' must be an integer from 1 to {MAX_SEQ}")
    ts = payload.get("ts")
    if not _is_number(ts) or not math.isfinite(ts):
        raise Refused("invalid", "'ts' must be a unix time")
    clock = time.time() if now is None else now
    if ts > clock + MAX_FUTURE_S:
        raise Refused(
            "future", f"'ts' is {ts - clock:.0f} s ahead of this clock (at most {MAX_FUTURE_S:.0f})"
        )
    if kind == "config":
        _check_config(payload)
    else:
        _check_rollback(payload)


def _check_config(payload: Mapping[str, Any]) -> None:
    version, text = payload.get("version"), payload.get("text")
    if not isinstance(version, str) or not isinstance(text, str):
        raise Refused("invalid", "a config needs 'version' and 'text' strings")
    data = text.encode()
    if len(data) > MAX_FILE_BYTES:
        raise Refused("invalid", f"'text' is larger than {MAX_FILE_BYTES} bytes")
    actual = content_version(data)
    if version != actual:
        raise Refused("version_mismatch", f"'version' says {version[:16]!r}, the text is {actual}")


def _check_rollback(payload: Mapping[str, Any]) -> None:
    for name in ("by", "reason"):
        if not isinstance(payload.get(name), str):
            raise Refused("invalid", f"a rollback needs a '{name}' string")
    scopes = payload.get("scopes")
    if not isinstance(scopes, list):
        raise Refused("bad_scopes", "'scopes' must be a list (empty: no fleet rollback)")
    if len(scopes) > MAX_SCOPES:
        raise Refused("bad_scopes", f"more than {MAX_SCOPES} scopes")
    for i, scope in enumerate(scopes):
        if not isinstance(scope, dict):
            raise Refused("bad_scopes", f"scopes[{i}] must be an object")
        try:
            RollbackScope.model_validate(scope)
        except ValidationError as exc:
            # place and kind of each error only: the values are the sender's, not ours to echo
            problems = ", ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '?'} ({err['type']})"
                for err in exc.errors(include_url=False)[:5]
            )
            raise Refused("bad_scopes", f"scopes[{i}]: {problems}") from None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
