"""`cutover diff`: QA's command over the diff logs.

    cutover diff [--dir DIR] [filters...] [--json] [--top N]   the summary
    cutover diff show REQUEST_ID [--dir DIR] [--json]          one exchange, old | new

The directory is `--dir`, else `diff_log.dir` of `--config` (relative to that file's folder).
QA must not need the platforms' secrets to read diffs, so routes.yaml is loaded with every
`${VAR}` answered (by its value when set, else by ""). Exit codes: 0 done; 1 `show` found no such
request; 2 bad arguments, or no such directory or config.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from shadow import jsonpath
from shadow.jsonpath import PathError
from shadow.logread import Filters, LogReader
from shadow.report import DEFAULT_TOP, Summary, render_text

__all__ = ["add_diff_command", "exchange_rows", "render_exchange", "why_no_bodies"]

PROGRESS_ABOVE: Final = 50 * 1000 * 1000  # bytes of logs before a progress line is worth it
DEFAULT_CONFIG: Final = "routes.yaml"

_EPILOG = """\
examples:
  cutover diff --route contacts --since 1d
  cutover diff --channel chat --cohort pilot --result mismatch
  cutover diff --path '$.comments[*].body' --status old!=new --json > out.json
  cutover diff show 6f1c2a9e0b5d4f3e

guide: docs/diff-log.md
"""


class UsageError(Exception):
    """Bad input from the person at the keyboard: the message is printed, the exit code is 2."""


# --- the parser --------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of 1 or more, got {text!r}")
    return value


def _shared(parser: argparse.ArgumentParser, *, nested: bool) -> None:
    """Options both `diff` and `diff show` take; the nested copy must not reset the outer one."""
    keep = argparse.SUPPRESS
    parser.add_argument(
        "--config",
        "-c",
        default=keep,
        help="routes.yaml whose diff_log.dir to read (default: the top-level --config)",
    )
    parser.add_argument(
        "--dir",
        default=keep if nested else None,
        metavar="DIR",
        help="read the diff logs in DIR instead of routes.yaml's diff_log.dir",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=keep if nested else False,
        help="the same information as JSON, for scripts",
    )
    parser.add_argument(
        "--width",
        type=_positive,
        default=keep if nested else None,
        help="columns to lay the text out for (default: the terminal's, else 80)",
    )
    parser.add_argument(
        "--no-color",
        action="store_true",
        default=keep if nested else False,
        help="no ANSI colour (also when NO_COLOR is set or output is not a terminal)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        default=keep if nested else False,
        help="no progress line on stderr while reading large logs",
    )


def add_diff_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `diff` (with its `show`) on the `cutover` parser's subcommands."""
    diff = subparsers.add_parser(
        "diff",
        help="summarise the diff log, or show one exchange side by side",
        description="Summarise the diff log by route and field path, or show one exchange\n"
        "(diff show REQUEST_ID). Reads --dir, else diff_log.dir of --config.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _shared(diff, nested=False)
    group = diff.add_argument_group(
        "filters", "Repeat a filter to allow several values; different filters must all hold."
    )
    group.add_argument("--route", action="append", default=[], metavar="NAME", help="a route")
    group.add_argument("--channel", action="append", default=[], metavar="NAME", help="a channel")
    group.add_argument("--cohort", action="append", default=[], metavar="NAME", help="a cohort")
    group.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=["shadow", "verify"],
        help="mirrored reads or read-backs after writes",
    )
    group.add_argument(
        "--result", action="append", default=[], choices=["match", "mismatch", "error"]
    )
    group.add_argument(
        "--since", metavar="TIME", help="ISO-8601 (UTC unless it says), or 30m / 2h / 1d ago"
    )
    group.add_argument(
        "--until", metavar="TIME", help="ISO-8601 (UTC unless it says), or 30m / 2h / 1d ago"
    )
    group.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="S",
        help="500, 5xx, new=500, old!=2xx or old!=new",
    )
    group.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="JSONPATH",
        help="exchanges with a difference at or under it ($.items[*].id, @status, @headers)",
    )
    group.add_argument(
        "--customer",
        action="append",
        default=[],
        metavar="KEY",
        help="a customer key (hashed like the proxy does) or a sha256:... hash",
    )
    group.add_argument(
        "--request-id", action="append", default=[], metavar="ID", help="a request id"
    )
    diff.add_argument(
        "--top",
        type=_positive,
        default=DEFAULT_TOP,
        metavar="N",
        help="differing paths listed per route (default %(default)s)",
    )
    diff.set_defaults(func=summary_command, diff_command=None)

    inner = diff.add_subparsers(
        dest="diff_command", title="subcommand", metavar="show", required=False
    )
    show = inner.add_parser(
        "show",
        help="one exchange: the two bodies side by side, differences highlighted",
        description="Show every record of one request: header, old | new bodies aligned by "
        "JSON path with the differing lines marked, then the list of differences.",
    )
    show.add_argument("request_id", metavar="REQUEST_ID")
    _shared(show, nested=True)
    show.set_defaults(func=show_command)


# --- settings ----------------------------------------------------------------------------------


class _AnyEnv(dict[str, str]):
    """Every `${VAR}` resolves: to its value when set, else to "" (QA has no platform secrets)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class _Settings:
    directory: Path
    migration: str | None  # for hashing --customer keys; None when no routes.yaml was read


def _config_path(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "config", None) or DEFAULT_CONFIG)


def _read_config(path: Path, err: TextIO) -> tuple[Path, str]:
    """(diff_log.dir resolved, migration) of a routes.yaml; UsageError when it cannot be had."""
    from proxy.config import ConfigError, load_config

    try:
        table = load_config(path, env=_AnyEnv(os.environ))
    except ConfigError as exc:
        fallback = _read_config_loosely(path)
        if fallback is None:
            raise UsageError(
                f"{exc.render()}\ncannot read the diff log settings from {path} "
                "(pass --dir DIR to read a directory directly)"
            ) from None
        print(
            f"cutover diff: {path} has {len(exc.issues)} problem(s) (see `cutover validate`); "
            "using its diff_log.dir anyway",
            file=err,
        )
        return fallback
    return table.resolve(table.spec.diff_log.dir), table.migration


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _read_config_loosely(path: Path) -> tuple[Path, str] | None:
    """`diff_log.dir` and `migration` from a routes.yaml that does not validate as a whole.

    Diffs stay readable when, say, a platform URL comes from a variable QA does not have.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        tree = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError):
        return None
    if not isinstance(tree, dict) or not isinstance(tree.get("migration"), str):
        return None
    log = tree.get("diff_log") or {}
    text = log.get("dir", "./diffs") if isinstance(log, dict) else None
    if not isinstance(text, str):
        return None
    text = _VAR.sub(lambda m: os.environ.get(m.group(1), ""), text).replace("$$", "$")
    directory = Path(text)
    if not directory.is_absolute():
        directory = path.resolve().parent / directory
    return directory, tree["migration"]


def _settings(args: argparse.Namespace, err: TextIO, *, need_migration: bool) -> _Settings:
    config = _config_path(args)
    if args.dir:
        migration = None
        if need_migration and config.is_file():
            migration = _read_config(config, err)[1]
        return _Settings(Path(args.dir), migration)
    if not config.is_file():
        raise UsageError(
            f"no routes.yaml at {config}: pass --config FILE or --dir DIR (the diff log folder)"
        )
    directory, migration = _read_config(config, err)
    return _Settings(directory, migration)


def _hash_key_set() -> bool:
    from proxy.observe import HASH_KEY_ENV

    return bool(os.environ.get(HASH_KEY_ENV))


def _customer_hashes(keys: Sequence[str], migration: str | None) -> list[str]:
    from proxy.observe import HASH_KEY_ENV, CustomerHasher

    if not keys:
        return []
    out = [k for k in keys if k.startswith("sha256:")]
    raw = [k for k in keys if not k.startswith("sha256:")]
    if raw:
        if migration is None and not _hash_key_set():
            raise UsageError(
                f"--customer {raw[0]}: customer keys are hashed with {HASH_KEY_ENV}, else the "
                "migration name of routes.yaml; set one of them, or pass the sha256:... hash"
            )
        hasher = CustomerHasher(migration or "")
        out.extend(h for h in map(hasher, raw) if h is not None)
    return out


def _open_reader(directory: Path, filters: Filters, progress: _Progress | None) -> LogReader:
    if not directory.exists():
        raise UsageError(f"no diff log directory at {directory}")
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    try:
        return LogReader(directory, filters, on_progress=progress)
    except OSError as exc:
        raise UsageError(f"cannot read {directory}: {exc.strerror or exc}") from None


# --- progress ----------------------------------------------------------------------------------


class _Progress:
    """One self-overwriting line on a terminal's stderr while a large log is read."""

    def __init__(self, stream: TextIO, *, every: float = 0.2) -> None:
        self.stream = stream
        self.every = every
        self._last = 0.0
        self._shown = 0

    def __call__(self, reader: LogReader) -> None:
        now = time.monotonic()
        if reader.total_bytes < PROGRESS_ABOVE or now - self._last < self.every:
            return
        self._last = now
        done = min(reader.bytes_read, reader.total_bytes)
        text = (
            f"reading diff logs: {done / 1e6:,.0f} of {reader.total_bytes / 1e6:,.0f} MB "
            f"({done * 100 // max(1, reader.total_bytes)}%)"
        )
        self.stream.write("\r" + text.ljust(self._shown))
        self.stream.flush()
        self._shown = len(text)

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


def _progress_for(args: argparse.Namespace, err: TextIO) -> _Progress | None:
    if args.no_progress or not _isatty(err):
        return None
    return _Progress(err)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(args: argparse.Namespace, out: TextIO) -> int:
    if args.width:
        return int(args.width)
    if _isatty(out):
        return max(60, shutil.get_terminal_size((80, 24)).columns)
    return 80


def _use_color(args: argparse.Namespace, out: TextIO) -> bool:
    return not args.no_color and not os.environ.get("NO_COLOR") and _isatty(out)


def _unreadable_note(reader: LogReader) -> str:
    bad = reader.unreadable
    note = (
        f"{reader.lines:,} lines read from {len(reader.files)} file(s); "
        f"{bad:,} {'line' if bad == 1 else 'lines'} could not be read (skipped)"
    )
    if reader.missing_files:
        note += f"; {reader.missing_files} file(s) vanished while reading (rotated away)"
    return note


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


# --- cutover diff ------------------------------------------------------------------------------


def summary_command(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        raw_keys = any(not c.startswith("sha256:") for c in args.customer)
        settings = _settings(args, err, need_migration=raw_keys and not _hash_key_set())
        filters = Filters.parse(
            routes=args.route,
            channels=args.channel,
            cohorts=args.cohort,
            kinds=args.kind,
            results=args.result,
            since=args.since,
            until=args.until,
            statuses=args.status,
            paths=args.path,
            customers=_customer_hashes(args.customer, settings.migration),
            request_ids=args.request_id,
        )
        progress = _progress_for(args, err)
        reader = _open_reader(settings.directory, filters, progress)
    except (UsageError, ValueError) as exc:
        print(f"cutover diff: {exc}", file=err)
        return 2

    summary = Summary(top=args.top)
    try:
        summary.add_all(reader)
    finally:
        if progress is not None:
            progress.clear()
    report = summary.report()
    meta: dict[str, Any] = {
        "directory": str(settings.directory),
        "files": len(reader.files),
        "bytes": reader.total_bytes,
        "lines": reader.lines,
        "unreadable_lines": reader.unreadable,
        "missing_files": reader.missing_files,
        "filters": filters.describe(),
    }
    if args.json:
        out.write(_dumps({**meta, **report}) + "\n")
        return 0
    width = _width(args, out)
    head = [f"Diff log: {settings.directory} ({_size(reader.total_bytes)})"]
    if meta["filters"]:
        head.append("Filters: " + _describe_filters(meta["filters"]))
    head.append(_unreadable_note(reader))
    if not reader.files:
        head.append("No diff log files (diffs-*.jsonl) in this directory yet.")
    out.write("\n".join(head) + "\n\n" + render_text(report, width=width) + "\n")
    return 0


def _size(count: int) -> str:
    if count < 1000:
        return f"{count} bytes"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"  # pragma: no cover


def _describe_filters(filters: Mapping[str, Any]) -> str:
    parts = []
    for name, value in filters.items():
        text = ", ".join(value) if isinstance(value, list) else str(value)
        parts.append(f"{name}={text}")
    return "; ".join(parts)


# --- cutover diff show -------------------------------------------------------------------------


def show_command(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        settings = _settings(args, err, need_migration=False)
        progress = _progress_for(args, err)
        reader = _open_reader(
            settings.directory, Filters(request_ids=frozenset({args.request_id})), progress
        )
    except UsageError as exc:
        print(f"cutover diff: {exc}", file=err)
        return 2
    try:
        records = list(reader)
    finally:
        if progress is not None:
            progress.clear()
    if args.json:
        out.write(
            _dumps(
                {
                    "request_id": args.request_id,
                    "directory": str(settings.directory),
                    "found": len(records),
                    "records": records,
                    "lines": reader.lines,
                    "unreadable_lines": reader.unreadable,
                }
            )
            + "\n"
        )
    else:
        width = _width(args, out)
        color = _use_color(args, out)
        blocks = [render_exchange(record, width=width, color=color) for record in records]
        if len(records) > 1:
            blocks.insert(0, f"{len(records)} records for request {args.request_id}:")
        text = ("\n\n" + "-" * width + "\n\n").join(blocks)
        if text:
            out.write(text + "\n\n")
        out.write(_unreadable_note(reader) + "\n")
    if not records:
        print(
            f"cutover diff: no exchange with request id {args.request_id} in "
            f"{settings.directory} ({reader.records:,} records searched)",
            file=err,
        )
        return 1
    return 0


# --- one exchange, side by side ----------------------------------------------------------------

_MARK: Final = {"changed": "!", "type": "!", "missing": "-", "extra": "+", "noise": "~"}
_COLOR: Final = {"!": "\x1b[33m", "-": "\x1b[31m", "+": "\x1b[32m", "~": "\x1b[2m"}
_BOLD: Final = "\x1b[1m"
_RESET: Final = "\x1b[0m"
_ABSENT: Final = "(absent)"


class _Nothing:
    """A side that has no value at a place (as opposed to a JSON null)."""

    __slots__ = ()


_NOTHING: Final = _Nothing()

_Concrete = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class _Row:
    path: _Concrete
    left: str | None
    right: str | None
    whole: bool = False  # part of a value shown whole (one side only, or two different shapes)


def _label(key: str | int | None) -> str:
    return "" if key is None or isinstance(key, int) else orjson.dumps(key).decode() + ": "


def _scalar(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def _pretty(value: Any, depth: int, key: str | int | None, comma: bool) -> list[str]:
    """One value pretty-printed as JSON lines, indented two spaces per level."""
    pad = "  " * depth
    tail = "," if comma else ""
    label = _label(key)
    if isinstance(value, dict) and value:
        lines = [f"{pad}{label}{{"]
        items = list(value.items())
        for position, (child_key, child) in enumerate(items):
            lines += _pretty(child, depth + 1, str(child_key), position < len(items) - 1)
        return [*lines, f"{pad}}}{tail}"]
    if isinstance(value, list) and value:
        lines = [f"{pad}{label}["]
        for position, child in enumerate(value):
            lines += _pretty(child, depth + 1, position, position < len(value) - 1)
        return [*lines, f"{pad}]{tail}"]
    return [f"{pad}{label}{_scalar(value)}{tail}"]


def _union_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Old's keys in order, each key only new has placed after the key it follows in new."""
    keys = list(old)
    known = set(keys)
    previous: str | None = None
    for key in new:
        if key not in known:
            at = keys.index(previous) + 1 if previous is not None else 0
            keys.insert(at, key)
            known.add(key)
        previous = key
    return keys


def _align(
    old: Any,
    new: Any,
    path: _Concrete,
    depth: int,
    key: str | int | None,
    old_comma: bool,
    new_comma: bool,
    out: list[_Row],
) -> None:
    """Rows for one place in both documents; containers both sides share are walked together."""
    pad = "  " * depth
    label = _label(key)
    both = old is not _NOTHING and new is not _NOTHING
    if both and isinstance(old, dict) and isinstance(new, dict) and old and new:
        out.append(_Row(path, f"{pad}{label}{{", f"{pad}{label}{{"))
        keys = _union_keys(old, new)
        old_last = next((k for k in reversed(keys) if k in old), None)
        new_last = next((k for k in reversed(keys) if k in new), None)
        for child in keys:
            _align(
                old.get(child, _NOTHING),
                new.get(child, _NOTHING),
                (*path, child),
                depth + 1,
                child,
                child != old_last,
                child != new_last,
                out,
            )
        out.append(
            _Row(path, f"{pad}}}{',' if old_comma else ''}", f"{pad}}}{',' if new_comma else ''}")
        )
        return
    if both and isinstance(old, list) and isinstance(new, list) and old and new:
        out.append(_Row(path, f"{pad}{label}[", f"{pad}{label}["))
        for index in range(max(len(old), len(new))):
            _align(
                old[index] if index < len(old) else _NOTHING,
                new[index] if index < len(new) else _NOTHING,
                (*path, index),
                depth + 1,
                index,
                index < len(old) - 1,
                index < len(new) - 1,
                out,
            )
        out.append(
            _Row(path, f"{pad}]{',' if old_comma else ''}", f"{pad}]{',' if new_comma else ''}")
        )
        return
    left = [] if old is _NOTHING else _pretty(old, depth, key, old_comma)
    right = [] if new is _NOTHING else _pretty(new, depth, key, new_comma)
    out.extend(_Row(path, a, b, True) for a, b in zip_longest(left, right))


def _text_rows(old: str, new: str) -> Iterator[tuple[str, str | None, str | None]]:
    """Two text bodies line by line; lines that differ are marked."""
    for a, b in zip_longest(old.splitlines(), new.splitlines()):
        yield ("!" if a != b else " ", a, b)


def _parse_path(text: str) -> _Concrete | None:
    try:
        parsed = jsonpath.parse(text)
    except PathError:
        return None
    if not jsonpath.is_concrete(parsed):
        return None
    return parsed  # type: ignore[return-value]  # concrete: only str and int segments


def _marks(record: Mapping[str, Any]) -> list[tuple[_Concrete, str]]:
    """(path, marker) of every JSON difference and noise entry, deepest paths first."""
    found: list[tuple[_Concrete, str]] = []
    for source, noise in (("differences", False), ("noise", True)):
        for entry in record.get(source) or ():
            path = _parse_path(str(entry.get("path", "")))
            if path is None:
                continue
            found.append((path, "~" if noise else _MARK.get(str(entry.get("kind")), "!")))
    found.sort(key=lambda item: -len(item[0]))
    return found


def _mark_for(row: _Row, marks: list[tuple[_Concrete, str]]) -> str:
    """The mark of the deepest difference at or above the row's place; for a value shown
    whole, also of one inside it (a record missing from a list may be reported by its field)."""
    path = row.path
    for place, mark in marks:
        if path[: len(place)] == place:
            return mark
    if row.whole:
        for place, mark in reversed(marks):
            if place[: len(path)] == path:
                return mark
    return " "


def _cell(text: str | None, width: int) -> str:
    if text is None:
        return " " * width
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width)


def _paint(line: str, mark: str, color: bool) -> str:
    if not color or mark == " ":
        return line
    return f"{_COLOR[mark]}{line}{_RESET}"


def _value(entry: Mapping[str, Any], side: str, width: int) -> str:
    kind = entry.get("kind")
    if (kind == "missing" and side == "new") or (kind == "extra" and side == "old"):
        return _ABSENT
    text = _scalar(entry.get(side))
    return text if len(text) <= width else text[: width - 1] + "…"


def _header(record: Mapping[str, Any]) -> list[str]:
    def side_values(field: str, unit: str = "") -> str:
        values = record.get(field)
        if not isinstance(values, Mapping):
            return "-"
        parts = []
        for side in ("old", "new"):
            value = values.get(side)
            text = "-" if value is None else f"{value}{unit}"
            parts.append(f"{side} {text}")
        return "   ".join(parts)

    query = record.get("query")
    target = f"{record.get('method', '?')} {record.get('path', '?')}"
    if query:
        target += f"?{query}"
    differences = record.get("differences") or []
    noise = record.get("noise") or []
    result = str(record.get("result"))
    if record.get("mode"):
        result += f" (compared as {record['mode']})"
    if result.startswith(("mismatch", "match")):
        result += f": {len(differences)} difference(s), {len(noise)} noise"
    rows = [
        ("request", f"{record.get('request_id')}  ({record.get('kind', 'shadow')})"),
        ("time", str(record.get("ts"))),
        ("route", str(record.get("route"))),
        ("channel", str(record.get("channel") or "-")),
        ("cohort", str(record.get("cohort") or "-")),
        ("customer", str(record.get("customer") or "-")),
        ("call", target),
        ("primary", str(record.get("primary") or "-")),
        ("status", side_values("status")),
        ("latency", side_values("latency_ms", " ms")),
        ("result", result),
    ]
    error = record.get("error")
    if isinstance(error, Mapping):
        rows.append(("error", f"{error.get('side', '?')} side: {error.get('kind', 'unknown')}"))
    return [f"{name:<9} {value}" for name, value in rows]


def why_no_bodies(record: Mapping[str, Any]) -> str:
    if record.get("result") == "error":
        error = record.get("error")
        side = error.get("side") if isinstance(error, Mapping) else None
        return f"No bodies: the {side or 'secondary'} platform failed, so nothing was compared."
    if record.get("mode") == "hash":
        return (
            "No bodies: they were too large to keep and were compared by hash; "
            "the differences are all there is."
        )
    return (
        "No bodies in this record (they are left out when larger than the size kept for "
        "display); the differences below are all there is."
    )


def exchange_rows(
    record: Mapping[str, Any],
) -> list[tuple[str, str | None, str | None, str | None]] | None:
    """The record's two bodies lined up by path: (mark, old line, new line, JSON path) per row,
    or None when it has no bodies. Marks as in `render_exchange`; the path is None for text
    bodies. Shared by `cutover diff show` and the operator console."""
    bodies = record.get("bodies")
    old_body = bodies.get("old", _NOTHING) if isinstance(bodies, Mapping) else _NOTHING
    new_body = bodies.get("new", _NOTHING) if isinstance(bodies, Mapping) else _NOTHING
    if old_body is _NOTHING and new_body is _NOTHING:
        return None
    if isinstance(old_body, str) and isinstance(new_body, str):
        return [(mark, a, b, None) for mark, a, b in _text_rows(old_body, new_body)]
    aligned: list[_Row] = []
    _align(old_body, new_body, (), 0, None, False, False, aligned)
    marks = _marks(record)
    return [
        (_mark_for(row, marks), row.left, row.right, jsonpath.format_path(row.path))
        for row in aligned
    ]


def render_exchange(record: Mapping[str, Any], *, width: int = 80, color: bool = False) -> str:
    """One diff record for a person: header, old | new aligned by path, then the differences.

    Lines at differing paths carry a gutter marker (`!` changed, `-` only in old, `+` only in
    new, `~` noise), in colour too when `color`. Redacted values ("***") are shown as they are.
    """
    width = max(40, width)
    out = _header(record)
    column = (width - 5) // 2
    out.append("")
    rows = exchange_rows(record)
    if rows is None:
        out.append(why_no_bodies(record))
    else:
        primary = record.get("primary")
        titles = [f"{side}{' (primary)' if side == primary else ''}" for side in ("old", "new")]
        heading = f"  {_cell(titles[0], column)} | {titles[1]}"
        out.append(f"{_BOLD}{heading}{_RESET}" if color else heading)
        for mark, left, right, _path in rows:
            line = f"{mark} {_cell(left, column)} | {_cell(right, column)}".rstrip()
            out.append(_paint(line, mark, color))

    value_width = max(20, width - 12)
    for source, title in (
        ("differences", "Differences"),
        ("noise", "Noise (differs between two answers of the same platform; not a difference)"),
    ):
        entries = [e for e in record.get(source) or () if isinstance(e, Mapping)]
        if not entries:
            continue
        out.append("")
        out.append(f"{title} ({len(entries)}):" if source == "differences" else f"{title}:")
        for entry in entries:
            kind = str(entry.get("kind"))
            mark = "~" if source == "noise" else _MARK.get(kind, "!")
            out.append(_paint(f"{mark} {entry.get('path')}  ({kind})", mark, color))
            out.append(f"    old: {_value(entry, 'old', value_width)}")
            out.append(f"    new: {_value(entry, 'new', value_width)}")
    if record.get("result") == "mismatch" and not record.get("differences"):
        out += ["", "Mismatch without listed differences."]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m shadow.diffcli ...`: the command without the rest of `cutover`."""
    parser = argparse.ArgumentParser(prog="cutover")
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    add_diff_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
