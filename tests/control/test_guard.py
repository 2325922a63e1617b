"""One evaluation of the guardian: real Control, Changes and Telemetry over a routes.yaml file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from proxy.config import parse_config
from proxy.control.changes import Changes
from proxy.control.guard import Guardian
from proxy.control.live import Control
from proxy.control.plan import PlanKeeper
from proxy.state import TableStore
from proxy.telemetry import Telemetry
from tests.configs import base_doc, dump


def setup(tmp_path: Path, **route: Any) -> tuple[Control, Telemetry, Guardian, PlanKeeper]:
    doc = base_doc()
    doc["routes"][0].update(route)
    path = tmp_path / "routes.yaml"
    path.write_bytes(dump(doc))
    table = parse_config(path.read_bytes(), source=str(path), base_dir=tmp_path, env={})
    control = Control(TableStore(table), path, "g1", tmp_path / "state", env={})
    telemetry = Telemetry(table, slot_s=1.0)
    changes = Changes(control, None, None)
    guardian = Guardian(control, telemetry, changes)
    plans = PlanKeeper(control, changes)
    guardian.after_tick.append(plans.on_tick)
    return control, telemetry, guardian, plans


GUARD = {"window": "60s", "min_requests": 20, "max_error_rate": 0.05}


def serve(
    telemetry: Telemetry, n: int, status: int, channel: str = "web", platform: str = "new"
) -> None:
    for _ in range(n):
        telemetry.request("contacts", channel, "everyone", platform, status, 0.01)


async def test_one_evaluation_rolls_a_breaching_cell_back(tmp_path):
    control, telemetry, guardian, _ = setup(
        tmp_path, weights={"default": 0, "web": 100}, guard=GUARD
    )
    serve(telemetry, 18, 200)
    serve(telemetry, 12, 503)
    await guardian.tick()
    assert control.table.rollback == {("contacts", "web", "everyone")}
    scopes = YAML(typ="safe").load(control.path.read_text())["rollback"]  # type: ignore[union-attr]
    assert scopes[0]["reason"].startswith(
        "guard: new-platform error rate 40.0% > 5.0% (12 of 30 answers)"
    )
    assert guardian.trips[("contacts", "web", "everyone")] == 1
    serve(telemetry, 30, 503)
    await guardian.tick()  # already rolled back: not tripped again
    assert guardian.trips[("contacts", "web", "everyone")] == 1


async def test_too_little_evidence_or_no_one_on_new_does_not_trip(tmp_path):
    control, telemetry, guardian, _ = setup(
        tmp_path, weights={"default": 0, "web": 100}, guard=GUARD
    )
    serve(telemetry, 19, 503)  # under min_requests
    serve(telemetry, 40, 503, channel="email")  # email is at 0 %: rolling it back changes nothing
    await guardian.tick()
    assert control.table.rollback == frozenset()
    email = guardian.verdicts[("contacts", "email", "everyone")]
    assert email.breaches
    assert not email.on_new


async def test_a_breach_closes_the_plans_gates_for_the_step(tmp_path):
    plan = {
        "auto": True,
        "step": 0,
        "steps": [{"weights": {"default": 0, "web": 100}}, {"weights": {"default": 100}}],
    }
    control, telemetry, guardian, plans = setup(
        tmp_path, weights={"default": 0, "web": 100}, guard=GUARD, plan=plan
    )
    serve(telemetry, 25, 503)
    await guardian.tick()
    route = control.table.route("contacts")
    assert route is not None
    assert route.spec.plan is not None
    assert route.spec.plan.step == 0  # the breach stopped the automatic advance
    gates = plans.gates(route, guardian.verdicts)
    assert gates.guard == "breached"
    assert not gates.open


async def test_gates_open_advance_automatically(tmp_path):
    plan = {
        "auto": True,
        "step": 0,
        "steps": [
            {"weights": {"default": 0, "web": 100}},
            {"weights": {"default": 100}, "shadow_percent": 5},
        ],
    }
    control, telemetry, guardian, _ = setup(
        tmp_path, weights={"default": 0, "web": 100}, guard=GUARD, plan=plan
    )
    serve(telemetry, 25, 200)
    await guardian.tick()
    route = control.table.route("contacts")
    assert route is not None
    assert route.spec.plan is not None
    assert route.spec.plan.step == 1
    assert route.weight_bp("email", "everyone") == 10_000
    assert route.spec.shadow_percent == 5
