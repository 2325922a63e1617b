"""Fault settings for a simulated upstream: one validated value, and the per-app state behind it.

Tests need failures they can count on, so "flaky" is deterministic by default: with
`error_rate` r, request n (counted from the last change of settings, in scope only) fails when
floor(n*r) > floor((n-1)*r), which spreads exactly r of the requests evenly (r = 1/3 fails every
third). A `seed` switches to a seeded random draw instead. No aiohttp here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Literal, cast, get_args

FaultMode = Literal["ok", "slow", "flaky", "down", "reset", "garbage", "wrong_field", "status"]
MODES: frozenset[str] = frozenset(get_args(FaultMode))
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_KEYS = frozenset(
    {
        "mode",
        "delay_ms",
        "error_rate",
        "seed",
        "field",
        "value",
        "status",
        "down_for_ms",
        "methods",
        "paths",
        "commit",
    }
)


class FaultError(ValueError):
    """Settings that cannot be applied; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What an upstream does to the requests in scope.

    `delay_ms` delays any mode (it is the whole of "slow"). `commit` makes reset, garbage, flaky
    and status run the real handler first, so the write happens and only the answer is lost or
    replaced: the case a dual-write retry with an Idempotency-Key exists for.
    """

    mode: FaultMode = "ok"
    delay_ms: int = 0
    error_rate: float = 0.0
    seed: int | None = None
    field: str | None = None
    value: Any = None
    status: int = 500
    down_for_ms: int | None = None
    methods: frozenset[str] | None = None
    paths: tuple[str, ...] | None = None
    commit: bool = False

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Faults:
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise FaultError(f"unknown fault setting(s): {', '.join(unknown)}")
        mode = data.get("mode", "ok")
        if mode not in MODES:
            raise FaultError(f"mode: expected one of {', '.join(sorted(MODES))}")
        faults = cls(mode=cast("FaultMode", mode))
        delay = _int(data, "delay_ms", 0, minimum=0)
        if mode == "slow" and delay <= 0:
            raise FaultError("delay_ms: slow needs a positive delay")
        if mode == "flaky" and "error_rate" not in data:
            raise FaultError("error_rate: flaky needs the share of requests that fail")
        rate = data.get("error_rate", 0.0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise FaultError("error_rate: expected a number from 0 to 1")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise FaultError("seed: expected an integer")
        name = data.get("field")
        if mode == "wrong_field" and (not isinstance(name, str) or not name):
            raise FaultError("field: wrong_field needs the name of a top-level field")
        status = _int(data, "status", 500, minimum=400)
        if status > 599:
            raise FaultError("status: expected 400 to 599")
        down_for = data.get("down_for_ms")
        if down_for is not None:
            down_for = _int(data, "down_for_ms", 0, minimum=1)
        commit = data.get("commit", False)
        if not isinstance(commit, bool):
            raise FaultError("commit: expected true or false")
        return replace(
            faults,
            delay_ms=delay,
            error_rate=float(rate),
            seed=seed,
            field=name if isinstance(name, str) else None,
            value=data.get("value"),
            status=status,
            down_for_ms=down_for,
            methods=_methods(data.get("methods")),
            paths=_paths(data.get("paths")),
            commit=commit,
        )

    def applies_to(self, method: str, path: str) -> bool:
        if self.methods is not None:
            if method not in self.methods:
                return False
        elif self.mode == "status" and method not in WRITE_METHODS:
            return False
        return self.paths is None or any(path.startswith(prefix) for prefix in self.paths)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.delay_ms:
            out["delay_ms"] = self.delay_ms
        if self.mode == "flaky":
            out["error_rate"] = self.error_rate
            if self.seed is not None:
                out["seed"] = self.seed
        if self.mode == "wrong_field":
            out["field"] = self.field
            out["value"] = self.value
        if self.mode in ("status", "flaky"):
            out["status"] = self.status
        if self.down_for_ms is not None:
            out["down_for_ms"] = self.down_for_ms
        if self.methods is not None:
            out["methods"] = sorted(self.methods)
        if self.paths is not None:
            out["paths"] = list(self.paths)
        if self.commit:
            out["commit"] = True
        return out


def _int(data: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultError(f"{key}: expected an integer of at least {minimum}")
    return value


def _methods(value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(m, str) for m in value
    ):
        raise FaultError("methods: expected a list of HTTP methods")
    return frozenset(str(m).upper() for m in value)


def _paths(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise FaultError("paths: expected a path prefix or a list of them")
    return tuple(str(p) for p in value)


class FaultState:
    """The settings in force on one app, and the draw that decides which flaky request fails."""

    __slots__ = ("_count", "_rate", "_rng", "current")

    def __init__(self) -> None:
        self.current = Faults()
        self._count = 0
        self._rate = Fraction(0)
        self._rng: random.Random | None = None

    def set(self, faults: Faults) -> None:
        """Apply new settings; the flaky count and random draw start again."""
        self.current = faults
        self._count = 0
        self._rate = Fraction(faults.error_rate).limit_denominator(10_000)
        seeded = faults.seed is not None
        # Seeded on purpose: a test must see the same failures on every run.
        self._rng = random.Random(faults.seed) if seeded else None  # noqa: S311

    def should_fail(self) -> bool:
        """Whether this in-scope flaky request fails."""
        if self._rng is not None:
            return self._rng.random() < self.current.error_rate
        self._count += 1
        n = self._count
        return math.floor(n * self._rate) > math.floor((n - 1) * self._rate)
