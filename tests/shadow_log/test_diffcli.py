"""`cutover diff` through its own argparse parser: the summary, `show`, config and exit codes."""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.observe import HASH_KEY_ENV, CustomerHasher
from shadow import diffcli
from shadow.diffcli import add_diff_command, render_exchange
from tests.configs import base_doc
from tests.shadow_log import diff, record, write_log

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run(*argv: str) -> int:
    """What `cutover ...` will do once proxy/cli.py registers the command."""
    parser = argparse.ArgumentParser(prog="cutover")
    parser.add_argument("--config", "-c", default="routes.yaml")
    add_diff_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


SHOWN = record(
    "req-1",
    result="mismatch",
    differences=[
        diff("$.phone", old="***", new="***"),
        diff("$.comments[2]", "missing", old={"body": "***"}, new=None),
        diff("$.tags", "extra", old=None, new=["vip"]),
        diff("$.score", "type", old=1, new="1"),
    ],
    noise=[diff("$.etag", old="a", new="b")],
    bodies={
        "old": {
            "id": 42,
            "phone": "***",
            "score": 1,
            "comments": [{"body": "a"}, {"body": "b"}, {"body": "***"}],
            "etag": "a",
        },
        "new": {
            "id": 42,
            "phone": "***",
            "score": "1",
            "comments": [{"body": "a"}, {"body": "b"}],
            "etag": "b",
            "tags": ["vip"],
        },
    },
)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    directory = tmp_path / "diffs"
    records = [
        record("m1"),
        record(
            "m2",
            route="tickets",
            status={"old": 200, "new": 503},
            result="mismatch",
            differences=[diff("@status", old=200, new=503)],
        ),
        SHOWN,
        record(
            "err",
            result="error",
            status={"old": 200, "new": None},
            error={"side": "new", "kind": "upstream-timeout"},
        ),
    ]
    write_log(directory / "diffs-i1.jsonl", records, b'garbage\n{"cut": \n')
    write_log(directory / "diffs-i2.jsonl", [], b"[]\n")
    return directory


def write_config(folder: Path, **diff_log: Any) -> Path:
    doc = base_doc()
    doc["diff_log"] = {"dir": "logs", **diff_log}
    doc["platforms"]["old"]["crm"]["headers"] = {"Authorization": "Bearer ${CRM_TOKEN}"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "routes.yaml"
    path.write_bytes(orjson.dumps(doc))
    return path


# --- the summary -------------------------------------------------------------------------------


def test_summary_as_text(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("diff", "--dir", str(logs)) == 0
    out = capsys.readouterr().out
    assert "4 exchanges: 3 compared (match rate 33.3%), 1 errors" in out
    assert "3 lines could not be read (skipped)" in out
    assert "== contacts ===" in out and "== tickets ===" in out
    assert "$.comments[*]" in out and "200->503 x1" in out
    assert all(len(line) <= 80 for line in out.splitlines() if str(logs) not in line)


def test_summary_as_json(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("diff", "--dir", str(logs), "--json", "--route", "tickets", "--status", "5xx") == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["unreadable_lines"] == 3 and report["files"] == 2
    assert report["filters"] == {"routes": ["tickets"], "statuses": ["5xx"]}
    assert report["totals"]["exchanges"] == 1
    assert report["routes"][0]["status_pairs"] == [{"old": 200, "new": 503, "count": 1}]


def test_an_empty_directory_is_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("diff", "--dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "No diff log files" in out and "0 lines could not be read" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["diff", "--dir", "/nonexistent/diffs"], "no diff log directory"),
        (["diff", "--dir", "{logs}/diffs-i1.jsonl"], "is not a directory"),
        (["diff", "--dir", "{logs}", "--status", "teapot"], "expected a status"),
        (["diff", "--dir", "{logs}", "--since", "soon"], "expected a time"),
        (["diff", "--dir", "{logs}", "--path", "comments"], "--path"),
        (["-c", "/nonexistent/routes.yaml", "diff"], "no routes.yaml"),
        (["diff", "show", "x", "--dir", "/nonexistent"], "no diff log directory"),
    ],
)
def test_bad_input_exits_2(
    logs: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(*(a.format(logs=logs) for a in argv)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["diff", "--top", "0"], ["diff", "show"], ["diff", "--kind", "mirror"], ["diff", "nope"]],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(*argv)
    assert exc.value.code == 2


# --- finding the directory ---------------------------------------------------------------------


def test_the_directory_comes_from_routes_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """diff_log.dir is relative to routes.yaml's folder, and no platform secret is needed."""
    monkeypatch.delenv("CRM_TOKEN", raising=False)
    config = write_config(tmp_path / "conf")
    write_log(tmp_path / "conf" / "logs" / "diffs-i1.jsonl", [record("x")])
    monkeypatch.chdir(tmp_path)
    for argv in (["-c", "conf/routes.yaml", "diff"], ["diff", "-c", str(config), "--json"]):
        assert run(*argv) == 0
        captured = capsys.readouterr()
        assert "1 exchanges" in captured.out or '"exchanges": 1' in captured.out
        assert captured.err == ""
    monkeypatch.chdir(tmp_path / "conf")  # the default --config is ./routes.yaml
    assert run("diff", "show", "x") == 0


def test_a_config_that_needs_missing_variables_still_gives_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A platform URL from a variable QA does not have: warned about, diffs still readable."""
    monkeypatch.delenv("OLD_CRM_URL", raising=False)
    doc = base_doc(old="${OLD_CRM_URL}")
    doc["diff_log"] = {"dir": "logs"}
    (tmp_path / "routes.yaml").write_bytes(orjson.dumps(doc))
    write_log(tmp_path / "logs" / "diffs-i1.jsonl", [record("x")])
    assert run("-c", str(tmp_path / "routes.yaml"), "diff", "show", "x") == 0
    assert "problem(s)" in capsys.readouterr().err


def test_a_broken_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "routes.yaml").write_text("version: [1\n")
    assert run("-c", str(tmp_path / "routes.yaml"), "diff") == 2
    assert "--dir DIR" in capsys.readouterr().err


def test_customer_keys_are_hashed_like_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(HASH_KEY_ENV, raising=False)
    config = write_config(tmp_path)
    mine = CustomerHasher("crm-2026")("C-1001")
    assert mine is not None
    write_log(
        tmp_path / "logs" / "diffs-i1.jsonl",
        [record("mine", customer=mine), record("other", customer="sha256:ffffffffffffffff")],
    )

    def found(*argv: str) -> list[Any]:
        assert run(*argv, "--json") == 0
        report = orjson.loads(capsys.readouterr().out)
        return [report["totals"]["exchanges"], report["filters"].get("customers")]

    assert found("-c", str(config), "diff", "--customer", "C-1001") == [1, [mine]]
    assert found("-c", str(config), "diff", "--customer", mine) == [1, [mine]]
    assert found("-c", str(config), "diff", "--customer", "C-9999") == [
        0,
        [CustomerHasher("crm-2026")("C-9999")],
    ]
    # with --dir and no routes.yaml, the key must come from the environment
    logs = str(tmp_path / "logs")
    assert (
        run("-c", str(tmp_path / "none.yaml"), "diff", "--dir", logs, "--customer", "C-1001") == 2
    )
    assert HASH_KEY_ENV in capsys.readouterr().err
    monkeypatch.setenv(HASH_KEY_ENV, "s3cret")
    keyed = CustomerHasher("ignored", key="s3cret")("C-1001")
    assert found(
        "-c", str(tmp_path / "none.yaml"), "diff", "--dir", logs, "--customer", "C-1001"
    ) == [0, [keyed]]


# --- show --------------------------------------------------------------------------------------


def lines_with(out: str, text: str) -> list[str]:
    return [line for line in out.splitlines() if text in line]


def test_show_marks_the_differing_lines(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("diff", "show", "req-1", "--dir", str(logs)) == 0
    out = capsys.readouterr().out
    assert not ANSI.search(out)  # piped: markers, no colour
    assert "route     contacts" in out and "status    old 200   new 200" in out
    assert "call      GET /api/contacts/42?customer=***" in out
    assert "old (primary)" in out
    phone = lines_with(out, '"phone"')
    assert len(phone) == 1 and phone[0].startswith("! ") and phone[0].count('"***"') == 2
    assert lines_with(out, '"id": 42')[0].startswith("  ")  # equal lines are not marked
    assert lines_with(out, '"score"')[0].startswith("! ")
    assert lines_with(out, '"etag"')[0].startswith("~ ")
    assert lines_with(out, '"tags"')[0].startswith("+ ")
    assert lines_with(out, '"vip"')[0].startswith("+ ")
    missing = [line for line in out.splitlines() if line.startswith("- ") and "|" in line]
    assert len(missing) == 3  # the third comment, { "body": "***" }, only in old
    assert all("|" in line and line.split("|")[1].strip() == "" for line in missing)
    assert "Differences (4):" in out and "- $.comments[2]  (missing)" in out
    assert "    new: (absent)" in out
    assert "~ $.etag  (changed)" in out
    assert "3 lines could not be read (skipped)" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_show_aligns_by_path(capsys: pytest.CaptureFixture[str]) -> None:
    """Rows line up by JSON path: a key only new has sits beside a blank on the old side."""
    text = render_exchange(SHOWN, width=80)
    rows = [line for line in text.splitlines() if " | " in line]
    left = [line[2:39].strip() for line in rows]
    right = [line[42:].strip() for line in rows]
    assert left[rows.index(lines_with(text, '"etag"')[0])] == '"etag": "a"'
    assert right[rows.index(lines_with(text, '"etag"')[0])] == '"etag": "b",'
    assert left[rows.index(lines_with(text, '"tags"')[0])] == ""
    # commas follow each side's own last element
    assert '"body": "b"' in right[left.index('"body": "b"')]
    assert right[left.index("},")] in ("}", "},")


def test_show_as_json(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("diff", "show", "req-1", "--dir", str(logs), "--json") == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["found"] == 1 and shown["unreadable_lines"] == 3
    assert shown["records"][0]["bodies"] == SHOWN["bodies"]


def test_show_of_an_unknown_request_exits_1(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("diff", "show", "nope", "--dir", str(logs)) == 1
    assert "no exchange with request id nope" in capsys.readouterr().err


def test_show_without_bodies_explains(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("diff", "show", "m2", "--dir", str(logs)) == 0
    out = capsys.readouterr().out
    assert "No bodies in this record" in out and "! @status  (changed)" in out
    assert run("diff", "show", "err", "--dir", str(logs)) == 0
    out = capsys.readouterr().out
    assert "the new platform failed" in out and "error     new side: upstream-timeout" in out
    hashed = render_exchange(record("h", mode="hash", result="mismatch", differences=[diff("$")]))
    assert "compared by hash" in hashed


def test_show_every_record_of_a_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "diffs-i1.jsonl", [record("w"), record("w", kind="verify")])
    assert run("diff", "show", "w", "--dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "2 records for request w" in out and "w  (verify)" in out


def test_text_bodies_are_compared_line_by_line() -> None:
    text = render_exchange(
        record(
            "t",
            mode="bytes",
            result="mismatch",
            differences=[diff("$", old="<12 bytes>")],
            bodies={"old": "line one\nline two", "new": "line one\nline 2"},
        )
    )
    assert lines_with(text, "line one")[0].startswith("  ")
    assert lines_with(text, "line two")[0].startswith("! ")


def test_long_values_are_cut_to_the_column() -> None:
    long = "x" * 300
    shown = record(
        "l",
        bodies={"old": {"note": long}, "new": {"note": long + "y"}},
        result="mismatch",
        differences=[diff("$.note", old=long, new=long + "y")],
    )
    text = render_exchange(shown, width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" in text


@pytest.mark.parametrize(
    ("argv", "env", "coloured"),
    [([], {}, True), (["--no-color"], {}, False), ([], {"NO_COLOR": "1"}, False)],
)
def test_colour_on_a_terminal_unless_told_not_to(
    logs: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    coloured: bool,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    terminal = Tty()
    monkeypatch.setattr("sys.stdout", terminal)
    assert run("diff", "show", "req-1", "--dir", str(logs), "--width", "80", *argv) == 0
    out = terminal.getvalue()
    assert bool(ANSI.search(out)) is coloured
    phone = lines_with(ANSI.sub("", out), '"phone"')[0]
    assert phone.startswith("! ")  # the gutter marker is there either way
    if coloured:
        assert "\x1b[33m! " in out


def test_progress_goes_to_a_terminals_stderr_only(
    logs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Big logs on a terminal get a progress line on stderr; stdout stays clean JSON."""
    monkeypatch.setattr(diffcli, "PROGRESS_ABOVE", 0)
    terminal = Tty()
    monkeypatch.setattr("sys.stderr", terminal)
    assert run("diff", "--dir", str(logs), "--json") == 0
    assert "reading diff logs:" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r")  # the line is cleared at the end
    orjson.loads(capsys.readouterr().out)

    quiet = Tty()
    monkeypatch.setattr("sys.stderr", quiet)
    assert run("diff", "--dir", str(logs), "--no-progress") == 0
    assert quiet.getvalue() == ""
