"""The admin API: its own listener, a bearer token, JSON in and out.

Every change goes into routes.yaml (proxy/control/edit.py: only the changed lines) and is
applied through Control like any reload, so a restart keeps it and the file stays the one place
that says what happens. Every change is an audit line: who, what, old -> new, why. The
description of this API ships with the package: proxy/control/openapi.yaml.

Security (PITFALLS.md): the token is compared with hmac.compare_digest; no cookies, so no CSRF;
mutations accept only application/json; /healthz and /readyz answer without a token (probes),
and so do the operator console's static files (GET / and /console/*: they hold no data; the page
asks for the token and sends it with every API call). The console and the read-only endpoints it
reads are in proxy/control/console.py.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
import structlog
from aiohttp import web

from proxy.config.summary import weights_grid
from proxy.control.audit import AuditLog
from proxy.control.changes import scope_text
from proxy.control.edit import EditError, add_rollback, remove_rollback, set_weight
from proxy.control.live import Applied, Control
from proxy.telemetry import Telemetry

log = structlog.get_logger("cutover.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CONSOLE_PREFIX = "/console"
MAX_BODY = 64 * 1024
OUTBOX_WAIT_MAX = 300.0

ADMIN: web.AppKey[AdminContext] = web.AppKey("admin")


class AdminContext:
    """What the admin API reads and changes; `state_parts` adds the other parts' state."""

    def __init__(
        self,
        control: Control,
        token: str | None,
        *,
        state_parts: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        outbox_to: Callable[[str], Awaitable[int | None]] | None = None,
        metrics: Callable[[], bytes] | None = None,
        advance: Callable[..., Awaitable[dict[str, Any]]] | None = None,
        telemetry: Telemetry | None = None,
        fleet_key: bytes | None = None,
    ) -> None:
        self.control = control
        self.token = token.encode() if token else None
        self.state_parts = state_parts
        self.outbox_to = outbox_to
        self.metrics = metrics
        self.advance = advance
        self.telemetry = telemetry
        self.fleet_key = fleet_key
        self.ready = False
        self.lock = asyncio.Lock()  # one file edit at a time
        self.audit = AuditLog(control.state_dir / f"audit-{control.instance}.jsonl")
        control.on_event(self.audit.on_event)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def _problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    body = {
        "type": f"urn:cutover:problem:admin-{status}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/problem+json"
    )


def _public(request: web.Request) -> bool:
    """The probes, and the console's page and scripts (no data in them)."""
    if request.path in OPEN_PATHS:
        return True
    path = request.path
    return request.method in {"GET", "HEAD"} and (
        path in {"/", CONSOLE_PREFIX} or path.startswith(CONSOLE_PREFIX + "/")
    )


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token on everything but the probes and the console's files; JSON bodies only for
    changes."""
    context = request.app[ADMIN]
    if context.token is not None and not _public(request):
        offered = request.headers.get("Authorization", "")
        scheme, _, secret = offered.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(secret.encode(), context.token):
            log.warning("admin_unauthorized", path=request.path, peer=request.remote)
            response = _problem(
                401, "Unauthorized", "a valid 'Authorization: Bearer <token>' is required"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="cutover"'
            return response
    if (
        request.method in {"POST", "PUT", "PATCH", "DELETE"}
        and request.content_type != "application/json"
    ):
        return _problem(415, "Unsupported Media Type", "changes are sent as application/json")
    return await handler(request)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise _Bad("the body is not JSON") from None
    if not isinstance(data, dict):
        raise _Bad("the body is a JSON object")
    return data


class _Bad(Exception):
    """A request the admin API refuses with 400 and this message."""


def _text(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _Bad(f"{name} is required")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 500:
        raise _Bad(f"{name} is a non-empty string (at most 500 characters)")
    return value.strip()


def _who(request: web.Request, body: dict[str, Any]) -> str:
    return (
        _text(body.get("by"), "by") or request.headers.get("X-Cutover-Operator") or "admin-api"
    )[:100]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- handlers ----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "instance": request.app[ADMIN].control.instance})


async def readyz(request: web.Request) -> web.Response:
    context = request.app[ADMIN]
    if not context.ready:
        return _json({"status": "not ready"}, status=503)
    return _json({"status": "ready", "version": context.control.table.version})


async def state(request: web.Request) -> web.Response:
    context = request.app[ADMIN]
    control = context.control
    table = control.table
    data = control.status()
    data["source"] = str(control.path) if control.path else None
    data["rollback"] = {
        "file": [scope.model_dump(exclude_none=True) for scope in table.spec.rollback]
        + [{"route": r.name} for r in table.routes if r.spec.rollback],
        "fleet": {"seq": control.fleet.seq, "scopes": list(control.fleet.scopes)},
    }
    data["routes"] = weights_grid(table, control.tables.overlay)
    data["channels"] = list(table.channels)
    data["cohorts"] = list(table.cohort_names)
    if context.state_parts is not None:
        data.update(await context.state_parts())
    return _json(data)


async def _change(
    request: web.Request, what: dict[str, Any], edit: Callable[[str], str], reason: str, by: str
) -> web.Response:
    """Edit routes.yaml (when it is what runs), apply it, and say so in the audit log."""
    context = request.app[ADMIN]
    control = context.control
    audit = {"by": by, "action": what["action"], "scope": scope_text(what), "reason": reason}
    async with context.lock:
        if control.path is None:
            return _problem(409, "Conflict", "this instance has no routes.yaml to write to")
        current = control.path.read_text()
        if current != control.table.text:
            return _problem(
                409,
                "Conflict",
                "routes.yaml on disk differs from the configuration in force; "
                "fix or reload it first",
                last_reload_error=control.last_error,
            )
        try:
            new = edit(current)
        except EditError as exc:
            raise _Bad(str(exc)) from None
        before = control.table.version
        applied: Applied = control.write_and_apply(new.encode(), source=f"admin:{by}")
    if not applied.ok:
        context.audit.record(**audit, result="refused", detail={"errors": list(applied.errors)})
        return _problem(
            422,
            "Change refused",
            "the change would make routes.yaml invalid",
            errors=list(applied.errors),
        )
    detail = {k: v for k, v in what.items() if k not in {"action", "route", "channel", "cohort"}}
    context.audit.record(
        **audit,
        result="applied" if applied.changed else "unchanged",
        detail={**detail, "version_before": before, "version_after": applied.version},
    )
    log.warning(
        "admin_change",
        by=by,
        reason=reason,
        change=what,
        version_before=before,
        version_after=applied.version,
    )
    return _json(
        {"ok": True, "version": applied.version, "changed": applied.changed, "change": what}
    )


async def put_weight(request: web.Request) -> web.Response:
    body = await _body(request)
    route = request.match_info["route"]
    percent = body.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise _Bad("percent is a number 0-100")
    channel = _text(body.get("channel"), "channel")
    cohort = _text(body.get("cohort"), "cohort")
    reason = _text(body.get("reason"), "reason", required=True)
    assert reason is not None
    table = request.app[ADMIN].control.table
    spec = table.route(route)
    if spec is None:
        return _problem(404, "Not Found", f"no route named {route!r}")
    if channel is not None and channel not in table.channel_set:
        raise _Bad(f"unknown channel {channel!r}")
    if cohort is not None and cohort not in table.cohort_names:
        raise _Bad(f"unknown cohort {cohort!r}")
    before = {
        f"{ch}/{co}": spec.weight_bp(ch, co) / 100
        for ch in ([channel] if channel else table.channels)
        for co in ([cohort] if cohort else table.cohort_names)
    }
    what = {
        "action": "weight",
        "route": route,
        "channel": channel,
        "cohort": cohort,
        "percent": percent,
        "before": before,
    }
    return await _change(
        request,
        what,
        lambda text: set_weight(text, route, float(percent), channel=channel, cohort=cohort),
        reason,
        _who(request, body),
    )


async def _outbox_report(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """A rollback to old is complete once what was written on new has reached old."""
    context = request.app[ADMIN]
    if context.outbox_to is None:
        return {"outbox_to_old": None, "drained": True}
    wait = body.get("wait", False)
    timeout = min(float(body.get("timeout", 30)), OUTBOX_WAIT_MAX) if wait else 0.0
    deadline = time.monotonic() + timeout
    while True:
        pending = await context.outbox_to("old")
        if not pending or time.monotonic() >= deadline:
            return {"outbox_to_old": pending, "drained": not pending}
        await asyncio.sleep(0.1)


async def rollback(request: web.Request) -> web.Response:
    body = await _body(request)
    scope = {k: _text(body.get(k), k) for k in ("route", "channel", "cohort")}
    reason = _text(body.get("reason"), "reason", required=True)
    assert reason is not None
    by = _who(request, body)
    response = await _change(
        request,
        {"action": "rollback", **scope},
        lambda text: add_rollback(text, **scope, reason=reason, by=by, at=_now()),
        reason,
        by,
    )
    if response.status != 200:
        return response
    result = orjson.loads(response.body)  # type: ignore[arg-type]
    result.update(await _outbox_report(request, body))
    return _json(result)


async def resume(request: web.Request) -> web.Response:
    body = await _body(request)
    scope = {k: _text(body.get(k), k) for k in ("route", "channel", "cohort")}
    everything = body.get("all") is True or not any(scope.values())
    reason = _text(body.get("reason"), "reason", required=True)
    assert reason is not None
    lifted: list[int] = []

    def edit(text: str) -> str:
        new, count = remove_rollback(text, **scope, everything=everything)
        lifted.append(count)
        return new

    response = await _change(
        request, {"action": "resume", "all": everything, **scope}, edit, reason, _who(request, body)
    )
    if response.status == 200:
        result = orjson.loads(response.body)  # type: ignore[arg-type]
        result["lifted"] = lifted[0] if lifted else 0
        return _json(result)
    return response


async def reload(request: web.Request) -> web.Response:
    applied = request.app[ADMIN].control.reload("admin")
    if not applied.ok:
        return _problem(
            422,
            "Reload refused",
            "routes.yaml is not valid; the running table stays",
            errors=list(applied.errors),
        )
    return _json({"ok": True, "version": applied.version, "changed": applied.changed})


async def metrics(request: web.Request) -> web.Response:
    context = request.app[ADMIN]
    if context.metrics is None:
        return _problem(404, "Not Found", "no metrics in this process")
    return web.Response(
        body=context.metrics(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def advance(request: web.Request) -> web.Response:
    context = request.app[ADMIN]
    body = await _body(request)
    reason = _text(body.get("reason"), "reason", required=True)
    force = body.get("force") is True
    if context.advance is None:
        return _problem(404, "Not Found", "plans are not running in this process")
    by = _who(request, body)
    result = await context.advance(request.match_info["route"], by=by, reason=reason, force=force)
    if not result.get("ok"):  # an advance that happens is audited by its plan_advanced event
        context.audit.record(
            by=by,
            action="advance",
            scope=request.match_info["route"],
            reason=reason,
            result="refused",
            detail={"reasons": result.get("reasons", []), "forced": force},
        )
        return _problem(
            409, "Gates closed", "; ".join(result.get("reasons", [])), gates=result.get("gates")
        )
    log.warning(
        "admin_change",
        by=by,
        reason=reason,
        change={
            "action": "advance",
            "route": request.match_info["route"],
            "step": result["step"],
            "forced": force,
        },
    )
    return _json(result)


async def openapi(request: web.Request) -> web.Response:
    text = resources.files("proxy.control").joinpath("openapi.yaml").read_text()
    return web.Response(text=text, content_type="application/yaml")


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Bad as exc:
        return _problem(400, "Bad Request", str(exc))


def make_admin_app(context: AdminContext) -> web.Application:
    app = web.Application(middlewares=[guard, refusals], client_max_size=MAX_BODY)
    app[ADMIN] = context
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/state", state)
    app.router.add_put("/admin/routes/{route}/weights", put_weight)
    app.router.add_post("/admin/rollback", rollback)
    app.router.add_post("/admin/resume", resume)
    app.router.add_post("/admin/reload", reload)
    app.router.add_get("/admin/openapi.yaml", openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/routes/{route}/advance", advance)
    return app
