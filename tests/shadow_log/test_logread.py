"""LogReader and Filters: files oldest first, QA's filters as tables, damaged lines counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from shadow.logread import (
    Filters,
    LogReader,
    PathGeneralizer,
    check_record,
    list_log_files,
    parse_status,
    parse_time,
)
from tests.shadow_log import diff, record, write_log

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

RECORDS = [
    record(
        "a",
        ts="2026-11-23T09:00:00.000Z",
        result="mismatch",
        differences=[diff("$.phone", old="***", new="***"), diff("$.comments[2].body", "missing")],
    ),
    record(
        "b",
        ts="2026-11-23T10:30:00.000Z",
        route="tickets",
        channel="email",
        cohort="everyone",
        status={"old": 200, "new": 500},
        result="mismatch",
        differences=[diff("@status", old=200, new=500)],
    ),
    record(
        "c",
        ts="2026-11-23T11:30:00.000Z",
        kind="verify",
        customer="sha256:1111111111111111",
        noise=[diff("$.etag")],
    ),
    record(
        "d",
        ts="2026-11-23T11:45:00+00:00",
        channel="phone",
        status={"old": 404, "new": None},
        result="error",
        error={"side": "new", "kind": "upstream-timeout"},
    ),
    record(
        "e",
        ts="2026-11-23T11:59:00.000Z",
        status={"old": 503, "new": 503},
        result="mismatch",
        differences=[diff("@headers.etag"), diff("$.items[0].id"), diff("$['odd key']")],
    ),
]

CASES: list[tuple[dict[str, Any], str]] = [
    ({}, "abcde"),
    ({"routes": ["tickets"]}, "b"),
    ({"routes": ["tickets", "contacts"]}, "abcde"),
    ({"routes": ["nope"]}, ""),
    ({"channels": ["chat"]}, "ace"),
    ({"channels": ["email", "phone"]}, "bd"),
    ({"cohorts": ["everyone"]}, "b"),
    ({"kinds": ["verify"]}, "c"),
    ({"kinds": ["shadow"]}, "abde"),
    ({"results": ["mismatch"]}, "abe"),
    ({"results": ["error", "match"]}, "cd"),
    ({"since": "2026-11-23T10:00"}, "bcde"),
    ({"since": "2026-11-23T11:45:00Z"}, "de"),
    ({"until": "2026-11-23T10:30:00.000Z"}, "ab"),
    ({"since": "20m"}, "de"),
    ({"since": "90m", "until": "30m"}, "bc"),  # both ends included
    ({"since": "1d"}, "abcde"),
    ({"until": "2026-11-22"}, ""),
    ({"statuses": ["500"]}, "b"),
    ({"statuses": ["5xx"]}, "be"),
    ({"statuses": ["new=500"]}, "b"),
    ({"statuses": ["old=500"]}, ""),
    ({"statuses": ["old=4xx"]}, "d"),
    ({"statuses": ["new!=2xx"]}, "be"),
    ({"statuses": ["old!=new"]}, "b"),  # d: new failed, no status to compare
    ({"statuses": ["old=new"]}, "ace"),
    ({"statuses": ["404", "500"]}, "bd"),
    ({"paths": ["$.phone"]}, "a"),
    ({"paths": ["$.comments[*].body"]}, "a"),
    ({"paths": ["$.comments"]}, "a"),  # at or under
    ({"paths": ["$.comments[1].body"]}, ""),
    ({"paths": ["$.etag"]}, ""),  # noise is not a difference
    ({"paths": ["@status"]}, "b"),
    ({"paths": ["@headers"]}, "e"),
    ({"paths": ["@headers.etag"]}, "e"),
    ({"paths": ["$.items[*].id", "$.phone"]}, "ae"),
    ({"paths": ["$['odd key']"]}, "e"),
    ({"paths": ["$"]}, "ae"),
    ({"customers": ["sha256:1111111111111111"]}, "c"),
    ({"request_ids": ["d", "e"]}, "de"),
    ({"routes": ["contacts"], "results": ["mismatch"], "channels": ["chat"]}, "ae"),
    ({"routes": ["contacts"], "statuses": ["5xx"], "since": "2h"}, "e"),
]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("diffs")
    write_log(directory / "diffs-i1-20261123T100000.000000.jsonl", RECORDS[:2])
    write_log(directory / "diffs-i1.jsonl", RECORDS[2:])
    return directory


@pytest.mark.parametrize(("filters", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_filters(log_dir: Path, filters: dict[str, Any], expected: str) -> None:
    reader = LogReader(log_dir, Filters.parse(now=NOW, **filters))
    assert "".join(r["request_id"] for r in reader) == expected
    assert reader.records == 5 and reader.matched == len(expected) and reader.unreadable == 0


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"statuses": ["bogus"]}, "expected a status"),
        ({"statuses": ["new=600"]}, "expected a status"),
        ({"statuses": ["old=old"]}, "expected a status"),
        ({"since": "yesterday"}, "expected a time"),
        ({"since": "1h", "until": "2h"}, "is after"),
        ({"paths": ["$.a[?(@.b)]"]}, "--path"),
        ({"paths": ["phone"]}, "--path"),
        ({"kinds": ["mirror"]}, "--kind"),
        ({"results": ["ok"]}, "--result"),
    ],
)
def test_bad_filters_say_what_was_expected(filters: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Filters.parse(now=NOW, **filters)


def test_status_filter_table() -> None:
    cases = [
        ("500", {"old": 200, "new": 500}, True),
        ("5XX", {"old": 200, "new": 502}, True),
        ("new = 404", {"old": 404, "new": 200}, False),
        ("old!=2xx", {"old": 200, "new": 500}, False),
        ("old!=2xx", {"old": 301, "new": 200}, True),
        ("new!=old", {"old": 200, "new": 201}, True),
        ("old=new", {"old": None, "new": None}, False),
        ("500", None, False),
    ]
    for text, status, expected in cases:
        assert parse_status(text)(status) is expected, (text, status)


def test_times() -> None:
    assert parse_time("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_time("1.5d", NOW) == NOW - timedelta(hours=36)
    assert parse_time("2026-11-23") == datetime(2026, 11, 23, tzinfo=UTC)
    assert parse_time("2026-11-23T12:00+01:00") == datetime(2026, 11, 23, 11, tzinfo=UTC)


def test_files_are_read_oldest_first(tmp_path: Path) -> None:
    """Rotated files by the time in their names (any instance), then the active files."""
    names = [
        "diffs-b.jsonl",
        "diffs-a-20261123T110000.000000.jsonl",
        "diffs-b-20261123T100000.000000.jsonl",
        "diffs-a.jsonl",
        "diffs-a-b-20261123T103000.000000.jsonl",
    ]
    for n, name in enumerate(names):
        write_log(tmp_path / name, [record(name)] * (n + 1))
    (tmp_path / "notes.txt").write_text("not a log")
    (tmp_path / "diffs-dir.jsonl").mkdir()
    files = list_log_files(tmp_path)
    assert [f.path.name for f in files] == [
        "diffs-b-20261123T100000.000000.jsonl",
        "diffs-a-b-20261123T103000.000000.jsonl",
        "diffs-a-20261123T110000.000000.jsonl",
        "diffs-a.jsonl",
        "diffs-b.jsonl",
    ]
    assert [f.instance for f in files] == ["b", "a-b", "a", "a", "b"]
    reader = LogReader(tmp_path)
    assert [r["request_id"] for r in reader][:3] == [files[0].path.name] * 3
    assert reader.bytes_read == reader.total_bytes == sum(f.size for f in files)


def test_damaged_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    """Bad JSON, other JSON, missing fields, a huge line, a cut last line: counted, skipped."""
    good = [record("ok1"), record("ok2")]
    garbage = b"".join(
        [
            b"this is not json\n",
            b"[1, 2, 3]\n",
            orjson.dumps({"ts": "x", "route": "contacts"}) + b"\n",  # no request_id
            orjson.dumps(record("bad", result="maybe")) + b"\n",
            orjson.dumps(record("bad", differences="oops")) + b"\n",
            b"\n   \n",  # blank lines are not records and not damage
            b'{"padding": "' + b"x" * 5000 + b'"}\n',  # longer than max_line below
            orjson.dumps(record("ok3")) + b"\n",
            b'{"ts": "2026-11-23T10:00:00Z", "request_id": "cut',  # the writer died mid-line
        ]
    )
    write_log(tmp_path / "diffs-i1.jsonl", good, garbage)
    reader = LogReader(tmp_path, max_line=4096)
    assert [r["request_id"] for r in reader] == ["ok1", "ok2", "ok3"]
    assert reader.unreadable == 7
    assert reader.lines == 10
    assert reader.bytes_read == reader.total_bytes


def test_a_file_that_vanishes_is_counted(tmp_path: Path) -> None:
    """A rotated file pruned between listing and reading is skipped and counted."""
    first = write_log(tmp_path / "diffs-i1-20261123T100000.000000.jsonl", [record("gone")])
    write_log(tmp_path / "diffs-i1.jsonl", [record("here")])
    reader = LogReader(tmp_path)
    first.unlink()
    assert [r["request_id"] for r in reader] == ["here"]
    assert reader.missing_files == 1


def test_progress_is_reported(tmp_path: Path) -> None:
    write_log(tmp_path / "diffs-i1.jsonl", [record(f"r{n}") for n in range(200)])
    seen: list[int] = []
    reader = LogReader(
        tmp_path, on_progress=lambda r: seen.append(r.bytes_read), progress_step=10_000
    )
    assert sum(1 for _ in reader) == 200
    assert len(seen) >= 5
    assert seen == sorted(seen) and seen[-1] == reader.total_bytes


def test_the_short_shape_of_the_design_is_accepted() -> None:
    """DESIGN §4's example has no kind or result: they follow from `match` and `error`."""
    short = {"ts": "t", "request_id": "r", "route": "x", "match": False, "differences": []}
    checked = check_record(dict(short))
    assert checked is not None and checked["result"] == "mismatch" and checked["kind"] == "shadow"
    failed = check_record({**short, "error": {"side": "new", "kind": "upstream-timeout"}})
    assert failed is not None and failed["result"] == "error"
    assert check_record({"ts": "t", "request_id": "r", "route": "x"}) is None
    nulls = check_record({**short, "differences": None, "noise": None})
    assert nulls is not None and nulls["differences"] == [] and nulls["noise"] == []


def test_generalised_paths() -> None:
    general = PathGeneralizer()
    assert general("$.comments[3].body") == "$.comments[*].body"
    assert general("$.a[0][12]") == "$.a[*][*]"
    assert general("$['x[1]'].y") == "$['x[1]'].y"  # a key that looks like an index stays
    assert general("@headers.etag") == "@headers.etag"
    assert general("$") == "$"
    assert general("@contract") == "@contract"
