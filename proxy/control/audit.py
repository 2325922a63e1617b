"""The audit list: who changed what a customer's request does, when, and why.

Admin API changes (with their reason and outcome) are recorded by the admin handlers; what
happens without them (a guard tripping, a plan advancing, the fleet's rollback flags arriving,
routes.yaml edited by hand or published to the fleet, a file refused) comes in as control
events. One JSON line per entry in `<state_dir>/audit-<instance>.jsonl`, so the list survives a
restart; the file is rotated once (to `.1`) past MAX_BYTES. The newest KEEP entries are also
held in memory for the console.
"""

from __future__ import annotations

import contextlib
from collections import deque
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from proxy.control.changes import now_iso, scope_text

log = structlog.get_logger("cutover.audit")

KEEP: Final = 500
MAX_BYTES: Final = 5 * 1024 * 1024

#: config sources that are not someone's recorded change already (an admin change, a guard's or
#: a plan's edit are audited with their reason): the file edited, SIGHUP, a reload, the fleet
EXTERNAL_SOURCES: Final = frozenset({"file changed", "SIGHUP", "admin", "fleet", "fleet config"})


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._load()

    def _load(self) -> None:
        for name in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                lines = name.read_bytes().splitlines()
            except OSError:
                continue
            for line in lines[-KEEP:]:
                with contextlib.suppress(orjson.JSONDecodeError):
                    entry = orjson.loads(line)
                    if isinstance(entry, dict):
                        self.entries.append(entry)

    def record(self, **entry: Any) -> dict[str, Any]:
        """Add an entry (stamped with `at` when it has none); a disk failure is logged, and the
        entry is still kept in memory."""
        entry = {"at": now_iso(), **{k: v for k, v in entry.items() if v is not None}}
        self.entries.append(entry)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > MAX_BYTES:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            with self.path.open("ab") as fh:
                fh.write(orjson.dumps(entry) + b"\n")
        except OSError as exc:
            log.error("audit_not_written", path=str(self.path), error=str(exc))
        return entry

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self.entries))[:limit]

    def on_event(self, event: dict[str, Any]) -> None:
        """A control event (proxy.control.live.Control.event) that changes routing, as an entry."""
        kind = event.get("kind")
        if kind == "guard_tripped":
            scope = {k: event.get(k) for k in ("route", "channel", "cohort")}
            self.record(
                by="guard",
                action="rollback",
                scope=scope_text(scope),
                reason="; ".join(event.get("breaches") or []),
                result="applied",
                detail={"through": event.get("applied_through"), "figures": event.get("figures")},
            )
        elif kind == "plan_advanced":
            self.record(
                by=event.get("by"),
                action="advance",
                scope=str(event.get("route")),
                reason=event.get("reason"),
                result="applied",
                detail={"step": event.get("step"), "forced": event.get("forced")},
            )
        elif kind == "rollback_applied":
            scopes = [s for s in event.get("scopes") or [] if isinstance(s, dict)]
            newest = max(scopes, key=lambda s: str(s.get("at") or ""), default={})
            self.record(
                by=newest.get("by") or "fleet",
                action="fleet rollback",
                scope=", ".join(scope_text(s) for s in scopes) or "none (resumed)",
                reason=newest.get("reason") if scopes else None,
                result="applied",
                detail={"seq": event.get("seq")},
            )
        elif kind in ("config_applied", "reload_refused"):
            source = str(event.get("source"))
            if source not in EXTERNAL_SOURCES:
                return
            applied = kind == "config_applied"
            self.record(
                by=source,
                action="routes.yaml",
                scope="*",
                reason="applied" if applied else "refused: the running table stays",
                result="applied" if applied else "refused",
                detail={"version": event.get("version") or event.get("kept")}
                | ({} if applied else {"errors": (event.get("errors") or [])[:5]}),
            )
