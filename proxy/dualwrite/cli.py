"""`cutover outbox …` and `cutover idmap …`: operators' view of the store routes.yaml names.

They open the store directly (SQLite allows a second connection next to a running cutover;
Redis is shared by design), so they work whether or not cutover is running.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog

from proxy.config import RouteTable, load_config
from proxy.dualwrite.model import IdEntry, OutboxEntry, id_json
from proxy.dualwrite.store import Store, StoreError, open_store

log = structlog.get_logger("cutover.ops")
Command = Callable[[argparse.Namespace], int]


def _table(args: argparse.Namespace) -> RouteTable:
    return load_config(args.config, env=_LenientEnv())


class _LenientEnv(dict[str, str]):
    """Operators need the store, not the platforms' secrets: unset ${VAR}s read as ''."""

    def __init__(self) -> None:
        import os

        super().__init__(os.environ)

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def _with_store(work: Callable[[Store, RouteTable, argparse.Namespace], Awaitable[int]]) -> Command:
    def command(args: argparse.Namespace) -> int:
        table = _table(args)

        async def run() -> int:
            store = open_store(
                table.spec.store,
                table.base_dir,
                partitions=table.spec.outbox.partitions,
                migration=table.migration,
            )
            try:
                await store.open()
            except StoreError as exc:
                print(f"cutover: cannot open the store {table.spec.store}: {exc}", file=sys.stderr)
                return 1
            try:
                return await work(store, table, args)
            except StoreError as exc:
                print(f"cutover: store error: {exc}", file=sys.stderr)
                return 1
            finally:
                await store.close()

        return asyncio.run(run())

    return command


# --- outbox ------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


async def _status(store: Store, table: RouteTable, args: argparse.Namespace) -> int:
    stats = await store.stats()
    data = {
        "store": table.spec.store,
        "ready": stats.ready,
        "intents": stats.intents,
        "dead": stats.dead,
        "oldest_age_s": stats.oldest_age_s,
        "by_target": stats.by_target,
    }
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"outbox of {table.spec.store}")
    print(
        f"  waiting for the secondary   {stats.ready}"
        + (
            f"  ({', '.join(f'{k}: {v}' for k, v in sorted(stats.by_target.items()))})"
            if stats.by_target
            else ""
        )
    )
    print(f"  primary outcome unknown     {stats.intents}")
    print(f"  dead letters                {stats.dead}")
    print(f"  oldest entry                {_age(stats.oldest_age_s)}")
    return 0


def _entry_row(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "state": entry.state,
        "route": entry.route,
        "method": entry.method,
        "path": entry.path,
        "target": entry.target,
        "order_key": entry.order_key,
        "attempts": entry.attempts,
        "age_s": round(time.time() - entry.created, 1),
        "last_error": entry.last_error,
        "dead_reason": entry.dead_reason,
        "request_id": entry.request_id,
    }


def _print_entries(entries: list[OutboxEntry], as_json: bool, out: TextIO = sys.stdout) -> None:
    rows = [_entry_row(e) for e in entries]
    if as_json:
        out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not rows:
        out.write("(none)\n")
        return
    for row in rows:
        reason = row["dead_reason"] or row["last_error"] or ""
        out.write(
            f"{row['id']:>12}  {row['state']:<6} {row['method']:<6} {row['path']:<32} "
            f"-> {row['target']:<3}  tries {row['attempts']:<3} {_age(row['age_s']):>6}  "
            f"{reason}\n"
        )


async def _list(store: Store, table: RouteTable, args: argparse.Namespace) -> int:
    _print_entries(await store.entries(args.state, args.limit), args.json)
    return 0


async def _dead(store: Store, table: RouteTable, args: argparse.Namespace) -> int:
    _print_entries(await store.entries("dead", args.limit), args.json)
    return 0


async def _retry(store: Store, table: RouteTable, args: argparse.Namespace) -> int:
    if not args.ids and not args.all_dead:
        print("cutover: name dead letters to retry, or --all-dead", file=sys.stderr)
        return 2
    count = await store.revive(None if args.all_dead else args.ids)
    log.info("outbox_retry", count=count, ids=args.ids or "all-dead")
    print(f"{count} dead letter(s) queued again")
    return 0


async def _drop(store: Store, table: RouteTable, args: argparse.Namespace) -> int:
    count = await store.drop(args.ids)
    log.warning("outbox_drop", count=count, ids=args.ids, reason=args.reason)
    print(f"{count} entr{'y' if count == 1 else 'ies'} dropped ({args.reason})")
    return 0 if count else 1


# --- id map ------------------------------------------------------------------------------------


def _id_value(text: str) -> str:
    """CSV cells are text: an integer-looking id is taken as a JSON number, the rest as strings."""
    text = text.strip()
    return text if text.lstrip("-").isdigit() else id_json(text)


def read_pairs(path: Path, default_resource: str | None) -> Iterator[IdEntry]:
    """`resource,old,new` CSV rows (or `old,new` with --resource); a header row is skipped."""
    with path.open(newline="") as handle:
        for row in csv.reader(handle):
            if not row or row[0].startswith("#"):
                continue
            if [c.strip().lower() for c in row][-2:] == ["old", "new"]:
                continue
            if len(row) == 3:
                resource, old, new = row
            elif len(row) == 2 and default_resource:
                resource, (old, new) = default_resource, row
            else:
                raise ValueError(
                    f"{path}: expected resource,old,new (or old,new with --resource), got {row}"
                )
            yield IdEntry(resource.strip(), _id_value(old), _id_value(new), origin="old")


async def _import(store: Store, table: RouteTable, args: argparse.Namespace) -> int:
    try:
        pairs = list(read_pairs(Path(args.file), args.resource))
    except (OSError, ValueError) as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return 2
    for start in range(0, len(pairs), 5000):
        await store.map_put(pairs[start : start + 5000])
    print(f"{len(pairs)} id pair(s) imported into {table.spec.store}")
    return 0


async def _lookup(store: Store, table: RouteTable, args: argparse.Namespace) -> int:
    found = await store.map_lookup(args.resource, "old", args.id) or await store.map_lookup(
        args.resource, "new", args.id
    )
    if found is None:
        print(f"{args.resource} {args.id}: not in the id map", file=sys.stderr)
        return 1
    print(
        orjson.dumps(
            {
                "resource": found.resource,
                "old": found.value_on("old"),
                "new": found.value_on("new"),
                "origin": found.origin,
            }
        ).decode()
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = sub.add_parser(
        "outbox", help="the dual-write outbox: depth, dead letters, retry, drop"
    )
    osub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    p = osub.add_parser("status", help="depth, oldest entry, dead letters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_with_store(_status))
    p = osub.add_parser("list", help="entries, oldest first")
    p.add_argument("--state", choices=["ready", "intent", "dead"], default="ready")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_with_store(_list))
    p = osub.add_parser("dead-letters", help="writes the secondary refused, with the reason")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_with_store(_dead))
    p = osub.add_parser("retry", help="queue dead letters again (at the end of the order)")
    p.add_argument("ids", nargs="*")
    p.add_argument("--all-dead", action="store_true")
    p.set_defaults(func=_with_store(_retry))
    p = osub.add_parser("drop", help="remove entries for good (logged with the reason)")
    p.add_argument("ids", nargs="+")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_with_store(_drop))

    idmap = sub.add_parser("idmap", help="the id map: import pairs, look one up")
    isub = idmap.add_subparsers(dest="idmap_command", required=True, metavar="ACTION")
    p = isub.add_parser("import", help="load old/new id pairs (CSV: resource,old,new)")
    p.add_argument("file")
    p.add_argument("--resource", help="the resource when the CSV has two columns")
    p.set_defaults(func=_with_store(_import))
    p = isub.add_parser("lookup", help="one record's ids on both platforms")
    p.add_argument("resource")
    p.add_argument("id")
    p.set_defaults(func=_with_store(_lookup))
