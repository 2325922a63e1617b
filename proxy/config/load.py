"""routes.yaml -> RouteTable, or a ConfigError listing every problem with its place.

The pipeline: YAML (ruamel, round-trip so we know line numbers) -> `${VAR}` substitution ->
structural validation (pydantic, `proxy.config.spec`) and cross-reference checks
(`proxy.config.semantics`) side by side -> `build_table`. Nothing here raises anything but
ConfigError for a bad file; a traceback from a config file is a bug.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from proxy.config import semantics
from proxy.config.load_errors import RuleIssues
from proxy.config.spec import ConfigSpec
from proxy.config.table import RouteTable, build_table

Place = tuple[str | int, ...]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LONG_NUMBER = re.compile(r"\d{4000,}")
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
"""routes.yaml is a dozen levels deep at most; deeper nesting is refused, not walked."""
MAX_VALUES_PER_BYTE = 2
"""Without aliases a document holds fewer values than bytes; aliases may reuse a part a few
times, but a document that expands past this (a "billion laughs") is refused, not expanded."""
MIN_VALUES = 10_000


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    place: Place
    message: str
    line: int | None = None  # 1-based

    @property
    def where(self) -> str:
        return format_place(self.place)


class ConfigError(Exception):
    """A routes.yaml that cannot run; `str()` is what `cutover validate` prints."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for issue in self.issues:
            at = f"{self.source}:{issue.line}" if issue.line else self.source
            where = f"{issue.where}: " if issue.place else ""
            lines.append(f"{at}: {where}{issue.message}")
        return "\n".join(lines)


def format_place(place: Place) -> str:
    out = ""
    for part in place:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RouteTable:
    """Read and compile one routes.yaml; relative paths inside it are relative to its folder."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            str(file), [ConfigIssue((), f"cannot read: {exc.strerror or exc}")]
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(str(file), [ConfigIssue((), f"larger than {MAX_FILE_BYTES} bytes")])
    return parse_config(data, source=str(file), base_dir=file.resolve().parent, env=env)


def parse_config(
    data: bytes | str,
    *,
    source: str = "routes.yaml",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RouteTable:
    raw = data.encode() if isinstance(data, str) else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [ConfigIssue((), f"not UTF-8 text (byte {exc.start})")]) from None
    tree = _parse_yaml(text, source)
    if not isinstance(tree, dict):
        raise ConfigError(
            source, [ConfigIssue((), "expected a mapping at the top (version: 1, ...)")]
        )

    issues: list[ConfigIssue] = []
    budget = _Budget(max(MIN_VALUES, MAX_VALUES_PER_BYTE * len(raw)))
    doc = _substitute(tree, (), os.environ if env is None else env, issues, budget)
    if budget.exceeded:
        raise ConfigError(
            source,
            [
                ConfigIssue(
                    (),
                    f"expands to more than {budget.limit} values (aliases repeating aliases?)",
                    _line_of(tree, budget.exceeded_at or ()),
                )
            ],
        )
    spec: ConfigSpec | None = None
    try:
        spec = ConfigSpec.model_validate(doc)
    except ValidationError as exc:
        issues.extend(_from_pydantic(exc))
    issues.extend(ConfigIssue(place, message) for place, message in semantics.check(doc))
    if issues or spec is None:
        located = [
            ConfigIssue(i.place, i.message, _line_of(tree, i.place)) for i in _dedupe(issues)
        ]
        located.sort(key=lambda i: (i.line or 0, i.where))
        raise ConfigError(source, located)
    try:
        return build_table(
            spec,
            source=source,
            base_dir=base_dir or Path.cwd(),
            text=text,
            version=content_version(raw),
        )
    except RuleIssues as exc:
        located = [ConfigIssue(e.place, e.message, _line_of(tree, e.place)) for e in exc.errors]
        raise ConfigError(source, located) from None


def _parse_yaml(text: str, source: str) -> Any:
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        raise ConfigError(source, [ConfigIssue((), f"invalid YAML: {problem}", line)]) from None
    except YAMLError as exc:
        position = getattr(exc, "position", None)  # a ReaderError: a character YAML refuses
        if isinstance(position, int):
            line = text.count("\n", 0, position) + 1
            reason = getattr(exc, "reason", None) or "a character YAML does not allow"
            character = getattr(exc, "character", None)
            code = ord(character) if isinstance(character, str) and character else character
            what = f" (#x{code:04x})" if isinstance(code, int) else ""
            message = f"invalid YAML: {reason}{what}"
            raise ConfigError(source, [ConfigIssue((), message, line)]) from None
        raise ConfigError(source, [ConfigIssue((), f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise ConfigError(
            source, [ConfigIssue((), f"invalid YAML: nested deeper than {MAX_DEPTH} levels")]
        ) from None
    except Exception as exc:
        # ruamel's constructors raise what they happen to: ValueError for an integer too long
        # for Python to convert or `!!int x`, IndexError for `!!int ` with no digits, KeyError
        # for `!!bool x`, AttributeError for `!!set` on a scalar... still a bad file, never a
        # traceback
        found = _LONG_NUMBER.search(text) if isinstance(exc, ValueError) else None
        if found is not None:
            line = text.count("\n", 0, found.start()) + 1
            message = f"a number with more than {len(found.group(0)) - 1} digits"
            raise ConfigError(source, [ConfigIssue((), message, line)]) from None
        detail = " ".join(str(exc).split())[:200]
        message = (
            f"invalid YAML: cannot construct a value ({type(exc).__name__}: {detail}); "
            "check explicit tags such as !!int"
        )
        raise ConfigError(source, [ConfigIssue((), message)]) from None


@dataclass(slots=True)
class _Budget:
    """How many more values the plain copy may hold before the document is refused."""

    limit: int
    used: int = 0
    exceeded_at: Place | None = None

    @property
    def exceeded(self) -> bool:
        return self.exceeded_at is not None

    def take(self, place: Place) -> bool:
        self.used += 1
        if self.used > self.limit and self.exceeded_at is None:
            self.exceeded_at = place
        return self.exceeded_at is None


def _substitute(
    node: Any, place: Place, env: Mapping[str, str], issues: list[ConfigIssue], budget: _Budget
) -> Any:
    """A plain copy of the YAML tree with `${VAR}` read from the environment (`$$` is a `$`).

    Bounded: past MAX_DEPTH levels, or past the budget of values, nothing more is copied (an
    issue says where), so neither deep nesting nor an alias bomb is ever walked in full."""
    if not budget.take(place):
        return None
    if isinstance(node, dict | list) and len(place) >= MAX_DEPTH:
        issues.append(ConfigIssue(place, f"nested deeper than {MAX_DEPTH} levels"))
        return None
    if isinstance(node, dict):
        return {
            str(k) if not isinstance(k, int | float | bool) else k: _substitute(
                v, (*place, str(k)), env, issues, budget
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_substitute(v, (*place, i), env, issues, budget) for i, v in enumerate(node)]
    if isinstance(node, str):
        if "$" not in node:
            return str(node)

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in env:
                issues.append(ConfigIssue(place, f"environment variable {name} is not set"))
                return ""
            return env[name]

        return _VAR.sub(replace, str(node))
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


# --- pydantic errors, said plainly -------------------------------------------------------------


def _from_pydantic(exc: ValidationError) -> Iterator[ConfigIssue]:
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        kind = error["type"]
        value = error.get("input")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
            yield ConfigIssue(loc, f"unknown key{hint}")
        elif kind == "missing":
            yield ConfigIssue(loc, "required")
        else:
            message = str(error["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                message = message.removeprefix(prefix)
            if message.startswith("Input should be"):
                message = "expected" + message.removeprefix("Input should be")
                if not isinstance(value, dict | list):
                    message += f", got {value!r}"
            yield ConfigIssue(loc, message)


def _allowed_keys(loc: Place) -> list[str]:
    """The keys the model at `loc` accepts, to say what a typo might have meant."""
    current: Any = ConfigSpec
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _step(annotation: Any, part: str | int) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return _unwrap(field.annotation) if field else None
    origin = get_origin(annotation)
    if origin in (list, dict):
        return _unwrap(get_args(annotation)[-1])
    return None


def _unwrap(annotation: Any) -> Any:
    for _ in range(5):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) in (list, dict) or not args:
            return annotation
        annotation = args[0]
    return annotation


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[tuple[Place, str]] = set()
    out = []
    for issue in issues:
        key = (issue.place, issue.message)
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


def _line_of(tree: Any, place: Place) -> int | None:
    """The 1-based line of the deepest node of `place` that exists in the YAML."""
    line: int | None = None
    node = tree
    for part in place:
        try:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    return line
