"""The operator console: one page served by the admin listener, and the read-only endpoints it
reads besides /admin/state (docs/console.md).

  GET /, /console/           the page and its scripts (proxy/static/console): no token, no data
  GET /admin/figures         live charts: per route, rates, match rate and p95 old vs new
  GET /admin/diffs           the latest diff records, filtered; /admin/diffs/{request_id}: one
                             exchange with its bodies lined up by path
  GET /admin/changes         the audit list (proxy.control.audit)
  GET /admin/fleet           the instances and whether they enforce the fleet's configuration

The page talks only to this API, with the token the operator pastes (kept in sessionStorage;
the API takes no cookies, so there is nothing to forge). Every response carries a strict
Content-Security-Policy (scripts from this origin only, no inline code), so a value from a diff
record, which comes from an upstream, can never run as code; the page also only ever writes text.
Diff records are shown as the diff log holds them: redacted values stay "***".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from proxy.control import fleetctl
from proxy.control.admin import ADMIN, AdminContext, _Bad, _json, _problem, make_admin_app
from proxy.telemetry import Slot
from shadow.diffcli import exchange_rows, why_no_bodies
from shadow.logread import Filters, latest_records

STATIC: Final = ("static", "console")
TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
RECENT_S: Final = 30.0
WINDOW_MAX_S: Final = 3600.0
DIFFS_LIMIT_MAX: Final = 200
DIFFS_MAX_BYTES: Final = 16 << 20  # a scan of the newest 16 MB of logs: well under a second
FLEET_CACHE_S: Final = 2.0
FLEET_TIMEOUT_S: Final = 2.0

#: what stays in a diff list item; the bodies come with one exchange only
LIST_FIELDS: Final = (
    "ts",
    "kind",
    "request_id",
    "route",
    "channel",
    "cohort",
    "method",
    "path",
    "query",
    "primary",
    "status",
    "latency_ms",
    "result",
    "mode",
    "error",
)


def load_static() -> dict[str, tuple[bytes, str]]:
    """The console's files, read once: name -> (content, content type)."""
    folder = resources.files("proxy").joinpath(*STATIC)
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        kind = TYPES.get(Path(entry.name).suffix)
        if kind is not None and entry.is_file():
            files[entry.name] = (entry.read_bytes(), kind)
    return files


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every admin response: the page's CSP and friends; API answers are never cached."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")


# --- the page ----------------------------------------------------------------------------------


def _files(request: web.Request) -> dict[str, tuple[bytes, str]]:
    return request.app[FILES]


FILES: web.AppKey[dict[str, tuple[bytes, str]]] = web.AppKey("console_files")
DIFF_SCAN: web.AppKey[asyncio.Lock] = web.AppKey("console_diff_scan")
FLEET_CACHE: web.AppKey[dict[str, Any]] = web.AppKey("console_fleet_cache")


async def to_console(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


async def page_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    found = _files(request).get(name)
    if found is None:
        return _problem(404, "Not Found", f"the console has no file {name!r}")
    body, kind = found
    response = web.Response(body=body, headers={"Content-Type": kind})
    response.headers["Cache-Control"] = "no-cache"
    return response


# --- live figures ------------------------------------------------------------------------------


def _float(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise _Bad(f"{name} is a number") from None
    return min(max(value, low), high)


def _merged(slots: Iterable[Slot], start: float = 0.0) -> Slot:
    total = Slot(start)
    for slot in slots:
        total.merge(slot)
    return total


async def figures(request: web.Request) -> web.Response:
    """Per route: a series of slots (rates old/new, match rate, p95 old/new) over `window`
    seconds, the last RECENT_S seconds summed up, and the same per cell for the grid."""
    context = request.app[ADMIN]
    telemetry = context.telemetry
    if telemetry is None:
        return _problem(404, "Not Found", "no telemetry in this process")
    window = _float(request, "window", 300.0, 10.0, WINDOW_MAX_S)
    table = context.control.table
    now, cells = telemetry.timeline(window)
    step = telemetry.slot_s
    current = now - (now % step)
    starts = [current - i * step for i in range(int(window // step), -1, -1)]
    recent_from = current - (RECENT_S // step - 1) * step
    recent_span = now - recent_from
    wall = time.time() - now
    routes: dict[str, Any] = {}
    for route in table.routes:
        mine = {cell: slots for cell, slots in cells.items() if cell[0] == route.name}
        by_start: dict[float, list[Slot]] = {}
        for slots in mine.values():
            for slot in slots:
                by_start.setdefault(slot.start, []).append(slot)
        series: dict[str, list[Any]] = {
            k: []
            for k in ("t", "old", "new", "errors_new", "match_rate", "p95_old_ms", "p95_new_ms")
        }
        for start in starts:
            span = now - start if start == current else step
            point = _merged(by_start.get(start, ()), start)
            shown = point.figures(span).as_dict()
            series["t"].append(round(start + wall, 3))
            series["old"].append(round(point.requests["old"] / max(span, 0.5), 3))
            series["new"].append(round(point.requests["new"] / max(span, 0.5), 3))
            for name in ("errors_new", "match_rate", "p95_old_ms", "p95_new_ms"):
                value = shown["mismatch_rate"] if name == "match_rate" else shown[name]
                if name == "match_rate" and value is not None:
                    value = round(1 - float(value), 4)
                series[name].append(value)
        grid: dict[str, dict[str, Any]] = {}
        for (_, channel, cohort), slots in mine.items():
            summed = _merged(s for s in slots if s.start >= recent_from)
            if sum(summed.requests.values()) or summed.compared:
                grid.setdefault(channel, {})[cohort] = _recent(summed, recent_span)
        recent = _merged(s for slots in mine.values() for s in slots if s.start >= recent_from)
        routes[route.name] = {
            "series": series,
            "recent": _recent(recent, recent_span),
            "cells": grid,
        }
    return _json(
        {
            "at": round(now + wall, 3),
            "slot_s": step,
            "window_s": window,
            "recent_s": round(recent_span, 1),
            "routes": routes,
        }
    )


def _recent(slot: Slot, span: float) -> dict[str, Any]:
    shown = slot.figures(span).as_dict()
    requests = int(shown["requests"] or 0)
    old, new = slot.requests["old"], slot.requests["new"]
    mismatch = shown["mismatch_rate"]
    return {
        "requests": requests,
        "rate_per_s": round(requests / max(span, 0.5), 2),
        "old": old,
        "new": new,
        "share_new": round(new / (old + new), 4) if old + new else None,
        "compared": shown["compared"],
        "match_rate": None if mismatch is None else round(1 - float(mismatch), 4),
        "errors_new": shown["errors_new"],
        "error_rate": shown["error_rate"],
        "p95_old_ms": shown["p95_old_ms"],
        "p95_new_ms": shown["p95_new_ms"],
    }


# --- diffs -------------------------------------------------------------------------------------


def _diff_dir(context: AdminContext) -> Path:
    table = context.control.table
    return table.resolve(table.spec.diff_log.dir)


def _filters(request: web.Request) -> Filters:
    query = request.query

    def values(name: str) -> list[str]:
        return [v.strip() for v in query.getall(name, []) if v.strip()]

    since = query.get("since", "").strip() or None
    try:
        return Filters.parse(
            routes=values("route"),
            channels=values("channel"),
            cohorts=values("cohort"),
            kinds=values("kind"),
            results=values("result"),
            statuses=values("status"),
            paths=values("path"),
            request_ids=values("request_id"),
            since=since,
        )
    except ValueError as exc:
        raise _Bad(str(exc)) from None


async def _scan(request: web.Request, filters: Filters, limit: int) -> dict[str, Any]:
    """The newest records (in a thread: file reads must not stall the data path's loop), one
    scan at a time however many consoles are open."""
    directory = _diff_dir(request.app[ADMIN])
    if not directory.is_dir():
        return {"records": [], "bytes_read": 0, "complete": True, "unreadable": 0}
    async with request.app[DIFF_SCAN]:
        found = await asyncio.to_thread(
            latest_records, directory, filters, limit=limit, max_bytes=DIFFS_MAX_BYTES
        )
    return {
        "records": found.records,
        "bytes_read": found.bytes_read,
        "complete": found.complete,
        "unreadable": found.unreadable,
    }


async def diffs(request: web.Request) -> web.Response:
    """The latest records passing the filters (route, channel, cohort, path, result, kind,
    status, since, request_id: as `cutover diff` takes them), newest first, without bodies."""
    filters = _filters(request)
    limit = int(_float(request, "limit", 50, 1, DIFFS_LIMIT_MAX))
    scanned = await _scan(request, filters, limit)
    items = []
    for record in scanned.pop("records"):
        item = {k: record.get(k) for k in LIST_FIELDS}
        differences = record.get("differences") or []
        item["differences"] = len(differences)
        item["paths"] = [d.get("path") for d in differences[:5]]
        items.append(item)
    return _json(
        {"records": items, "filters": filters.describe(), "directory": "diff_log.dir", **scanned}
    )


async def diff_one(request: web.Request) -> web.Response:
    """Every record of one request id (a shadow read, a later verify), each with its two bodies
    lined up by path and the rows that differ marked."""
    request_id = request.match_info["request_id"]
    scanned = await _scan(request, Filters(request_ids=frozenset({request_id})), 10)
    records = scanned.pop("records")
    if not records:
        return _problem(
            404,
            "Not Found",
            f"no diff record with request id {request_id!r} in the newest "
            f"{scanned['bytes_read'] // 1024} KiB of the diff log",
        )
    shown = []
    for record in records:
        rows = exchange_rows(record)
        shown.append(
            {
                "record": record,
                "rows": None
                if rows is None
                else [{"mark": m, "old": a, "new": b, "path": p} for m, a, b, p in rows],
                "no_bodies": why_no_bodies(record) if rows is None else None,
            }
        )
    return _json({"request_id": request_id, "exchanges": shown, **scanned})


# --- audit and fleet ---------------------------------------------------------------------------


async def changes(request: web.Request) -> web.Response:
    limit = int(_float(request, "limit", 100, 1, 500))
    return _json({"entries": request.app[ADMIN].audit.recent(limit)})


def _this_instance(context: AdminContext) -> dict[str, Any]:
    control = context.control
    status = control.status()
    on_disk: str | None = None
    if control.path is not None:
        try:
            on_disk = control.path.read_text()
        except OSError:
            on_disk = None
    in_sync = control.path is None or on_disk == control.table.text
    return {
        **status,
        "status": "online",
        "source": str(control.path) if control.path else None,
        "file_in_sync": in_sync,
        "converged": in_sync and control.last_error is None,
    }


async def fleet(request: web.Request) -> web.Response:
    """With MQTT: what the broker holds (cached FLEET_CACHE_S). Without: this instance, which
    has converged when it enforces its routes.yaml as it is on disk."""
    context = request.app[ADMIN]
    table = context.control.table
    me = _this_instance(context)
    spec = table.spec.mqtt
    if spec is None:
        return _json(
            {"mode": "single", "converged": me["converged"], "self": me, "instances": [me]}
        )
    if context.fleet_key is None:
        return _json(
            {
                "mode": "fleet",
                "error": f"${spec.key_env} is not set: this instance runs on its routes.yaml alone",
                "converged": False,
                "self": me,
                "instances": [me],
            }
        )
    cache = request.app[FLEET_CACHE]
    if cache.get("at", 0.0) + FLEET_CACHE_S < time.monotonic():
        try:
            view = await fleetctl.read_retained(
                spec, table.migration, context.fleet_key, timeout=FLEET_TIMEOUT_S
            )
            cache["data"] = {"mode": "fleet", **fleetctl.convergence(view)}
        except fleetctl.FleetError as exc:
            cache["data"] = {
                "mode": "fleet",
                "error": str(exc),
                "converged": False,
                "instances": [],
            }
        cache["at"] = time.monotonic()
    return _json({**cache["data"], "self": me})


# --- the app -----------------------------------------------------------------------------------


def make_app(context: AdminContext) -> web.Application:
    """The admin API with the console on top."""
    app = make_admin_app(context)
    app[FILES] = load_static()
    app[DIFF_SCAN] = asyncio.Lock()
    app[FLEET_CACHE] = {}
    app.on_response_prepare.append(secure_headers)
    app.router.add_get("/", to_console)
    app.router.add_get("/console", to_console)
    app.router.add_get("/console/", page_file)
    app.router.add_get("/console/{name}", page_file)
    app.router.add_get("/admin/figures", figures)
    app.router.add_get("/admin/diffs", diffs)
    app.router.add_get("/admin/diffs/{request_id}", diff_one)
    app.router.add_get("/admin/changes", changes)
    app.router.add_get("/admin/fleet", fleet)
    return app
