"""`cutover shift|rollback|resume|status|publish|reload`: the operator's commands.

Each works against one instance's admin API (`--admin URL`, or the `admin.listen` of
routes.yaml) or against the whole fleet through the MQTT broker (`--fleet`, the default when
routes.yaml has an `mqtt` section). Exit codes: 0 done; 1 could not reach the instance or the
broker; 2 bad arguments or refused; 3 not done or not confirmed everywhere (an instance that
did not apply a rollback within --timeout, writes made on new still on their way to old, a plan
whose gates are closed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.config import ConfigError, RouteTable, load_config
from proxy.control.edit import EditError, set_weight

EXIT_UNREACHABLE = 1
EXIT_REFUSED = 2
EXIT_UNCONFIRMED = 3


class _LenientEnv(dict[str, str]):
    """Operators need the control endpoints, not the platforms' secrets."""

    def __init__(self) -> None:
        super().__init__(os.environ)

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


@dataclass
class Target:
    table: RouteTable | None
    admin_url: str | None
    token: str | None
    fleet: bool


def _target(args: argparse.Namespace) -> Target:
    table: RouteTable | None
    raw_admin: dict[str, Any] = {}
    try:
        table = load_config(args.config, env=_LenientEnv())
    except ConfigError:
        # a broken routes.yaml is exactly when an operator needs to reach the instance that
        # refused it: read just where its admin API listens
        raw_admin = _raw_admin(args.config)
        if not args.admin and not raw_admin:
            raise
        table = None
    token_env = (
        table.spec.admin.token_env if table else raw_admin.get("token_env")
    ) or "CUTOVER_ADMIN_TOKEN"
    token = os.environ.get(token_env)
    if getattr(args, "token_file", None):
        token = Path(args.token_file).read_text().strip()
    fleet = bool(args.fleet or (not args.admin and table is not None and table.spec.mqtt))
    admin_url = args.admin
    listen = table.spec.admin.listen if table is not None else raw_admin.get("listen")
    if admin_url is None and isinstance(listen, str):
        admin_url = "http://" + listen.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 - a client address
    return Target(table, admin_url, token, fleet)


def _raw_admin(path: str) -> dict[str, Any]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe").load(Path(path).read_text())
    except (OSError, YAMLError):
        return {}
    admin = doc.get("admin") if isinstance(doc, dict) else None
    return admin if isinstance(admin, dict) else {}


def _print(data: Any, as_json: bool, text: str) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if as_json else text)


def _operator(args: argparse.Namespace) -> str:
    return args.by or os.environ.get("CUTOVER_OPERATOR") or os.environ.get("USER") or "cli"


# --- one instance, through its admin API --------------------------------------------------------


async def _admin(
    target: Target, method: str, path: str, body: dict[str, Any] | None, timeout: float = 10.0
) -> tuple[int, Any]:
    assert target.admin_url is not None
    headers = {"X-Cutover-Operator": os.environ.get("USER", "cli")}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.request(method, target.admin_url + path, json=body, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


def _run_admin(
    target: Target, method: str, path: str, body: dict[str, Any] | None, timeout: float = 10.0
) -> tuple[int, Any] | None:
    try:
        return asyncio.run(_admin(target, method, path, body, timeout))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        print(f"cutover: cannot reach the admin API at {target.admin_url}: {exc}", file=sys.stderr)
        return None


def _refused(status: int, body: Any) -> int:
    detail = body.get("detail") if isinstance(body, dict) else body
    print(f"cutover: refused ({status}): {detail}", file=sys.stderr)
    for error in (body.get("errors") or [])[:20] if isinstance(body, dict) else []:
        print(f"  {error}", file=sys.stderr)
    return EXIT_REFUSED


# --- the commands ------------------------------------------------------------------------------


def shift(args: argparse.Namespace) -> int:
    target = _target(args)
    if target.fleet:
        return _fleet_edit(
            target,
            args,
            lambda text: set_weight(
                text, args.route, args.percent, channel=args.channel, cohort=args.cohort
            ),
        )
    answer = _run_admin(
        target,
        "PUT",
        f"/admin/routes/{args.route}/weights",
        {
            "percent": args.percent,
            "channel": args.channel,
            "cohort": args.cohort,
            "reason": args.reason,
            "by": _operator(args),
        },
    )
    if answer is None:
        return EXIT_UNREACHABLE
    status, body = answer
    if status != 200:
        return _refused(status, body)
    cell = "/".join(x for x in (args.channel, args.cohort) if x) or "all channels and cohorts"
    _print(
        body,
        args.json,
        f"{args.route} ({cell}): {args.percent:g}% on new, version {body['version']}",
    )
    return 0


def rollback(args: argparse.Namespace) -> int:
    target = _target(args)
    scope = {k: getattr(args, k) for k in ("route", "channel", "cohort")}
    if target.fleet:
        return _fleet_rollback(target, args, scope, lift=False)
    answer = _run_admin(
        target,
        "POST",
        "/admin/rollback",
        {
            **scope,
            "reason": args.reason,
            "by": _operator(args),
            "wait": args.wait,
            "timeout": args.timeout,
        },
        timeout=args.timeout + 10,
    )
    if answer is None:
        return EXIT_UNREACHABLE
    status, body = answer
    if status != 200:
        return _refused(status, body)
    where = ", ".join(f"{k} {v}" for k, v in scope.items() if v) or "everything"
    backlog = body.get("outbox_to_old")
    tail = (
        ""
        if backlog in (None, 0)
        else f"; {backlog} write(s) made on new still on their way to old"
    )
    _print(body, args.json, f"rolled back to old: {where} (version {body['version']}){tail}")
    return 0 if body.get("drained", True) or not args.wait else EXIT_UNCONFIRMED


def resume(args: argparse.Namespace) -> int:
    target = _target(args)
    scope = {k: getattr(args, k) for k in ("route", "channel", "cohort")}
    if target.fleet:
        return _fleet_rollback(target, args, scope, lift=True)
    answer = _run_admin(
        target,
        "POST",
        "/admin/resume",
        {**scope, "all": args.all, "reason": args.reason, "by": _operator(args)},
    )
    if answer is None:
        return EXIT_UNREACHABLE
    status, body = answer
    if status != 200:
        return _refused(status, body)
    _print(
        body,
        args.json,
        f"resumed: {body.get('lifted', 0)} rollback flag(s) lifted, version {body['version']}",
    )
    return 0


def advance(args: argparse.Namespace) -> int:
    """The next step of a route's plan, when its gates hold (or with --force). An instance in a
    fleet publishes the new step to the whole fleet."""
    target = _target(args)
    answer = _run_admin(
        target,
        "POST",
        f"/admin/routes/{args.route}/advance",
        {"reason": args.reason, "force": args.force, "by": _operator(args)},
    )
    if answer is None:
        return EXIT_UNREACHABLE
    status, body = answer
    if status == 409:
        print(f"cutover: {args.route} cannot advance: {body.get('detail')}", file=sys.stderr)
        return EXIT_UNCONFIRMED
    if status != 200:
        return _refused(status, body)
    _print(
        body, args.json, f"{args.route}: step {body['step']} in force (version {body['version']})"
    )
    return 0


def reload(args: argparse.Namespace) -> int:
    answer = _run_admin(_target(args), "POST", "/admin/reload", {})
    if answer is None:
        return EXIT_UNREACHABLE
    status, body = answer
    if status != 200:
        return _refused(status, body)
    _print(
        body,
        args.json,
        f"version {body['version']} in force"
        + (" (reloaded)" if body.get("changed") else " (unchanged)"),
    )
    return 0


def status(args: argparse.Namespace) -> int:
    target = _target(args)
    if target.fleet:
        return _fleet_status(target, args)
    answer = _run_admin(target, "GET", "/admin/state", None)
    if answer is None:
        return EXIT_UNREACHABLE
    code, state = answer
    if code != 200:
        return _refused(code, state)
    lines = [
        f"instance {state['instance']}  version {state['version']}  up {state['uptime_s']:.0f}s",
        f"  rollback (file): {_scopes(state['rollback']['file'])}",
        f"  rollback (fleet): {_scopes(state['rollback']['fleet']['scopes'])}",
    ]
    if state.get("last_reload_error"):
        lines.append("  last reload refused: " + state["last_reload_error"].splitlines()[0])
    outbox = state.get("outbox")
    if outbox and "ready" in outbox:
        lines.append(f"  outbox: {outbox['ready']} waiting, {outbox['dead']} dead letters")
    lines.extend(_plan_lines(state.get("plans") or {}))
    for verdict in state.get("guards") or []:
        if verdict.get("breaches"):
            cell = "/".join(str(verdict.get(k)) for k in ("route", "channel", "cohort"))
            lines.append(f"  guard breached on {cell}: {'; '.join(verdict['breaches'])}")
    _print(state, args.json, "\n".join(lines))
    return 0


def _plan_lines(plans: dict[str, Any]) -> list[str]:
    """A plan per route: the step in force, how long it has held, and its last advances."""
    lines = []
    for route, plan in sorted(plans.items()):
        mode = "auto" if plan.get("auto") else "by command"
        gates = "gates open" if plan.get("can_advance") else "; ".join(plan.get("reasons") or [])
        lines.append(
            f"  plan {route}: step {plan['step']} of {plan['steps'] - 1} ({mode}), "
            f"held {plan.get('held_s', 0):.0f}s: {gates or 'last step'}"
        )
        for entry in (plan.get("history") or [])[-3:]:
            why = f" ({entry['reason']})" if entry.get("reason") else ""
            lines.append(
                f"    {entry.get('at', '?')}  step {entry.get('step')} by {entry.get('by')}{why}"
            )
    return lines


def _scopes(scopes: list[dict[str, Any]]) -> str:
    if not scopes:
        return "none"
    return "; ".join(
        "/".join(str(s.get(k) or "*") for k in ("route", "channel", "cohort"))
        + (f" ({s['reason']})" if s.get("reason") else "")
        for s in scopes
    )


# --- the fleet, through the broker ------------------------------------------------------------


def _fleet_key(target: Target) -> bytes:
    from proxy.control.signing import KeyTooShort, key_from_env

    assert target.table is not None
    assert target.table.spec.mqtt is not None
    try:
        key = key_from_env(target.table.spec.mqtt.key_env)
    except KeyTooShort as exc:
        raise SystemExit(f"cutover: {exc}") from None
    if key is None:
        raise SystemExit(
            f"cutover: set ${target.table.spec.mqtt.key_env} (the fleet's signing key)"
        )
    return key


def _fleet_edit(target: Target, args: argparse.Namespace, edit: Any) -> int:
    """Change the fleet's routes.yaml: the one retained on the broker (else this file)."""
    from proxy.control import fleetctl

    table = target.table
    assert table is not None
    mqtt = table.spec.mqtt
    assert mqtt is not None
    key = _fleet_key(target)

    async def run() -> int:
        view = await fleetctl.read_retained(mqtt, table.migration, key)
        base = view.config.text if view.config is not None else table.text
        try:
            text = edit(base)
        except EditError as exc:
            print(f"cutover: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        try:
            load_config_text(text)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return EXIT_REFUSED
        seq = await fleetctl.publish_config(mqtt, table.migration, key, text)
        from proxy.config import content_version

        version = content_version(text.encode())
        converged, statuses = await fleetctl.wait_converged(
            mqtt, table.migration, config_version=version, timeout=args.timeout
        )
        _print(
            {"seq": seq, "version": version, "converged": converged, "instances": statuses},
            args.json,
            f"published version {version} (seq {seq}); "
            + _convergence(converged, statuses, "version", version),
        )
        return 0 if converged else EXIT_UNCONFIRMED

    return _fleet_run(run)


def load_config_text(text: str) -> RouteTable:
    from proxy.config import parse_config

    return parse_config(text, env=_LenientEnv())


def _fleet_rollback(
    target: Target, args: argparse.Namespace, scope: dict[str, Any], *, lift: bool
) -> int:
    from proxy.control import fleetctl

    table = target.table
    assert table is not None
    mqtt = table.spec.mqtt
    assert mqtt is not None
    key = _fleet_key(target)
    wanted = (scope["route"], scope["channel"], scope["cohort"])

    async def run() -> int:
        started = time.monotonic()
        view = await fleetctl.read_retained(mqtt, table.migration, key)
        current = list(view.rollback.scopes) if view.rollback is not None else []

        def key_of(s: dict[str, Any]) -> tuple[Any, Any, Any]:
            return (s.get("route"), s.get("channel"), s.get("cohort"))

        if lift:
            everything = getattr(args, "all", False) or wanted == (None, None, None)
            scopes = [] if everything else [s for s in current if key_of(s) != wanted]
        else:
            entry = {k: v for k, v in scope.items() if v}
            entry.update(
                reason=args.reason,
                by=_operator(args),
                at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            scopes = [s for s in current if key_of(s) != wanted] + [entry]
        seq = await fleetctl.publish_rollback(
            mqtt, table.migration, key, scopes, by=_operator(args), reason=args.reason
        )
        converged, statuses = await fleetctl.wait_converged(
            mqtt, table.migration, rollback_seq=seq, timeout=args.timeout
        )
        took = (time.monotonic() - started) * 1000
        backlog = sum(int(s.get("outbox_to_old") or 0) for s in statuses.values())
        drained = backlog == 0
        summary = (
            f"{'lifted' if lift else 'rollback'} published (seq {seq}); "
            + _convergence(converged, statuses, "rollback_seq", seq)
            + f" in {took:.0f} ms"
        )
        if not lift and not drained:
            summary += f"; {backlog} write(s) made on new still on their way to old"
        _print(
            {
                "seq": seq,
                "scopes": scopes,
                "converged": converged,
                "ms": round(took, 1),
                "outbox_to_old": backlog,
                "drained": drained,
                "instances": statuses,
            },
            args.json,
            summary,
        )
        if not converged:
            return EXIT_UNCONFIRMED
        waited = getattr(args, "wait", False)
        return EXIT_UNCONFIRMED if (waited and not lift and not drained) else 0

    return _fleet_run(run)


def _convergence(
    converged: bool, statuses: dict[str, dict[str, Any]], field: str, wanted: Any
) -> str:
    online = {i: s for i, s in statuses.items() if s.get("status") == "online"}
    behind = [i for i, s in online.items() if not _has(s, field, wanted)]
    if not online:
        return "no instance is online to confirm it (it applies when they connect)"
    if converged:
        return f"all {len(online)} online instance(s) confirmed"
    return f"NOT confirmed by {', '.join(sorted(behind)) or '?'} ({len(online)} online)"


def _has(status: dict[str, Any], field: str, wanted: Any) -> bool:
    if field == "rollback_seq":
        return int(status.get("rollback_seq") or 0) >= int(wanted)
    return bool(status.get(field) == wanted)


def _fleet_status(target: Target, args: argparse.Namespace) -> int:
    from proxy.control import fleetctl

    table = target.table
    assert table is not None
    mqtt = table.spec.mqtt
    assert mqtt is not None
    key = _fleet_key(target)

    async def run() -> int:
        view = await fleetctl.read_retained(mqtt, table.migration, key)
        data = fleetctl.convergence(view)
        rows = data["instances"]
        lines = [
            f"fleet {table.migration}: config {data['config_version'] or '(none published)'}, "
            f"rollback seq {data['rollback_seq']} ({_scopes(data['rollback_scopes'])})",
            f"{'instance':<28} {'status':<8} {'version':<14} {'rollback':<14} converged",
        ]
        lines.extend(
            f"{r['instance']:<28} {r.get('status', '?'):<8} {r.get('version')!s:<14} "
            f"{r.get('rollback_seq')!s:<14} {'yes' if r['converged'] else 'NO'}"
            for r in rows
        )
        _print(data, args.json, "\n".join(lines))
        return 0 if data["converged"] else EXIT_UNCONFIRMED

    return _fleet_run(run)


def publish(args: argparse.Namespace) -> int:
    """Push a routes.yaml to the whole fleet (the file given, else --config)."""
    target = _target(args)
    if target.table is None or target.table.spec.mqtt is None:
        print("cutover: publish needs an mqtt section in routes.yaml", file=sys.stderr)
        return EXIT_REFUSED
    text = Path(args.file).read_text() if args.file else target.table.text
    return _fleet_edit(target, args, lambda _current: text)


def _fleet_run(run: Any) -> int:
    from proxy.control.fleetctl import FleetError

    try:
        result: int = asyncio.run(run())
    except FleetError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return result


# --- argparse ----------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin", metavar="URL", help="one instance's admin API (e.g. http://127.0.0.1:8081)"
    )
    parser.add_argument(
        "--fleet", action="store_true", help="every instance, through the MQTT broker"
    )
    parser.add_argument("--token-file", help="the admin token (else $CUTOVER_ADMIN_TOKEN)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for confirmation (default 5)"
    )


def _scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--route")
    parser.add_argument("--channel")
    parser.add_argument("--cohort")
    parser.add_argument("--by", help="who (default: $CUTOVER_OPERATOR or $USER)")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("shift", help="set the percent of customers on the new platform")
    p.add_argument("route")
    p.add_argument("percent", type=float)
    p.add_argument("--channel")
    p.add_argument("--cohort")
    p.add_argument("--reason", required=True)
    p.add_argument("--by")
    _common(p)
    p.set_defaults(func=shift)

    p = sub.add_parser(
        "rollback", help="back to the old platform: everything, or a route/channel/cohort"
    )
    _scope(p)
    p.add_argument("--reason", required=True)
    p.add_argument(
        "--wait",
        action="store_true",
        help="also wait until writes made on new have reached old (exit 3 if not)",
    )
    _common(p)
    p.set_defaults(func=rollback)

    p = sub.add_parser("resume", help="lift a rollback (all of them when no scope is given)")
    _scope(p)
    p.add_argument("--all", action="store_true")
    p.add_argument("--reason", required=True)
    _common(p)
    p.set_defaults(func=resume)

    p = sub.add_parser("status", help="version, rollback flags, convergence of every instance")
    _common(p)
    p.set_defaults(func=status)

    p = sub.add_parser("publish", help="push a routes.yaml to the whole fleet")
    p.add_argument("file", nargs="?")
    _common(p)
    p.set_defaults(func=publish)

    p = sub.add_parser("advance", help="move a route's plan to its next step (when its gates hold)")
    p.add_argument("route")
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true", help="advance even if the gates are closed")
    p.add_argument("--by")
    _common(p)
    p.set_defaults(func=advance)

    p = sub.add_parser("reload", help="make one instance read its routes.yaml again")
    _common(p)
    p.set_defaults(func=reload)
