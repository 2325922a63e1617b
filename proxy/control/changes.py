"""Changes cutover makes on its own (a guard that trips, a plan that advances), made the way an
operator would make them, so that the whole fleet follows and the record says who and why:

  - in a fleet (routes.yaml has mqtt and the key is set): published to the broker like
    `cutover rollback --fleet` / `cutover publish`; if the broker cannot be reached, the change
    is made to this instance's routes.yaml instead (rolling back is the safe direction);
  - otherwise: written to routes.yaml (only the changed lines) and applied at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from proxy.config.spec import MqttSpec
from proxy.control.edit import EditError, add_rollback
from proxy.control.live import Applied, Control

log = structlog.get_logger("cutover.changes")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Changes:
    def __init__(self, control: Control, fleet: MqttSpec | None, key: bytes | None) -> None:
        self.control = control
        self.fleet = fleet if key else None
        self.key = key

    async def rollback(
        self, *, route: str, channel: str | None, cohort: str | None, reason: str, by: str
    ) -> str:
        """Roll one cell (or wider scope) back; returns how it was done."""
        scope = {k: v for k, v in (("route", route), ("channel", channel), ("cohort", cohort)) if v}
        if self.fleet is not None and self.key is not None:
            from proxy.control import fleetctl

            scopes = [dict(s) for s in self.control.fleet.scopes]
            key = (route, channel, cohort)
            scopes = [
                s for s in scopes if (s.get("route"), s.get("channel"), s.get("cohort")) != key
            ]
            scopes.append({**scope, "reason": reason, "by": by, "at": now_iso()})
            try:
                seq = await fleetctl.publish_rollback(
                    self.fleet, self.control.table.migration, self.key, scopes, by=by, reason=reason
                )
            except fleetctl.FleetError as exc:
                log.error("fleet_publish_failed", error=str(exc), fallback="routes.yaml")
            else:
                self.control.apply_fleet_rollback(seq, scopes)  # here at once, not after the echo
                return "fleet"
        applied = self.edit_file(
            lambda text: add_rollback(
                text,
                route=route,
                channel=channel,
                cohort=cohort,
                reason=reason,
                by=by,
                at=now_iso(),
            )
        )
        return "routes.yaml" if applied.ok else "refused"

    async def config(self, edit: Callable[[str], str], *, by: str) -> Applied:
        """An edit of routes.yaml: the fleet's (retained) text when in a fleet, else this file."""
        if self.fleet is not None and self.key is not None:
            from proxy.config import content_version
            from proxy.control import fleetctl

            try:
                view = await fleetctl.read_retained(
                    self.fleet, self.control.table.migration, self.key
                )
                base = view.config.text if view.config is not None else self.control.table.text
                text = edit(base)
                checked = self.control.check_text(text.encode())
                if isinstance(checked, Applied):
                    return checked
                await fleetctl.publish_config(
                    self.fleet, self.control.table.migration, self.key, text
                )
            except fleetctl.FleetError as exc:
                log.error("fleet_publish_failed", error=str(exc), fallback="routes.yaml")
            else:
                applied = self.control.write_and_apply(text.encode(), source=f"{by}:fleet")
                return Applied(
                    applied.ok, content_version(text.encode()), applied.changed, applied.errors
                )
        return self.edit_file(edit)

    def edit_file(self, edit: Callable[[str], str]) -> Applied:
        control = self.control
        base = control.path.read_text() if control.path is not None else control.table.text
        try:
            text = edit(base)
        except EditError as exc:
            return Applied(False, control.table.version, errors=(str(exc),))
        return control.write_and_apply(text.encode(), source="cutover")


def scope_text(scope: dict[str, Any]) -> str:
    return "/".join(str(scope.get(k) or "*") for k in ("route", "channel", "cohort"))
