"""Reading diff logs back: every file of a directory, line by line, through QA's filters.

Files are read oldest first (rotated files by the time in their names, then the active files)
one line at a time, so a gigabyte of logs costs a line's worth of memory. A line that is not a
diff record (bad JSON, a last line cut short, a required field missing) is counted in
`LogReader.unreadable` and skipped: a log damaged by a full disk must still be readable.

Filters take what a person types (`--status new=5xx`, `--since 2h`, `--path '$.items[*].id'`)
and raise `ValueError` with a sentence about what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from shadow import jsonpath
from shadow.difflog import ACTIVE_PATTERN, ROTATED_PATTERN
from shadow.jsonpath import PathError

__all__ = [
    "KINDS",
    "MAX_LINE",
    "RESULTS",
    "Filters",
    "Latest",
    "LogFile",
    "LogReader",
    "PathGeneralizer",
    "StatusFilter",
    "check_record",
    "latest_records",
    "list_log_files",
    "parse_path_filter",
    "parse_status",
    "parse_time",
]

MAX_LINE: Final = 32 * 1024 * 1024
"""A longer line is skipped (and counted) rather than held in memory whole."""

RESULTS: Final = frozenset({"match", "mismatch", "error"})
KINDS: Final = frozenset({"shadow", "verify"})
SIDES: Final = ("old", "new")

_CACHE_LIMIT: Final = 20_000


# --- files -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogFile:
    path: Path
    size: int
    instance: str
    rotated_at: str | None  # the stamp in a rotated file's name; None for an active file

    @property
    def order(self) -> tuple[int, str, str]:
        """Oldest first: rotated files by their stamp, then the active files (still growing)."""
        if self.rotated_at is None:
            return (1, "", self.path.name)
        return (0, self.rotated_at, self.path.name)


def list_log_files(directory: Path) -> list[LogFile]:
    """Every `diffs-*.jsonl` file in `directory`, oldest first; OSError when it cannot be listed."""
    files: list[LogFile] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith("diffs-") and name.endswith(".jsonl")):
                continue
            try:
                if not entry.is_file():
                    continue
                size = entry.stat().st_size
            except OSError:
                continue  # removed by a rotation while we looked
            rotated = ROTATED_PATTERN.fullmatch(name)
            if rotated is not None:
                files.append(LogFile(Path(entry.path), size, rotated["instance"], rotated["stamp"]))
            else:
                active = ACTIVE_PATTERN.fullmatch(name)
                instance = active["instance"] if active is not None else name
                files.append(LogFile(Path(entry.path), size, instance, None))
    files.sort(key=lambda f: f.order)
    return files


# --- parsing what QA types ---------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_RELATIVE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO-8601 (naive means UTC) or `30m`/`2h`/`1d` ago."""
    match = _RELATIVE.match(text)
    if match is not None:
        seconds = float(match.group(1)) * _RELATIVE_UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a time like 2026-11-23T10:00, 2026-11-23 or 2h / 30m / 1d ago, got {text!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


_CODE = re.compile(r"^([1-5])(?:(xx)|(\d\d))$", re.IGNORECASE)
_STATUS = re.compile(r"^\s*(?:(old|new)\s*(!=|=)\s*)?(\w+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class StatusFilter:
    """One `--status`: `500`, `5xx` (either side), `new=500`, `old!=2xx`, `old!=new`, `old=new`.

    A side without a status (it failed, see `result: error`) matches no status filter on it.
    """

    text: str
    side: str | None  # None: either side
    negate: bool
    low: int = 0  # the code or class the side is compared with (inclusive range)
    high: int = 0
    sides_differ: bool | None = None  # old!=new (True) / old=new (False)

    def __call__(self, status: Any) -> bool:
        if not isinstance(status, Mapping):
            return False
        if self.sides_differ is not None:
            old, new = status.get("old"), status.get("new")
            if not isinstance(old, int) or not isinstance(new, int):
                return False
            return (old != new) == self.sides_differ
        sides = SIDES if self.side is None else (self.side,)
        for side in sides:
            code = status.get(side)
            if isinstance(code, int) and (self.low <= code <= self.high) != self.negate:
                return True
        return False


def parse_status(text: str) -> StatusFilter:
    match = _STATUS.match(text)
    if match is not None:
        side, op, value = match.group(1), match.group(2), match.group(3)
        side = side.lower() if side else None
        if side is not None and value.lower() in SIDES and value.lower() != side:
            return StatusFilter(text, None, False, sides_differ=(op == "!="))
        code = _CODE.match(value)
        if code is not None:
            if code.group(2):
                low = int(code.group(1)) * 100
                return StatusFilter(text, side, op == "!=", low, low + 99)
            exact = int(value)
            return StatusFilter(text, side, op == "!=", exact, exact)
    raise ValueError(
        f"expected a status like 500, 5xx, new=500, old!=2xx or old!=new, got {text!r}"
    )


@dataclass(frozen=True, slots=True)
class PathFilter:
    """`--path`: records with a difference at or under a place the path names."""

    text: str
    special: str | None  # `@status`, `@headers`, `@headers.etag`: matched as text
    path: jsonpath.Path

    def matches(self, difference_path: str, parsed: jsonpath.Path | None) -> bool:
        if self.special is not None:
            return difference_path == self.special or difference_path.startswith(self.special + ".")
        return parsed is not None and jsonpath.covers(self.path, parsed)


def parse_path_filter(text: str) -> PathFilter:
    text = text.strip()
    if text.startswith("@"):
        return PathFilter(text, text, ())
    try:
        return PathFilter(text, None, jsonpath.parse(text))
    except PathError as exc:
        raise ValueError(f"--path: {exc}") from None


class PathGeneralizer:
    """`$.comments[3].body` -> `$.comments[*].body`, cached (diff logs repeat their paths)."""

    __slots__ = ("_cache", "_parsed")

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}
        self._parsed: dict[str, jsonpath.Path | None] = {}

    def parse(self, text: str) -> jsonpath.Path | None:
        """The parsed concrete path, or None for `@status`, `@headers.x` and anything odd."""
        try:
            return self._parsed[text]
        except KeyError:
            pass
        parsed: jsonpath.Path | None = None
        if text.startswith("$"):
            try:
                parsed = jsonpath.parse(text)
            except PathError:
                parsed = None
        if len(self._parsed) >= _CACHE_LIMIT:
            self._parsed.clear()
        self._parsed[text] = parsed
        return parsed

    def __call__(self, text: str) -> str:
        try:
            return self._cache[text]
        except KeyError:
            pass
        parsed = self.parse(text)
        general = text if parsed is None else jsonpath.format_path(jsonpath.generalize(parsed))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[text] = general
        return general


# --- records -----------------------------------------------------------------------------------


def _entries_ok(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(entry, dict) and isinstance(entry.get("path"), str) for entry in value
    )


def check_record(record: Any) -> dict[str, Any] | None:
    """The record if it has what reports need (defaults filled in), else None.

    Records in the shorter shape of DESIGN §4 (no `kind`, `result`) are accepted: `kind` is then
    "shadow" and `result` follows from `match` and `error`.
    """
    if not isinstance(record, dict):
        return None
    for name in ("ts", "request_id", "route"):
        if not isinstance(record.get(name), str):
            return None
    result = record.get("result")
    if result is None:
        match = record.get("match")
        if record.get("error"):
            result = "error"
        elif isinstance(match, bool):
            result = "match" if match else "mismatch"
        else:
            return None
        record["result"] = result
    elif result not in RESULTS:
        return None
    kind = record.setdefault("kind", "shadow")
    if not isinstance(kind, str):
        return None
    for name in ("differences", "noise"):
        entries = record.get(name)
        if entries is None:
            record[name] = []
        elif not _entries_ok(entries):
            return None
    status = record.get("status")
    if status is not None and not isinstance(status, dict):
        return None
    return record


@dataclass(frozen=True, slots=True)
class Filters:
    """What to keep; empty means everything. Values within one filter are alternatives (OR),
    different filters must all hold (AND)."""

    routes: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    cohorts: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    results: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    statuses: tuple[StatusFilter, ...] = ()
    paths: tuple[PathFilter, ...] = ()
    customers: frozenset[str] = frozenset()  # hashes, as records hold them
    request_ids: frozenset[str] = frozenset()
    _paths_seen: PathGeneralizer = field(default_factory=PathGeneralizer, compare=False, repr=False)

    @classmethod
    def parse(
        cls,
        *,
        routes: Iterable[str] = (),
        channels: Iterable[str] = (),
        cohorts: Iterable[str] = (),
        kinds: Iterable[str] = (),
        results: Iterable[str] = (),
        since: str | None = None,
        until: str | None = None,
        statuses: Iterable[str] = (),
        paths: Iterable[str] = (),
        customers: Iterable[str] = (),
        request_ids: Iterable[str] = (),
        now: datetime | None = None,
    ) -> Filters:
        """Filters from text as typed; ValueError says which value was not understood."""
        now = now or datetime.now(UTC)
        kind_set = frozenset(kinds)
        if bad := sorted(kind_set - KINDS):
            raise ValueError(f"--kind: expected shadow or verify, got {', '.join(bad)}")
        result_set = frozenset(results)
        if bad := sorted(result_set - RESULTS):
            raise ValueError(f"--result: expected match, mismatch or error, got {', '.join(bad)}")
        start = parse_time(since, now) if since else None
        end = parse_time(until, now) if until else None
        if start is not None and end is not None and start > end:
            raise ValueError(f"--since {since} is after --until {until}")
        return cls(
            routes=frozenset(routes),
            channels=frozenset(channels),
            cohorts=frozenset(cohorts),
            kinds=kind_set,
            results=result_set,
            since=start,
            until=end,
            statuses=tuple(parse_status(s) for s in statuses),
            paths=tuple(parse_path_filter(p) for p in paths),
            customers=frozenset(customers),
            request_ids=frozenset(request_ids),
        )

    @property
    def active(self) -> bool:
        return any(
            (
                self.routes,
                self.channels,
                self.cohorts,
                self.kinds,
                self.results,
                self.since,
                self.until,
                self.statuses,
                self.paths,
                self.customers,
                self.request_ids,
            )
        )

    def describe(self) -> dict[str, Any]:
        """The filters in force, as plain JSON, for reports to repeat."""
        out: dict[str, Any] = {}
        for name in ("routes", "channels", "cohorts", "kinds", "results", "customers"):
            values: Collection[str] = getattr(self, name)
            if values:
                out[name] = sorted(values)
        if self.request_ids:
            out["request_ids"] = sorted(self.request_ids)
        if self.since is not None:
            out["since"] = self.since.isoformat()
        if self.until is not None:
            out["until"] = self.until.isoformat()
        if self.statuses:
            out["statuses"] = [s.text for s in self.statuses]
        if self.paths:
            out["paths"] = [p.text for p in self.paths]
        return out

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if self.request_ids and record.get("request_id") not in self.request_ids:
            return False
        if self.routes and record.get("route") not in self.routes:
            return False
        if self.channels and record.get("channel") not in self.channels:
            return False
        if self.cohorts and record.get("cohort") not in self.cohorts:
            return False
        if self.kinds and record.get("kind") not in self.kinds:
            return False
        if self.results and record.get("result") not in self.results:
            return False
        if self.customers and record.get("customer") not in self.customers:
            return False
        if self.since is not None or self.until is not None:
            when = _record_time(record.get("ts"))
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        if self.statuses and not any(f(record.get("status")) for f in self.statuses):
            return False
        return not self.paths or self._has_path(record.get("differences") or ())

    def _has_path(self, differences: Iterable[Mapping[str, Any]]) -> bool:
        for difference in differences:
            text = difference["path"]
            parsed = self._paths_seen.parse(text)
            if any(f.matches(text, parsed) for f in self.paths):
                return True
        return False


# --- the reader --------------------------------------------------------------------------------


class LogReader:
    """Iterate the records of a directory that pass `filters`; counts what it could not read.

    The file list is taken when the reader is made (so `total_bytes` is known for progress);
    files that disappear before they are reached (pruned by a rotation) are counted in
    `missing_files`.
    """

    def __init__(
        self,
        directory: Path,
        filters: Filters | None = None,
        *,
        on_progress: Callable[[LogReader], None] | None = None,
        progress_step: int = 4 * 1024 * 1024,
        max_line: int = MAX_LINE,
    ) -> None:
        self.directory = Path(directory)
        self.filters = filters or Filters()
        self.files = list_log_files(self.directory)
        self.total_bytes = sum(f.size for f in self.files)
        self.bytes_read = 0
        self.lines = 0
        self.records = 0  # readable records, before filtering
        self.matched = 0
        self.unreadable = 0
        self.missing_files = 0
        self._on_progress = on_progress
        self._progress_step = max(1, progress_step)
        self._max_line = max_line

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for log_file in self.files:
            yield from self._read(log_file)
        if self._on_progress is not None:
            self._on_progress(self)

    def _read(self, log_file: LogFile) -> Iterator[dict[str, Any]]:
        try:
            fh = log_file.path.open("rb")
        except FileNotFoundError:
            self.missing_files += 1
            return
        keep = self.filters
        loads = orjson.loads
        next_report = self.bytes_read + self._progress_step
        limit = self._max_line
        with fh:
            while True:
                line = fh.readline(limit)
                if not line:
                    break
                self.bytes_read += len(line)
                if len(line) >= limit and not line.endswith(b"\n"):
                    self._skip_rest(fh, limit)
                    self.lines += 1
                    self.unreadable += 1
                    continue
                if self._on_progress is not None and self.bytes_read >= next_report:
                    next_report = self.bytes_read + self._progress_step
                    self._on_progress(self)
                if line.isspace():
                    continue
                self.lines += 1
                try:
                    record = check_record(loads(line))
                except orjson.JSONDecodeError:
                    record = None
                if record is None:
                    self.unreadable += 1
                    continue
                self.records += 1
                if keep(record):
                    self.matched += 1
                    yield record

    def _skip_rest(self, fh: Any, limit: int) -> None:
        while True:
            chunk: bytes = fh.readline(limit)
            self.bytes_read += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return


# --- the newest records first ------------------------------------------------------------------

TAIL_BLOCK: Final = 256 * 1024


@dataclass(slots=True)
class Latest:
    """The newest records that passed the filters (newest first), and how far back we looked."""

    records: list[dict[str, Any]] = field(default_factory=list)
    bytes_read: int = 0
    unreadable: int = 0
    complete: bool = True  # False: the byte budget ran out before the oldest file's start


def latest_records(
    directory: Path, filters: Filters | None = None, *, limit: int = 50, max_bytes: int = 64 << 20
) -> Latest:
    """Up to `limit` records that pass `filters`, newest first, reading the files backwards
    (active files, then rotated ones, newest first) and at most `max_bytes` of them: the
    console asks for the latest mismatches every few seconds, and a gigabyte of old logs must
    not make that slow. With several instances in one folder, each instance's records are in
    order and the whole is sorted by `ts`."""
    keep = filters or Filters()
    out = Latest()
    files = list_log_files(directory)
    for log_file in sorted(files, key=lambda f: f.order, reverse=True):
        if len(out.records) >= limit and log_file.rotated_at is not None:
            break  # every active file was read; an older rotated file cannot add newer records
        try:
            fh = log_file.path.open("rb")
        except FileNotFoundError:
            continue
        found = 0
        with fh:
            for line in _lines_backwards(fh, out, max_bytes):
                if not line or line.isspace():
                    continue
                try:
                    record = check_record(orjson.loads(line))
                except orjson.JSONDecodeError:
                    record = None
                if record is None:
                    out.unreadable += 1
                    continue
                if keep(record):
                    out.records.append(record)
                    found += 1
                    if found >= limit:
                        break
        if not out.complete:
            break
    out.records.sort(key=lambda r: str(r.get("ts")), reverse=True)
    del out.records[limit:]
    return out


def _lines_backwards(fh: Any, out: Latest, max_bytes: int) -> Iterator[bytes]:
    """The file's lines, last first, reading blocks from the end; stops (and says so in `out`)
    when `max_bytes` have been read in all. A last line without its newline (being written)
    comes out too and fails to parse like any damaged line."""
    fh.seek(0, os.SEEK_END)
    position = fh.tell()
    rest = b""
    while position > 0:
        if out.bytes_read >= max_bytes:
            out.complete = False
            return
        step = min(TAIL_BLOCK, position)
        position -= step
        fh.seek(position)
        block = fh.read(step)
        out.bytes_read += len(block)
        lines = (block + rest).split(b"\n")
        rest = lines[0]
        yield from reversed(lines[1:])
    yield rest
