"""Checks that need the whole file: names that refer to other parts of routes.yaml.

They run on the raw document, next to (not after) the structural validation, so that a file with
a typo in one route and an unknown cohort in another reports both at once. Every check tolerates
garbage where it looks: the structural pass reports that.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from proxy.config.spec import ALL_METHODS
from proxy.config.units import parse_percent

Place = tuple[str | int, ...]
Issue = tuple[Place, str]


def check(doc: Mapping[str, Any]) -> list[Issue]:
    return list(_check(doc))


def _listing(names: Any, empty: str = "-") -> str:
    """Names for a message, as written where they are plain and quoted where not: a name with a
    line break in it (itself refused at its place) must not break the one-line-per-issue report."""
    return ", ".join(_plain(n) for n in names) or empty


def _plain(name: str) -> str:
    return name if name.isprintable() else repr(name)


def _names(items: Any, key: str = "name") -> list[str]:
    if not isinstance(items, list):
        return []
    return [
        item[key] for item in items if isinstance(item, dict) and isinstance(item.get(key), str)
    ]


def _check(doc: Mapping[str, Any]) -> Iterator[Issue]:
    channels = (
        [c for c in doc.get("channels") or [] if isinstance(c, str)]
        if isinstance(doc.get("channels"), list)
        else []
    )
    channel_set = set(channels)
    for i, name in enumerate(channels):
        if name in channels[:i]:
            yield ("channels", i), f"channel {name!r} is listed twice"

    cohorts = doc.get("cohorts") or []
    cohort_names = _names(cohorts)
    yield from _check_cohorts(cohorts, channel_set)
    cohort_set = set(cohort_names)

    identify = doc.get("identify")
    if isinstance(identify, dict) and isinstance(identify.get("channel"), dict):
        default = identify["channel"].get("default")
        if isinstance(default, str) and channel_set and default not in channel_set:
            yield (
                ("identify", "channel", "default"),
                f"{default!r} is not one of the channels ({_listing(channels)})",
            )
    elif (
        channel_set
        and "web" not in channel_set
        and not (isinstance(identify, dict) and "channel" in identify)
    ):
        yield (
            ("identify",),
            "the default channel 'web' is not listed in channels; set identify.channel.default",
        )

    apis = _platform_apis(doc.get("platforms"))
    routes = doc.get("routes")
    if isinstance(routes, list):
        yield from _check_routes(routes, apis, channel_set, cohort_set)

    rollback = doc.get("rollback")
    if isinstance(rollback, list):
        route_names = set(_names(routes))
        for i, scope in enumerate(rollback):
            if not isinstance(scope, dict):
                continue
            for key, known in (
                ("route", route_names),
                ("channel", channel_set),
                ("cohort", cohort_set),
            ):
                value = scope.get(key)
                if isinstance(value, str) and value not in known:
                    yield ("rollback", i, key), f"unknown {key} {value!r}"


def _check_cohorts(cohorts: Any, channels: set[str]) -> Iterator[Issue]:
    if not isinstance(cohorts, list):
        return
    seen: set[str] = set()
    catch_all_at: int | None = None
    for i, cohort in enumerate(cohorts):
        if not isinstance(cohort, dict):
            continue
        name = cohort.get("name")
        if isinstance(name, str):
            if name in seen:
                yield ("cohorts", i, "name"), f"cohort {name!r} is defined twice"
            if name in channels:
                yield (
                    ("cohorts", i, "name"),
                    f"{name!r} is also a channel; weights could not tell the two apart",
                )
            if name == "default":
                yield ("cohorts", i, "name"), "'default' is reserved in weights; pick another name"
            seen.add(name)
        if catch_all_at is not None:
            yield (
                ("cohorts", i),
                f"unreachable: cohorts[{catch_all_at}] already matches everyone (first match wins)",
            )
        elif "customers" not in cohort and "header" not in cohort:
            catch_all_at = i


def _platform_apis(platforms: Any) -> dict[str, set[str]]:
    if not isinstance(platforms, dict):
        return {}
    return {
        side: set(apis) if isinstance(apis, dict) else set()
        for side, apis in platforms.items()
        if side in {"old", "new"}
    }


def _check_routes(
    routes: list[Any], apis: dict[str, set[str]], channels: set[str], cohorts: set[str]
) -> Iterator[Issue]:
    seen_names: dict[str, int] = {}
    claimed: dict[tuple[str, str], int] = {}  # (path, method) -> route index
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        name = route.get("name")
        if isinstance(name, str):
            if name in seen_names:
                yield ("routes", i, "name"), f"route {name!r} is already routes[{seen_names[name]}]"
            else:
                seen_names[name] = i
        api = route.get("api")
        if isinstance(api, str):
            for side in ("old", "new"):
                if side in apis and api not in apis[side]:
                    have = _listing(sorted(apis[side]), "none")
                    yield (
                        ("routes", i, "api"),
                        f"{api!r} is not an API of platform {side} (it has: {have})",
                    )
        if "weights" in route:
            yield from _check_weights(route["weights"], ("routes", i, "weights"), channels, cohorts)
        plan = route.get("plan")
        if isinstance(plan, dict) and isinstance(plan.get("steps"), list):
            for j, step in enumerate(plan["steps"]):
                if isinstance(step, dict) and "weights" in step:
                    yield from _check_weights(
                        step["weights"],
                        ("routes", i, "plan", "steps", j, "weights"),
                        channels,
                        cohorts,
                    )
        path = route.get("path")
        if isinstance(path, str):
            methods = route.get("methods", list(ALL_METHODS))
            for method in methods if isinstance(methods, list) else []:
                if not isinstance(method, str):
                    continue
                other = claimed.setdefault((path.rstrip("/") or "/", method), i)
                if other != i:
                    yield (
                        ("routes", i, "path"),
                        f"{_plain(method)} {_plain(path)} is already matched by routes[{other}]; "
                        "two routes may not match the same request",
                    )
            ids = route.get("ids")
            if isinstance(ids, dict) and isinstance(ids.get("path"), str):
                template: str = ids["path"]
                if not (template == path or template.startswith(path.rstrip("/") + "/")):
                    yield (
                        ("routes", i, "ids", "path"),
                        f"{template!r} is not under the route's path {path!r}",
                    )


def _check_weights(
    weights: Any, place: Place, channels: set[str], cohorts: set[str]
) -> Iterator[Issue]:
    if not isinstance(weights, dict):
        yield place, "expected a mapping of channel or cohort to a percentage"
        return
    cohort_list = _listing(sorted(cohorts))
    known = f"channels: {_listing(sorted(channels))}; cohorts: {cohort_list}"
    for key, value in weights.items():
        at = (*place, str(key))
        if key == "default" or key in cohorts:
            yield from _check_percent(value, at)
        elif key in channels:
            if isinstance(value, dict):
                for cohort, percent in value.items():
                    if cohort == "default" or cohort in cohorts:
                        yield from _check_percent(percent, (*at, str(cohort)))
                    else:
                        yield (
                            (*at, str(cohort)),
                            f"unknown cohort {cohort!r} (cohorts: {cohort_list})",
                        )
            else:
                yield from _check_percent(value, at)
        else:
            yield at, f"unknown channel or cohort {key!r} ({known})"


def _check_percent(value: Any, place: Place) -> Iterator[Issue]:
    try:
        parse_percent(value)
    except ValueError as exc:
        yield place, str(exc)
