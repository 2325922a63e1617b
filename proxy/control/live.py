"""An instance's live configuration and how it changes.

Three inputs change what an instance does, and all of them come through here:
  - routes.yaml, reloaded when it changes on disk or on SIGHUP (the file rules);
  - a whole routes.yaml published to the fleet over MQTT (written to the file, then applied);
  - the fleet's rollback flags over MQTT: an overlay on the table's own rollback scopes, kept in
    `<state_dir>/fleet.json` so that an instance restarted without its broker stays rolled back.
A valid table is swapped in with one reference assignment; an invalid one is refused, its errors
kept for the admin state and announced as an event, and the running table stays.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from proxy.config import ConfigError, RollbackKey, RouteTable, content_version, parse_config
from proxy.state import TableStore

log = structlog.get_logger("cutover.control")
EventSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class FleetRollback:
    """The rollback flags the fleet published (`cutover rollback` against the broker)."""

    seq: int = 0
    scopes: tuple[Mapping[str, Any], ...] = ()

    @property
    def keys(self) -> frozenset[RollbackKey]:
        return frozenset((s.get("route"), s.get("channel"), s.get("cohort")) for s in self.scopes)


@dataclass(frozen=True, slots=True)
class Applied:
    ok: bool
    version: str
    changed: bool = False
    errors: tuple[str, ...] = ()


@dataclass
class Control:
    tables: TableStore
    path: Path | None  # routes.yaml; None for a table that did not come from a file
    instance: str
    state_dir: Path
    env: Mapping[str, str] | None = None
    fleet: FleetRollback = FleetRollback()
    config_seq: int = 0  # of the last fleet config applied
    last_error: str | None = None
    last_error_at: float | None = None
    reloads: int = 0
    refused: int = 0
    started: float = field(default_factory=time.time)
    _sinks: list[EventSink] = field(default_factory=list)
    _file_stamp: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        self._load_fleet_state()
        self.tables.overlay = self.fleet.keys
        self._file_stamp = self._stamp()

    @property
    def table(self) -> RouteTable:
        return self.tables.table

    def on_event(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def event(self, kind: str, **fields: Any) -> None:
        """Something an operator must hear about: logged, and sent to every sink (MQTT)."""
        payload = {"kind": kind, "instance": self.instance, "at": time.time(), **fields}
        log.info("control_event", **payload)
        for sink in self._sinks:
            try:
                sink(payload)
            except Exception:  # a broken sink must not stop the others or the caller
                log.exception("event_sink_failed", kind=kind)

    # --- the file --------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def file_changed(self) -> bool:
        """Cheap check for the watcher: has routes.yaml been touched since we last read it?"""
        stamp = self._stamp()
        if stamp != self._file_stamp:
            self._file_stamp = stamp
            return stamp is not None
        return False

    def reload(self, reason: str) -> Applied:
        """Read routes.yaml again; swap it in when valid and different, refuse it otherwise."""
        if self.path is None:
            return Applied(True, self.table.version)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return self._refuse([f"{self.path}: cannot read: {exc.strerror or exc}"], reason)
        return self.apply(data, source=reason)

    def check_text(self, data: bytes, source: str = "check") -> RouteTable | Applied:
        """The table `data` would be, or the refusal (invalid, or another migration)."""
        try:
            table = parse_config(
                data,
                source=str(self.path or "routes.yaml"),
                base_dir=self.table.base_dir,
                env=self.env,
            )
        except ConfigError as exc:
            return self._refuse(exc.render().splitlines(), source)
        if table.migration != self.table.migration:
            return self._refuse(
                [
                    f"migration changed from {self.table.migration!r} to {table.migration!r}: "
                    "that reshuffles every customer; restart cutover to do it on purpose"
                ],
                source,
            )
        return table

    def apply(self, data: bytes, *, source: str) -> Applied:
        version = content_version(data)
        if version == self.table.version:
            return Applied(True, version)
        checked = self.check_text(data, source)
        if isinstance(checked, Applied):
            return checked
        return self._swap(checked, source)

    def _swap(self, table: RouteTable, source: str) -> Applied:
        old = self.tables.swap(table)
        self.reloads += 1
        self.last_error = None
        log.info("config_applied", source=source, version=table.version, previous=old.version)
        self.event("config_applied", version=table.version, previous=old.version, source=source)
        return Applied(True, table.version, changed=True)

    def _refuse(self, errors: list[str], source: str) -> Applied:
        self.refused += 1
        self.last_error = "\n".join(errors)
        self.last_error_at = time.time()
        log.error("config_refused", source=source, errors=errors[:20], kept=self.table.version)
        self.event("reload_refused", source=source, errors=errors[:20], kept=self.table.version)
        return Applied(False, self.table.version, errors=tuple(errors))

    def write_and_apply(self, data: bytes, *, source: str) -> Applied:
        """A change made through cutover (admin API, fleet config): parsed and checked once,
        then written to routes.yaml atomically (so a restart keeps it) and swapped in. Nothing
        is written when it is refused."""
        version = content_version(data)
        if version == self.table.version:
            return Applied(True, version)
        checked = self.check_text(data, source)
        if isinstance(checked, Applied):
            return checked
        if self.path is not None:
            atomic_write(self.path, data)
            self._file_stamp = self._stamp()
        return self._swap(checked, source)

    # --- the fleet's rollback overlay -------------------------------------------------------

    def apply_fleet_rollback(self, seq: int, scopes: Iterable[Mapping[str, Any]]) -> bool:
        """Newer flags replace older ones (all of them: the message is the whole desired state)."""
        if seq <= self.fleet.seq:
            return False
        self.fleet = FleetRollback(seq, tuple(dict(s) for s in scopes))
        self.tables.overlay = self.fleet.keys
        self._save_fleet_state()
        self.event("rollback_applied", seq=seq, scopes=list(self.fleet.scopes))
        return True

    def _fleet_file(self) -> Path:
        return self.state_dir / f"fleet-{self.instance}.json"

    def _load_fleet_state(self) -> None:
        try:
            data = orjson.loads(self._fleet_file().read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        self.fleet = FleetRollback(
            int(data.get("rollback_seq", 0)), tuple(data.get("rollback_scopes", []))
        )
        self.config_seq = int(data.get("config_seq", 0))

    def _save_fleet_state(self) -> None:
        try:
            atomic_write(
                self._fleet_file(),
                orjson.dumps(
                    {
                        "rollback_seq": self.fleet.seq,
                        "rollback_scopes": list(self.fleet.scopes),
                        "config_seq": self.config_seq,
                    }
                ),
            )
        except OSError as exc:  # the overlay holds in memory; only a restart would lose it
            log.error("fleet_state_not_saved", path=str(self._fleet_file()), error=str(exc))

    def note_config_seq(self, seq: int) -> None:
        self.config_seq = seq
        self._save_fleet_state()

    # --- what it says about itself ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        table = self.table
        return {
            "instance": self.instance,
            "migration": table.migration,
            "version": table.version,
            "config_seq": self.config_seq,
            "rollback_seq": self.fleet.seq,
            "loaded_at": self.tables.loaded_at,
            "uptime_s": round(time.time() - self.started, 1),
            "last_reload_error": self.last_error,
            "last_reload_error_at": self.last_error_at,
            "reloads": self.reloads,
            "refused": self.refused,
        }


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one; survives a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
