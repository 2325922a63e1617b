"""Phased plans: a route moves through its steps on evidence.

A step's gates hold when (1) it has been in force for its `hold` time and (2) the route's guard,
if it has one, judged enough traffic and saw no breach in any cell since the step began. Then
`cutover advance ROUTE` moves to the next step; with `plan.auto`, the plan advances by itself.
Advancing writes the next step's weights (and shadow share) and `plan.step` into routes.yaml
through proxy.control.changes (the fleet's config when in a fleet), so the step in force lives in
the one file, and survives restarts. When each step began and the history of advances are kept
in `<state_dir>/plans-<instance>.json`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from proxy.config.table import Route
from proxy.control.changes import Changes, now_iso
from proxy.control.edit import set_plan_step
from proxy.control.guard import Verdict
from proxy.control.live import Control, atomic_write
from proxy.telemetry import Cell

log = structlog.get_logger("cutover.plan")


@dataclass
class PlanState:
    step: int
    entered_at: float
    breached: bool = False  # some cell of the route breached its guard since the step began
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Gates:
    step: int
    last: bool
    held_s: float
    hold_s: float
    guard: str  # "none" (no guard), "ok", "breached", "not judged" (not enough requests)
    reasons: tuple[str, ...]

    @property
    def open(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "last": self.last,
            "held_s": round(self.held_s, 1),
            "hold_s": self.hold_s,
            "guard": self.guard,
            "can_advance": self.open,
            "reasons": list(self.reasons),
        }


class PlanKeeper:
    def __init__(self, control: Control, changes: Changes) -> None:
        self.control = control
        self.changes = changes
        self.states: dict[str, PlanState] = {}
        self._load()

    def _file(self) -> Path:
        return self.control.state_dir / f"plans-{self.control.instance}.json"

    def _load(self) -> None:
        try:
            data = orjson.loads(self._file().read_bytes())
        except (OSError, orjson.JSONDecodeError):
            data = {}
        for name, raw in data.items():
            try:
                self.states[name] = PlanState(**raw)
            except TypeError:
                continue

    def _save(self) -> None:
        try:
            atomic_write(self._file(), orjson.dumps({k: asdict(v) for k, v in self.states.items()}))
        except OSError as exc:  # the step in force is in routes.yaml; only timing history is lost
            log.error("plan_state_not_saved", error=str(exc))

    def _state(self, route: Route) -> PlanState:
        """This route's state, restarted when routes.yaml says another step is in force (an
        operator edited it, or another instance advanced the fleet)."""
        plan = route.spec.plan
        assert plan is not None
        state = self.states.get(route.name)
        if state is None or state.step != plan.step:
            history = state.history if state is not None else []
            if state is not None:
                history.append(
                    {"step": plan.step, "at": now_iso(), "by": "routes.yaml", "from": state.step}
                )
            state = self.states[route.name] = PlanState(plan.step, time.time(), history=history)
            self._save()
        return state

    def gates(self, route: Route, verdicts: dict[Cell, Verdict]) -> Gates:
        plan = route.spec.plan
        assert plan is not None
        state = self._state(route)
        step = plan.steps[plan.step]
        last = plan.step + 1 >= len(plan.steps)
        held = time.time() - state.entered_at
        reasons: list[str] = []
        if last:
            reasons.append("this is the plan's last step")
        if held < step.hold:
            reasons.append(f"step {plan.step} has held {held:.0f}s of {step.hold:g}s")
        guard = "none"
        if route.spec.guard is not None:
            mine = [v for c, v in verdicts.items() if c[0] == route.name]
            if state.breached or any(v.breaches for v in mine):
                guard = "breached"
                reasons.append("the guard was breached during this step")
            elif not any(v.judged for v in mine):
                guard = "not judged"
                reasons.append(
                    "the guard has not seen enough requests yet "
                    f"(min_requests {route.spec.guard.min_requests})"
                )
            else:
                guard = "ok"
        return Gates(plan.step, last, held, step.hold, guard, tuple(reasons))

    async def advance(
        self,
        name: str,
        *,
        by: str,
        reason: str,
        force: bool = False,
        verdicts: dict[Cell, Verdict] | None = None,
    ) -> dict[str, Any]:
        route = self.control.table.route(name)
        if route is None or route.spec.plan is None:
            return {"ok": False, "reasons": [f"route {name!r} has no plan"]}
        gates = self.gates(route, verdicts or {})
        blocking = [r for r in gates.reasons if force is False or "last step" in r]
        if blocking:
            return {"ok": False, "gates": gates.as_dict(), "reasons": blocking}
        plan = route.spec.plan
        target = plan.step + 1
        step = plan.steps[target]
        applied = await self.changes.config(
            lambda text: set_plan_step(text, name, target, step.weights, step.shadow_percent),
            by=by,
        )
        if not applied.ok:
            return {"ok": False, "reasons": list(applied.errors)}
        state = self.states[name] = PlanState(
            target,
            time.time(),
            history=[
                *self._state_history(name),
                {
                    "step": target,
                    "at": now_iso(),
                    "by": by,
                    "reason": reason,
                    "from": plan.step,
                    "forced": force and bool(gates.reasons),
                },
            ],
        )
        self._save()
        self.control.event(
            "plan_advanced",
            route=name,
            step=target,
            by=by,
            reason=reason,
            forced=force and bool(gates.reasons),
        )
        log.warning("plan_advanced", route=name, step=target, by=by, reason=reason)
        return {"ok": True, "step": state.step, "version": applied.version}

    def _state_history(self, name: str) -> list[dict[str, Any]]:
        state = self.states.get(name)
        return list(state.history) if state is not None else []

    async def on_tick(self, verdicts: dict[Cell, Verdict]) -> None:
        """The guardian's hook: remember breaches, and advance automatic plans whose gates hold."""
        for route in self.control.table.routes:
            if route.spec.plan is None:
                continue
            state = self._state(route)
            if any(v.breaches for c, v in verdicts.items() if c[0] == route.name):
                if not state.breached:
                    state.breached = True
                    self._save()
                continue
            if route.spec.plan.auto and self.gates(route, verdicts).open:
                hold = route.spec.plan.steps[route.spec.plan.step].hold
                await self.advance(
                    route.name, by="plan", reason=f"gates held for {hold:g}s", verdicts=verdicts
                )

    def snapshot(self, verdicts: dict[Cell, Verdict]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for route in self.control.table.routes:
            if route.spec.plan is None:
                continue
            gates = self.gates(route, verdicts)
            out[route.name] = {
                **gates.as_dict(),
                "auto": route.spec.plan.auto,
                "steps": len(route.spec.plan.steps),
                "history": self._state_history(route.name)[-20:],
            }
        return out
