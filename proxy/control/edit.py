"""Changes to routes.yaml made through cutover (admin API, CLI, guards), everything else kept.

routes.yaml is the one file that says what happens, and operators review it with `git diff`, so
a change made through cutover must change only the lines it is about. ruamel (round-trip mode)
finds where a key is; the new value is rendered in the file's flow style and spliced in place of
that key's lines, keeping the line's trailing comment. Every other byte of the file stays as
the operators wrote it. Each function takes the text and returns the new text; the caller
validates it (Control.write_and_apply) before it is written.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

_PLAIN = re.compile(r"^[A-Za-z0-9_.\-]+$")


class EditError(ValueError):
    """The change cannot be made to this file (an unknown route, a malformed section)."""


def _load(text: str) -> CommentedMap:
    try:
        doc = YAML(typ="rt").load(text)
    except YAMLError as exc:
        raise EditError(f"routes.yaml is not valid YAML: {exc}") from None
    if not isinstance(doc, CommentedMap):
        raise EditError("routes.yaml is not a mapping")
    return doc


def _route(doc: CommentedMap, name: str) -> tuple[int, CommentedMap]:
    for index, route in enumerate(doc.get("routes") or []):
        if isinstance(route, CommentedMap) and route.get("name") == name:
            return index, route
    raise EditError(f"no route named {name!r}")


# --- rendering values in the file's style -------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(round(float(value), 2))
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in {
        "true",
        "false",
        "null",
        "yes",
        "no",
        "on",
        "off",
    }:
        return text
    return orjson.dumps(text).decode()  # a JSON string is a valid double-quoted YAML scalar


def _flow(value: Any) -> str:
    """`{ default: 0, chat: { pilot: 100 } }`, the way routes.yaml writes small maps."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_scalar(k)}: {_flow(v)}" for k, v in value.items()) + " }"
    return _scalar(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- splicing ----------------------------------------------------------------------------------


def _comment(line: str) -> str:
    """The trailing `# …` of a line, if the `#` is outside quotes."""
    quote: str | None = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[index:].rstrip("\n")
    return ""


def _extent(lines: list[str], start: int, column: int) -> int:
    """The index after the last line of the value of the key at (start, column): the key's own
    line, then the lines indented deeper (block values, multi-line flow maps)."""
    end = start + 1
    while end < len(lines):
        line = lines[end]
        stripped = line.strip()
        if not stripped:
            break
        indent = len(line) - len(line.lstrip(" "))
        if indent <= column:
            break
        end += 1
    return end


def _inline(node: CommentedMap) -> bool:
    """A mapping written in flow style (a JSON file, `{ a: 1 }`): it has no lines of its own."""
    return bool(node.fa.flow_style())


def _dump_whole(doc: CommentedMap) -> str:
    """For files written as flow mappings (machine-made JSON): re-emitted by ruamel, since
    there is no per-line layout to keep."""
    import io

    yaml = YAML(typ="rt")
    yaml.width = 1 << 20
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _set_value(
    text: str, doc: CommentedMap, node: CommentedMap, key: str, value: Any, rendered: list[str]
) -> str:
    """`node[key] = value`, by splicing lines when the mapping is written in block style."""
    if _inline(node) or _inline(doc):
        node[key] = value
        return _dump_whole(doc)
    if key in node:
        return _replace_key(text, node, key, rendered)
    return _append_key(text, node, rendered)


def _replace_key(text: str, node: CommentedMap, key: str, rendered: list[str]) -> str:
    """Replace the lines of `node[key]` with `rendered` (first line starts with `key:`)."""
    line, column = node.lc.key(key)
    lines = text.splitlines(keepends=True)
    end = _extent(lines, line, column)
    comment = _comment(lines[line])
    indent = " " * column
    new = [indent + rendered[0]]
    if comment:  # at its old column when it still fits there
        column_was = lines[line].rstrip("\n").rindex(comment)
        new[0] = new[0].ljust(max(column_was, len(new[0]) + 1)) + comment
    new.extend(indent + r for r in rendered[1:])
    lines[line:end] = [n + "\n" for n in new]
    return "".join(lines)


def _append_key(text: str, node: CommentedMap, rendered: list[str]) -> str:
    """Add a key to a block mapping after its last key's lines."""
    keys = list(node.keys())
    if not keys:
        raise EditError("cannot add a key to an empty mapping")
    line, column = node.lc.key(keys[-1])
    lines = text.splitlines(keepends=True)
    end = _extent(lines, line, column)
    lines[end:end] = [" " * column + r + "\n" for r in rendered]
    return "".join(lines)


# --- the edits ---------------------------------------------------------------------------------


def set_weight(
    text: str, route: str, percent: float, *, channel: str | None = None, cohort: str | None = None
) -> str:
    """Set the most specific weight key the arguments name: channel.cohort, channel (its
    default), cohort (all channels), or the route's default."""
    doc = _load(text)
    _, node = _route(doc, route)
    current = node.get("weights")
    if current is not None and not isinstance(current, dict):
        raise EditError(f"route {route!r}: weights is not a mapping")
    weights: dict[str, Any] = _plain(current) if current is not None else {}
    value = float(percent)
    if channel is None:
        weights[cohort if cohort is not None else "default"] = value
    else:
        existing = weights.get(channel)
        key = cohort if cohort is not None else "default"
        if isinstance(existing, dict):
            existing[key] = value
        elif cohort is None:
            weights[channel] = value
        else:
            nested = {"default": existing} if existing is not None else {}
            nested[cohort] = value
            weights[channel] = nested
    return _set_value(text, doc, node, "weights", weights, [f"weights: {_flow(weights)}"])


def _scope_line(scope: dict[str, Any]) -> str:
    return "- " + _flow(scope)


def _rollback_scopes(doc: CommentedMap) -> list[dict[str, Any]]:
    current = doc.get("rollback")
    if current is True:
        return [{}]
    if isinstance(current, CommentedSeq):
        return [_plain(s) for s in current if isinstance(s, dict)]
    return []


def _write_rollback(text: str, doc: CommentedMap, scopes: list[dict[str, Any]]) -> str:
    rendered = (
        ["rollback: false"]
        if not scopes
        else ["rollback:", *("  " + _scope_line(s) for s in scopes)]
    )
    if _inline(doc):
        doc["rollback"] = scopes or False
        return _dump_whole(doc)
    if "rollback" in doc:
        return _replace_key(text, doc, "rollback", rendered)
    suffix = "" if text.endswith("\n") else "\n"
    return text + suffix + "\n".join(rendered) + "\n"


def _key(scope: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (scope.get("route"), scope.get("channel"), scope.get("cohort"))


def add_rollback(
    text: str,
    *,
    route: str | None = None,
    channel: str | None = None,
    cohort: str | None = None,
    reason: str,
    by: str,
    at: str,
) -> str:
    """Add a rollback scope (replacing one with the same route/channel/cohort)."""
    doc = _load(text)
    if route is not None:
        _route(doc, route)
    wanted = (route, channel, cohort)
    scopes = [s for s in _rollback_scopes(doc) if _key(s) != wanted]
    scope = {k: v for k, v in (("route", route), ("channel", channel), ("cohort", cohort)) if v}
    scope.update(reason=reason, by=by, at=at)
    scopes.append(scope)
    return _write_rollback(text, doc, scopes)


def remove_rollback(
    text: str,
    *,
    route: str | None = None,
    channel: str | None = None,
    cohort: str | None = None,
    everything: bool = False,
) -> tuple[str, int]:
    """Lift rollback scopes: the one with exactly this route/channel/cohort (and, for a route
    alone, its `rollback: true`), or all of them with `everything`. Returns (text, how many)."""
    doc = _load(text)
    scopes = _rollback_scopes(doc)
    if everything:
        kept: list[dict[str, Any]] = []
    else:
        kept = [s for s in scopes if _key(s) != (route, channel, cohort)]
    lifted = len(scopes) - len(kept)
    if lifted:
        text = _write_rollback(text, doc, kept)
    names = (
        None
        if everything
        else {route}
        if route is not None and channel is None and cohort is None
        else set()
    )
    for index, node in enumerate(doc.get("routes") or []):
        if not isinstance(node, CommentedMap) or node.get("rollback") is not True:
            continue
        if names is None or node.get("name") in names:
            fresh = _load(text)  # line numbers moved if the rollback section changed
            text = _replace_key(text, fresh["routes"][index], "rollback", ["rollback: false"])
            lifted += 1
    return text, lifted


def set_plan_step(
    text: str, route: str, step: int, weights: dict[str, Any], shadow_percent: float | None
) -> str:
    """Move a route's plan to `step`: its weights (and shadow share) become that step's, and
    `plan.step` says which step is in force. Best with `plan:` in block style, where each of
    these is one line; a flow-style plan is re-emitted whole."""
    doc = _load(text)
    _, node = _route(doc, route)
    text = _set_value(
        text, doc, node, "weights", _plain(weights), [f"weights: {_flow(_plain(weights))}"]
    )
    if shadow_percent is not None:
        doc = _load(text)
        _, node = _route(doc, route)
        text = _set_value(
            text,
            doc,
            node,
            "shadow_percent",
            shadow_percent,
            [f"shadow_percent: {_scalar(shadow_percent)}"],
        )
    doc = _load(text)
    _, node = _route(doc, route)
    plan = node.get("plan")
    if not isinstance(plan, CommentedMap):
        raise EditError(f"route {route!r} has no plan")
    return _set_value(text, doc, plan, "step", step, [f"step: {step}"])
