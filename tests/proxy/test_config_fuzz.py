"""routes.yaml under fuzzing: whatever the bytes, `ConfigError` with places, never a traceback.

Four kinds of input, each bounded so the module stays quick: arbitrary bytes and YAML-token soup;
line-level edits of a full routes.yaml (every section set) as text (deleted, doubled, swapped,
re-indented and truncated lines, so duplicate keys and broken structure); structured mutations
of that document (wrong types, out-of-range, huge and unicode values, bad durations, URLs and
paths, deleted and unknown keys) with the place of the mutation expected in the error; and
anchor/alias bombs and deep nesting, which must be refused quickly rather than expanded.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from proxy.config import ConfigError, RouteTable, load_config, parse_config
from proxy.config.load import MAX_DEPTH, _allowed_keys, format_place
from tests.configs import REPO

SOURCE = "fuzz.yaml"
ENV = {"OLD_CRM_TOKEN": "old-token", "NEW_CRM_KEY": "new-key"}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: issues about the file as a whole: they need neither a place nor a line
WHOLE_FILE = (
    "not UTF-8",
    "expected a mapping at the top",
    "invalid YAML: nested deeper",
    "invalid YAML: cannot construct",  # ruamel failed inside a constructor: no position
    "larger than",
    "cannot read",
)


def rich_doc() -> dict[str, Any]:
    """The repository's routes.yaml with every optional section set as well."""
    doc: dict[str, Any] = YAML(typ="safe").load(REPO / "routes.yaml")
    doc["state_dir"] = "./state"
    doc["mqtt"] = {
        "url": "mqtt://127.0.0.1:1883",
        "key_env": "CUTOVER_CONTROL_KEY",
        "keepalive": "5s",
    }
    doc["outbox"] = {
        "max_attempts": 5,
        "backoff_min": "50ms",
        "backoff_max": "2s",
        "max_body": "1MiB",
    }
    old = doc["platforms"]["old"]["crm"]
    old["headers"] = {"Authorization": "Bearer ${OLD_CRM_TOKEN}"}
    old["connect_timeout"] = "1s"
    old["pool"] = 64
    old["mirror"] = {"concurrency": 8, "queue": 100, "rate": 50, "max_wait": "1s"}
    doc["platforms"]["new"]["crm"]["headers"] = {"X-Api-Key": "${NEW_CRM_KEY}"}
    doc["identify"]["customer"] = [{"header": "X-Customer-Id"}, {"query": "customer"}]
    contacts = doc["routes"][0]
    contacts["verify_after"] = "30s"
    contacts["mirror_headers"] = {"X-Suppress-Notifications": "1"}
    contacts["compare"]["headers"] = ["Content-Type"]
    contacts["compare"]["tolerance"] = {"$.balance": 0.01}
    contacts["compare"]["list_keys"] = {"$.tags": "id"}
    contacts["compare"]["max_body"] = "256KiB"
    contacts["compare"]["noise_probe_percent"] = 5
    contacts["guard"] = {
        "window": "5m",
        "min_requests": 200,
        "max_mismatch_rate": 0.02,
        "max_error_rate": 0.01,
        "max_latency_ratio": 1.5,
    }
    doc["routes"][1]["plan"] = {
        "auto": False,
        "steps": [{"weights": {"default": 5}, "hold": "1h"}, {"weights": {"default": 50}}],
    }
    doc["rollback"] = [{"route": "tickets", "channel": "chat", "reason": "fuzz"}]
    return doc


RICH = rich_doc()


def to_yaml(doc: Any) -> str:
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.allow_unicode = True
    yaml.dump(doc, out)
    return out.getvalue()


RICH_TEXT = to_yaml(RICH)


def outcome(data: bytes | str, env: dict[str, str] | None = None) -> RouteTable | ConfigError:
    """The loader's answer; anything other than a table or a ConfigError fails the test."""
    try:
        return parse_config(data, source=SOURCE, env=ENV if env is None else env)
    except ConfigError as exc:
        check_placed(exc)
        return exc


def check_placed(exc: ConfigError) -> None:
    """Every issue is one line of `cutover validate` output that names the file, and its place
    in the document (a dotted path, with the line where the place exists in the YAML) unless it
    is about the file as a whole."""
    assert exc.issues, "a ConfigError without issues"
    rendered = str(exc).split("\n")
    assert len(rendered) == len(exc.issues), rendered
    for issue, line in zip(exc.issues, rendered, strict=True):
        assert line.startswith(f"{SOURCE}:"), line
        assert issue.message.strip(), line
        assert "\n" not in issue.message, issue.message
        assert "Traceback" not in issue.message
        if issue.place:
            assert f"{format_place(issue.place)}: " in line, line
        else:
            assert issue.line is not None or issue.message.startswith(WHOLE_FILE), line
        if issue.line is not None:
            assert issue.line >= 1
            assert line.startswith(f"{SOURCE}:{issue.line}: "), line


def places(doc: Any, at: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every place in a document, parents before their children."""
    yield at
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from places(value, (*at, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from places(value, (*at, index))


RICH_PLACES = [p for p in places(RICH) if p]


def node_at(doc: Any, place: tuple[str | int, ...]) -> Any:
    for part in place:
        doc = doc[part]
    return doc


def issue_at_or_under(error: ConfigError, place: tuple[str | int, ...]) -> bool:
    return any(tuple(i.place[: len(place)]) == place for i in error.issues)


# --- anything at all --------------------------------------------------------------------------


@given(st.binary(max_size=400))
@FUZZ
def test_arbitrary_bytes(data):
    """Random bytes: a ConfigError (or, rarely, a table), placed."""
    outcome(data)


YAML_TOKENS = st.sampled_from(
    [
        "version: 1\n",
        "routes:\n",
        "  - ",
        "- ",
        ": ",
        ":",
        "? ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: *a\n",
        "!!str ",
        "!!int ",
        "!!binary ",
        "!!python/name:os.system ",
        "!foo ",
        "'",
        '"',
        "\\",
        "#",
        "|\n",
        ">-\n",
        "---\n",
        "...\n",
        "%YAML 1.2\n",
        "%TAG ! x\n",
        "\t",
        "  ",
        "\n",
        "~",
        "null",
        "true",
        "0x1F",
        "0o17",
        "1e999",
        "-.inf",
        ".nan",
        "2026-01-01",
        "${OLD_CRM_TOKEN}",
        "${UNSET}",
        "$$",
        "routes",
        "platforms",
        "channels",
        "weights",
        "default",
        "é",
        "\u202e",
        "\ufeff",
        "\x85",
        "\u2028",
        "9" * 50,
    ]
)


@given(st.lists(YAML_TOKENS | st.text(max_size=4), max_size=60).map("".join))
@FUZZ
def test_yaml_token_soup(text):
    """Text made of YAML's own syntax in random order: tags, anchors, directives, flow
    collections, block scalars, and the top-level keys of routes.yaml."""
    outcome(text)


# --- a valid file, edited as text --------------------------------------------------------------


@st.composite
def edited_text(draw: st.DrawFn) -> str:
    lines = RICH_TEXT.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(
            st.sampled_from(["delete", "double", "swap", "indent", "dedent", "insert", "cut"])
        )
        if edit == "delete":
            del lines[i]
        elif edit == "double":  # a duplicate key, or a duplicate list item
            lines.insert(i, lines[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif edit == "indent":
            lines[i] = "  " + lines[i]
        elif edit == "dedent":
            lines[i] = lines[i][2:] if lines[i].startswith("  ") else lines[i].lstrip()
        elif edit == "insert":
            at = draw(st.integers(0, len(lines[i])))
            token = draw(YAML_TOKENS)
            lines[i] = lines[i][:at] + token + lines[i][at:]
        else:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + "\n"
    return "".join(lines)


def test_the_rich_document_is_valid():
    """The base of the mutations loads: otherwise every mutation would fail for its own reason."""
    assert isinstance(outcome(RICH_TEXT), RouteTable)


@given(edited_text())
@FUZZ
def test_line_edits_of_a_valid_file(text):
    """Deleted, doubled (duplicate keys), swapped, re-indented, cut lines and stray tokens."""
    result = outcome(text)
    if isinstance(result, ConfigError) and "duplicate key" in str(result):
        assert all(i.line is not None for i in result.issues if "duplicate key" in i.message)


# --- a valid document, mutated in place ----------------------------------------------------------

WRONG_TYPES: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, 0, -1, 1.5, "", "x", [], {}, [1, "a"], {"k": "v"}, {"k": None}, [[[]]]]
)
OUT_OF_RANGE = st.sampled_from(
    [
        -1,
        -0.01,
        100.01,
        101,
        10**6,
        10**30,
        -(10**30),
        2**63,
        1e308,
        -1e308,
        math.inf,
        -math.inf,
        math.nan,
    ]
)
BAD_DURATIONS = st.sampled_from(
    [
        "5 parsecs",
        "-1s",
        "1e9h",
        "ms",
        "5ss",
        "1.2.3s",
        "∞",
        "五秒",
        "9" * 400 + "h",
        "nan",
        "inf",
        "P1D",
        "5s; rm -rf /",
    ]
)
DURATIONS_OUT_OF_RANGE = st.sampled_from(
    [-1, -0.01, 365 * 24 * 3600 + 1, 10**30, -(10**30), 2**63, 1e308, math.inf, -math.inf, math.nan]
)
BAD_SIZES = st.sampled_from(["1 XB", "-1MB", "9" * 400 + "GB", "MB", "1.5.5KB", "lots", "inf"])
BAD_URLS = st.sampled_from(
    [
        "ftp://x",
        "http://",
        "http:/x",
        "//host",
        "http://h:99999",
        "http://h/?q=1",
        "http://h/#f",
        "http://h\r\nX-Injected: 1",
        "http://exa mple",
        "http://\x00/",
        "javascript:alert(1)",
        "http://[::1",
        "http://ü.example\u202e",
        "x" * 5000,
    ]
)
BAD_PATHS = st.sampled_from(
    [
        "",
        "$$",
        "$.",
        "$..a",
        "$[?(@.a)]",
        "$.a[",
        "$['a]",
        "a.b",
        "$.a[1:2]",
        "$[-]",
        "$.é",
        "$." + "a." * 300,
    ]
)
HUGE = st.sampled_from(["x" * 100_000, ["x"] * 5000, {f"k{i}": i for i in range(2000)}])
UNICODE = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)
BAD_VALUES = (
    WRONG_TYPES | OUT_OF_RANGE | BAD_DURATIONS | BAD_SIZES | BAD_URLS | BAD_PATHS | HUGE | UNICODE
)

#: keys whose every value above is wrong: the error must name their place
DURATION_KEYS = {
    "timeout",
    "connect_timeout",
    "keepalive",
    "max_wait",
    "backoff_min",
    "backoff_max",
    "window",
    "hold",
    "verify_after",
}
SIZE_KEYS = {"max_size", "max_body"}


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str, tuple[str | int, ...], Any]:
    doc = copy.deepcopy(RICH)
    place = draw(st.sampled_from(RICH_PLACES))
    parent = node_at(doc, place[:-1])
    kind = draw(st.sampled_from(["replace", "replace", "delete", "unknown_key"]))
    value: Any = None
    if kind == "replace":
        last = place[-1]
        if last in DURATION_KEYS and draw(st.booleans()):
            value = draw(BAD_DURATIONS | DURATIONS_OUT_OF_RANGE)
            kind = "bad_duration"
        elif last in SIZE_KEYS and draw(st.booleans()):
            value = draw(BAD_SIZES)
            kind = "bad_size"
        elif last == "url" and draw(st.booleans()):
            value = draw(BAD_URLS)
            kind = "bad_url"
        else:
            value = draw(BAD_VALUES)
        parent[place[-1]] = value
    elif kind == "delete":
        del parent[place[-1]]
    else:
        container = node_at(doc, place)
        assume(isinstance(container, dict))
        value = draw(
            st.sampled_from(["colour", "timeot", "Routes", "x-extra", "wieghts", "ünknown"])
        )
        container[value] = draw(WRONG_TYPES)
    return doc, kind, place, value


@pytest.mark.parametrize("name", ["\n", "a\nb", "tab\there", "\r"])
def test_a_name_with_a_line_break_stays_on_its_issues_line(name):
    """Found by the fuzzer below: a cohort named "\n" was refused at its place, and then listed
    raw in another issue's message ("unknown cohort 'pilot' (cohorts: \n, ...)"), which broke
    that issue over two lines of `cutover validate`. Names in listings are quoted when not plain.
    """
    for section in ("cohorts", "channels"):
        doc = rich_doc()
        if section == "cohorts":
            doc["cohorts"][0]["name"] = name
        else:
            doc["channels"][0] = name
        result = outcome(to_yaml(doc))  # checks one line per issue
        assert isinstance(result, ConfigError), section


@given(mutations())
@FUZZ
def test_structured_mutations_are_refused_at_their_place(mutation):
    """One change to the full document: a wrong type, an out-of-range, huge or unicode value, a
    bad duration, size or URL, a deleted key, an unknown key. The loader never crashes, and
    where the change is wrong by construction the error names its place."""
    doc, kind, place, value = mutation
    result = outcome(to_yaml(doc))
    if kind in ("bad_duration", "bad_size", "bad_url"):
        assert isinstance(result, ConfigError), (kind, place, value)
        assert issue_at_or_under(result, place), (place, str(result))
    elif kind == "unknown_key" and _allowed_keys(place):
        assert isinstance(result, ConfigError), (place, value)
        wanted = (*place, value)
        found = [i for i in result.issues if i.place == wanted]
        assert found, (wanted, str(result))
        assert all(i.line is not None for i in found)
        assert "unknown key" in found[0].message


@given(mutations())
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_structured_mutations_as_json(mutation):
    """The same mutations written as JSON (YAML 1.2 flow style, one line): still placed."""
    import orjson

    doc = mutation[0]
    try:
        data = orjson.dumps(doc)
    except (orjson.JSONEncodeError, TypeError):  # NaN/inf and huge integers are not JSON
        return
    outcome(data)


@given(
    st.sampled_from(
        [
            ("platforms", "old", "crm", "headers", "Authorization"),
            ("routes", 0, "mirror_headers", "X-Suppress-Notifications"),
        ]
    ),
    st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and "$" not in s),
)
@settings(max_examples=100, deadline=None)
def test_a_header_value_from_the_environment_never_shows_in_an_error(place, secret):
    """A credential read with ${VAR} that cannot be sent (CR, LF, control characters) is
    refused at its place, without its value: errors are printed, logged and shown in the
    admin state."""
    doc = copy.deepcopy(RICH)
    node_at(doc, place[:-1])[place[-1]] = "Bearer ${SECRET_TOKEN}"
    result = outcome(to_yaml(doc), env={**ENV, "SECRET_TOKEN": secret})
    if isinstance(result, ConfigError):
        assert issue_at_or_under(result, place), str(result)
        if len(secret) > 3:
            assert secret not in str(result)
    else:
        assert not any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in secret)


# --- bombs and depth ---------------------------------------------------------------------------


def alias_bomb(width: int, depth: int) -> str:
    lines = ["version: 1", f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [
        f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]"
        for level in range(1, depth + 1)
    ]
    return "\n".join(lines) + "\n"


@given(st.integers(2, 10), st.integers(1, 9))
@settings(max_examples=40, deadline=None)
def test_alias_bombs_are_refused_without_being_expanded(width, depth):
    """`&a [x x x]`, `&b [*a *a *a]`, ...: width**depth values from a few hundred bytes. Past a
    budget tied to the file's size the loader refuses at once, whatever the expansion."""
    text = alias_bomb(width, depth)
    started = time.monotonic()
    result = outcome(text)
    elapsed = time.monotonic() - started
    assert isinstance(result, ConfigError)
    expansion = sum(width**level for level in range(1, depth + 2))
    if expansion > 2 * len(text) + 10_000:
        assert "expands to more than" in str(result), str(result)[:300]
    assert elapsed < 2.0, f"{width}**{depth}: {elapsed:.1f}s"


@given(st.integers(1, 200), st.sampled_from(["[", "{a: ", "- "]))
@settings(max_examples=40, deadline=None)
def test_deep_nesting_is_refused_past_the_limit(depth, opener):
    """Nesting in flow or block style: fine up to MAX_DEPTH, a placed error beyond."""
    if opener == "- ":
        body = "".join("  " * level + "- \n" for level in range(depth)) + "  " * depth + "x\n"
        text = "version: 1\nchannels:\n" + body
    else:
        closer = "]" if opener == "[" else "}"
        text = "version: 1\nchannels: " + opener * depth + "x" + closer * depth + "\n"
    result = outcome(text)
    assert isinstance(result, ConfigError)
    if depth > MAX_DEPTH + 1:
        assert "nested deeper than" in str(result), str(result)[:300]


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [*a]\n",  # an alias of itself
        "a: &a {b: *a}\n",
        "x: &x {a: 1}\ny: {<<: *x, <<: *x}\n",  # a merge key twice
        "version: 1\nversion: 1\n",  # a duplicate key
        "? [a, b]\n: 1\n",  # a complex key
        "~: null\n",  # a null key
        "1.5: x\n",
        "!!python/object/apply:os.system ['true']\n",  # an unsafe tag is only a tag
        "a: !!binary aGVsbG8=\n",
        "a: !!set {x, y}\n",
        "a: !!int \n",  # ruamel's constructors raise IndexError, KeyError, AttributeError...
        "a: !!bool x\n",
        "a: !!set \n",
        "? !!pairs []\n: 1\n",
        "a: !!float _\n",
        "a: !!timestamp 2001-13-99\n",
        "version: " + "9" * 5000 + "\n",  # an integer Python refuses to convert
        "version: 1\n\x00\n",
        "\ufeffversion: 1\n",
        "%YAML 1.1\n---\nversion: 1\n",
        "--- 1\n--- 2\n",  # two documents
        "",
        "   \n",
    ],
)
def test_yaml_oddities(text):
    """What YAML allows and routes.yaml has no use for: refused, with a place or a line."""
    assert isinstance(outcome(text), ConfigError)


def test_files_that_cannot_be_read(tmp_path):
    """A directory, a missing file, a file past the size limit: ConfigError naming the file."""
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    for path in (tmp_path, tmp_path / "missing.yaml", big):
        with pytest.raises(ConfigError) as info:
            load_config(path, env={})
        assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("place", "value"),
    [
        (("routes", 1, "compare", "normalize", "$.subject"), [["lower"]]),  # was a TypeError
        (("routes", 1, "compare", "normalize", "$.subject"), {"lower": 1}),
        (("routes", 0, "contract", "convert", "$.phone", "to_new"), [{"e164": 44}]),
        (("routes", 0, "compare", "redact"), [["$.email"]]),
        (("platforms", "old", "crm", "headers"), {"X-A": ["a"]}),
    ],
)
def test_values_of_the_wrong_shape_are_refused_at_their_place(place, value):
    """Found by the mutations above, kept as plain cases: a list or mapping where a name is
    expected is a placed error, not an exception from inside a validator."""
    doc = copy.deepcopy(RICH)
    node_at(doc, place[:-1])[place[-1]] = value
    result = outcome(to_yaml(doc))
    assert isinstance(result, ConfigError)
    assert issue_at_or_under(result, place[:3]), str(result)
