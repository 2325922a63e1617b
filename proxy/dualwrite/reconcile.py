"""`cutover reconcile`: are both platforms holding the same records?

Two passes over the platforms' own list endpoints (not through cutover), in bounded memory:
  1. every old record: its new id from the id map, that record fetched from new and compared
     with the route's compare rules; or reported missing on new / not in the id map;
  2. every new record: reported when the id map does not know it (only on new), or when its old
     twin was not seen in pass 1 (gone from old).
Lists are paged with `limit`/`offset` query parameters (the demo platforms' style).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from proxy.config import RouteTable, load_config
from proxy.config.spec import Side
from proxy.config.table import Route, Upstream
from proxy.dualwrite.ids import IdMap
from proxy.dualwrite.model import key_text
from proxy.dualwrite.store import StoreError, open_store
from proxy.translate import Translator, records_of
from shadow.compare import compare_docs
from shadow.redact import redact_difference

PAGE = 200
CONCURRENCY = 8


@dataclass
class Report:
    resource: str
    route: str
    checked: int = 0
    equal: int = 0
    different: list[dict[str, Any]] = field(default_factory=list)
    missing_on_new: list[Any] = field(default_factory=list)
    missing_on_old: list[Any] = field(default_factory=list)
    not_in_id_map_old: list[Any] = field(default_factory=list)
    only_on_new: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (
            self.different
            or self.missing_on_new
            or self.missing_on_old
            or self.not_in_id_map_old
            or self.only_on_new
            or self.errors
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "route": self.route,
            "checked": self.checked,
            "equal": self.equal,
            "different": self.different,
            "missing_on_new": self.missing_on_new,
            "missing_on_old": self.missing_on_old,
            "only_on_old_not_in_id_map": self.not_in_id_map_old,
            "only_on_new": self.only_on_new,
            "errors": self.errors,
            "clean": self.clean,
            "seconds": round(self.seconds, 2),
        }


class Progress:
    """One line on stderr, redrawn; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0

    def show(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled or time.monotonic() - self.last < 0.1:
            return
        self.last = time.monotonic()
        if total:
            width = 30
            filled = int(width * min(done / total, 1.0))
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r{label:<10} [{bar}] {done}/{total}")
        else:
            sys.stderr.write(f"\r{label:<10} {done}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")


class Reconciler:
    def __init__(
        self,
        table: RouteTable,
        route: Route,
        idmap: IdMap,
        session: aiohttp.ClientSession,
        progress: Progress,
    ) -> None:
        assert route.ids is not None
        self.table = table
        self.route = route
        self.rule = route.ids
        self.idmap = idmap
        self.translator = Translator(idmap)
        self.session = session
        self.progress = progress
        self.report = Report(route.ids.resource, route.name)

    def _headers(self, upstream: Upstream) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(upstream.headers)
        headers["X-Cutover-Mirror"] = "reconcile"
        return headers

    async def _get(self, side: Side, path: str) -> tuple[int, Any]:
        upstream = self.table.upstream(side, self.route.api)
        async with self.session.get(
            upstream.url + path,
            headers=self._headers(upstream),
            timeout=aiohttp.ClientTimeout(total=upstream.timeout * 3),
        ) as r:
            body = await r.read()
            return r.status, orjson.loads(body) if body and r.status < 300 else None

    async def pages(self, side: Side) -> AsyncIterator[tuple[list[Any], int | None]]:
        """The old-contract records of `side`, a page at a time, with the total when given."""
        offset = 0
        prefix = self.route.prefix if side == "old" else self.route.new_prefix
        while True:
            status, doc = await self._get(side, f"{prefix}?limit={PAGE}&offset={offset}")
            if status >= 300 or doc is None:
                self.report.errors.append(f"{side}: list answered {status} at offset {offset}")
                return
            total = doc.get("total") if side == "old" and isinstance(doc, dict) else None
            if side == "new" and self.route.contract is not None:
                doc = self.route.contract.body_to_old(doc, copy=False)
                total = doc.get("total") if isinstance(doc, dict) else None
            records = records_of(doc, self.route)
            if not records:
                return
            yield records, total if isinstance(total, int) else None
            offset += len(records)

    def _id(self, record: Any) -> Any:
        return self.translator.id_in_answer(self.route, record)

    async def run(self) -> Report:
        started = time.monotonic()
        seen_old: set[str] = set()
        limit = asyncio.Semaphore(CONCURRENCY)
        async for records, total in self.pages("old"):
            batch = [r for r in records if self._id(r) is not None]
            seen_old.update(key_text(orjson.dumps(self._id(r)).decode()) for r in batch)

            async def check(record: Any) -> None:
                async with limit:
                    await self._check(record)

            await asyncio.gather(*(check(r) for r in batch))
            self.progress.show("old", self.report.checked, total)
        async for records, total in self.pages("new"):
            for record in records:
                new_id = self._id(record)
                if new_id is None:
                    continue
                text = new_id if isinstance(new_id, str) else orjson.dumps(new_id).decode()
                entry = await self.idmap.lookup(self.rule.resource, "new", text)
                if entry is None or entry.old is None:
                    self.report.only_on_new.append(new_id)
                elif key_text(entry.old) not in seen_old:
                    self.report.missing_on_old.append(entry.value_on("old"))
            self.progress.show("new", len(self.report.only_on_new), total)
        self.progress.done()
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _check(self, record: dict[str, Any]) -> None:
        old_id = self._id(record)
        self.report.checked += 1
        text = old_id if isinstance(old_id, str) else orjson.dumps(old_id).decode()
        entry = await self.idmap.lookup(self.rule.resource, "old", text)
        if entry is None or entry.new is None:
            self.report.not_in_id_map_old.append(old_id)
            return
        path = (
            self.route.new_prefix + self.rule.prefix[len(self.route.prefix) :] + key_text(entry.new)
        )
        try:
            status, doc = await self._get("new", path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.report.errors.append(f"new: {path}: {type(exc).__name__}")
            return
        if status == 404:
            self.report.missing_on_new.append(old_id)
            return
        if status >= 300 or doc is None:
            self.report.errors.append(f"new: {path} answered {status}")
            return
        doc = await self.translator.answer_doc(self.route, "new", doc)
        comparison = compare_docs(record, doc, self.route.rules)
        if comparison.match:
            self.report.equal += 1
        else:
            self.report.different.append(
                {
                    "old_id": old_id,
                    "new_id": entry.value_on("new"),
                    "paths": [
                        redact_difference(d, self.route.rules).path for d in comparison.differences
                    ],
                }
            )


def render(report: Report) -> str:
    lines = [
        f"reconcile {report.resource} (route {report.route}): {report.checked} old records "
        f"checked in {report.seconds:.1f}s",
        f"  equal on both                {report.equal}",
        f"  different                    {len(report.different)}",
        f"  missing on new               {len(report.missing_on_new)}",
        f"  on old, not in the id map    {len(report.not_in_id_map_old)}",
        f"  only on new                  {len(report.only_on_new)}",
        f"  in the id map, gone from old {len(report.missing_on_old)}",
    ]
    lines.extend(
        f"    {item['old_id']} / {item['new_id']}: {', '.join(item['paths'])}"
        for item in report.different[:20]
    )
    for label, ids in (
        ("missing on new", report.missing_on_new),
        ("only on new", report.only_on_new),
        ("not in the id map", report.not_in_id_map_old),
    ):
        if ids:
            shown = ", ".join(str(i) for i in ids[:20])
            lines.append(f"  {label}: {shown}{' …' if len(ids) > 20 else ''}")
    lines.extend(f"  error: {error}" for error in report.errors[:10])
    lines.append("  result: " + ("both platforms agree" if report.clean else "differences found"))
    return "\n".join(lines)


async def reconcile(table: RouteTable, resource: str, *, progress: bool) -> Report:
    route = next(
        (r for r in table.routes if r.ids is not None and r.ids.resource == resource), None
    )
    if route is None:
        raise ValueError(f"no route in {table.source} has ids.resource {resource!r}")
    store = open_store(
        table.spec.store,
        table.base_dir,
        partitions=table.spec.outbox.partitions,
        migration=table.migration,
    )
    await store.open()
    try:
        async with aiohttp.ClientSession(auto_decompress=True) as session:
            return await Reconciler(table, route, IdMap(store), session, Progress(progress)).run()
    finally:
        await store.close()


def command(args: argparse.Namespace) -> int:
    table = load_config(args.config)
    try:
        report = asyncio.run(reconcile(table, args.resource, progress=not args.json))
    except (ValueError, StoreError) as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(report))
    return 0 if report.clean else 3


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reconcile", help="compare both platforms' records through the id map")
    p.add_argument("--resource", required=True, help="e.g. contact (a route's ids.resource)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=command)
