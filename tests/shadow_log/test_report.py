"""Summary: counts, rates, generalised paths, breakdowns, noise apart, suggested ignore rules."""

from __future__ import annotations

import io
import statistics
from typing import Any

import pytest
from ruamel.yaml import YAML

from shadow.report import Histogram, Summary, render_text
from tests.shadow_log import diff, record


def contacts_log() -> list[dict[str, Any]]:
    """900 compared exchanges on contacts (all mismatched: timestamps always differ) + 20 errors."""
    out: list[dict[str, Any]] = []
    for n in range(900):
        differences = [
            diff("$.updated_at", old="2026-11-23T10:00:00Z", new="2026-11-23T10:00:01Z"),
            diff("@headers.x-request-id", old="1", new="2"),
        ]
        if n < 100:
            differences.append(diff("$.phone", old="***", new="***"))
        if n < 50:
            differences.append(diff(f"$.comments[{n % 3}].body", "missing", old="hi", new=None))
            differences.append(diff("$.comments[7].body", "missing", old="yo", new=None))
        if n < 860:  # 95.6 %, but sometimes absent on one side: not like a timestamp
            kind = "extra" if n < 10 else "changed"
            differences.append(diff("$.generated_id", kind, old=None if n < 10 else 1, new=2))
        if n < 850:  # 94.4 %: below the bar
            differences.append(diff("$.nearly"))
        status = {"old": 200, "new": 200}
        if 100 <= n < 110:
            status = {"old": 200, "new": 404}
            differences.append(diff("@status", old=200, new=404))
        out.append(
            record(
                f"c{n}",
                ts=f"2026-11-23T10:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
                channel=("chat", "email", "phone")[n % 3],
                cohort="pilot" if n < 300 else "everyone",
                status=status,
                latency_ms={"old": 10.0 + n % 10, "new": 100.0 + n},
                result="mismatch",
                differences=differences,
                noise=[diff("$.etag"), diff("$.items[4].etag"), diff("$.items[5].etag")],
            )
        )
    for n in range(20):
        side, kind = ("new", "upstream-timeout") if n < 15 else ("old", "upstream-connect")
        out.append(
            record(
                f"e{n}",
                ts="2026-11-23T09:00:00.000Z",
                channel="chat",
                status={"old": 200, "new": None} if side == "new" else {"old": None, "new": 200},
                latency_ms={"old": 10.0, "new": None},
                result="error",
                error={"side": side, "kind": kind},
            )
        )
    return out


def tickets_log() -> list[dict[str, Any]]:
    out = []
    for n in range(200):
        mismatch = n < 10
        out.append(
            record(
                f"t{n}",
                route="tickets",
                kind="verify" if n % 2 else "shadow",
                latency_ms={"old": 5.0, "new": 5.0},
                result="mismatch" if mismatch else "match",
                differences=[diff(f"$.items[{n}].id", "type", old=1, new="1")] if mismatch else [],
            )
        )
    return out


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return Summary(top=20).add_all(contacts_log() + tickets_log()).report()


def route(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in report["routes"] if r["route"] == name)


def test_counts_and_rates(report: dict[str, Any]) -> None:
    assert report["totals"] == {
        "exchanges": 1120,
        "compared": 1100,
        "matched": 190,
        "mismatched": 910,
        "errors": 20,
        "match_rate": 190 / 1100,
    }
    contacts, tickets = route(report, "contacts"), route(report, "tickets")
    assert [r["route"] for r in report["routes"]] == ["contacts", "tickets"]  # busiest first
    assert (contacts["compared"], contacts["mismatched"], contacts["errors"]) == (900, 900, 20)
    assert contacts["match_rate"] == 0.0
    assert tickets["match_rate"] == 0.95
    assert tickets["kinds"] == {"shadow": 100, "verify": 100}
    assert report["first_ts"] == "2026-11-23T09:00:00.000Z"
    assert report["last_ts"] == "2026-11-23T10:14:59.000Z"


def test_paths_are_generalised_and_counted_once_per_exchange(report: dict[str, Any]) -> None:
    paths = {p["path"]: p for p in route(report, "contacts")["paths"]}
    assert list(paths) == [
        "$.updated_at",
        "@headers.x-request-id",
        "$.generated_id",
        "$.nearly",
        "$.phone",
        "$.comments[*].body",
        "@status",
    ]
    comments = paths["$.comments[*].body"]
    assert (comments["count"], comments["occurrences"], comments["kinds"]) == (50, 100, ["missing"])
    assert paths["$.phone"]["rate"] == pytest.approx(100 / 900)
    assert paths["$.generated_id"]["kinds"] == ["changed", "extra"]
    tickets = route(report, "tickets")["paths"]
    assert tickets == [
        {"path": "$.items[*].id", "count": 10, "rate": 0.05, "occurrences": 10, "kinds": ["type"]}
    ]


def test_top_limits_the_list_but_not_the_total() -> None:
    report = Summary(top=3).add_all(contacts_log()).report()
    contacts = route(report, "contacts")
    assert len(contacts["paths"]) == 3 and contacts["paths_total"] == 7
    assert "4 more paths" in render_text(report)


def test_noise_is_kept_apart(report: dict[str, Any]) -> None:
    contacts = route(report, "contacts")
    assert contacts["noise"] == [
        {"path": "$.etag", "count": 900, "rate": 1.0},
        {"path": "$.items[*].etag", "count": 900, "rate": 1.0},
    ]
    assert not any("etag" in p["path"] for p in contacts["paths"])


def test_breakdowns(report: dict[str, Any]) -> None:
    contacts = route(report, "contacts")
    channels = {c["channel"]: c for c in contacts["channels"]}
    assert channels["chat"] == {
        "channel": "chat",
        "exchanges": 320,
        "compared": 300,
        "mismatched": 300,
        "mismatch_rate": 1.0,
        "errors": 20,
    }
    assert channels["email"]["compared"] == channels["phone"]["compared"] == 300
    cohorts = {c["cohort"]: c for c in contacts["cohorts"]}
    assert (cohorts["pilot"]["compared"], cohorts["pilot"]["errors"]) == (300, 20)
    assert cohorts["everyone"]["compared"] == 600
    assert contacts["errors_by"] == [
        {"side": "new", "kind": "upstream-timeout", "count": 15},
        {"side": "old", "kind": "upstream-connect", "count": 5},
    ]
    assert contacts["status_pairs"] == [{"old": 200, "new": 404, "count": 10}]


def test_latency_percentiles_from_the_histogram(report: dict[str, Any]) -> None:
    latency = route(report, "contacts")["latency_ms"]
    new = [100.0 + n for n in range(900)]
    exact = statistics.quantiles(new, n=100, method="inclusive")
    assert latency["new"]["count"] == 900
    assert latency["new"]["p50"] == pytest.approx(exact[49], rel=0.03)
    assert latency["new"]["p95"] == pytest.approx(exact[94], rel=0.03)
    assert latency["new"]["max"] == 999.0
    assert latency["old"]["count"] == 920  # errors still timed the side that answered
    assert route(report, "tickets")["latency_ms"]["new"]["p95"] == 5.0


def test_histogram_memory_is_fixed() -> None:
    histogram = Histogram()
    for n in range(100_000):
        histogram.add(n * 0.37 % 5000)
    assert len(histogram.buckets) <= Histogram.SIZE
    histogram.add(float("nan"))
    histogram.add(-1.0)
    assert histogram.count == 100_000


def test_suggested_ignore_rules(report: dict[str, Any]) -> None:
    """Noise and values that differ nearly always (≥95 %, always both present) are suggested;
    a field sometimes missing, one under the bar, the status and small samples are not."""
    contacts = route(report, "contacts")
    assert [(s["path"], s["reason"]) for s in contacts["suggestions"]] == [
        ("$.etag", "noise"),
        ("$.items[*].etag", "noise"),
        ("$.updated_at", "always-differs"),
        ("@headers.x-request-id", "always-differs"),
    ]
    assert route(report, "tickets")["suggestions"] == []

    text = report["suggestions_yaml"]
    parsed = YAML(typ="safe").load(io.StringIO(text))
    assert parsed == [
        {"name": "contacts", "compare": {"ignore": ["$.etag", "$.items[*].etag", "$.updated_at"]}}
    ]
    assert "# headers: drop 'x-request-id'" in text
    assert "differs in 100.0% (900x)" in text


def test_few_samples_suggest_nothing_but_noise() -> None:
    report = Summary(suggest_min=20).add_all(contacts_log()[:19]).report()
    assert [s["path"] for s in route(report, "contacts")["suggestions"]] == [
        "$.etag",
        "$.items[*].etag",
    ]


def test_distinct_paths_are_capped() -> None:
    """Beyond max_paths distinct paths per route, the rest is counted as 'other paths'."""
    records = [
        record(f"r{n}", result="mismatch", differences=[diff(f"$.k{n % 5}"), diff("$.x[1]")])
        for n in range(50)
    ]
    report = Summary(max_paths=3).add_all(records).report()
    contacts = route(report, "contacts")
    assert contacts["paths_total"] == 3
    # $.k0, $.x[*] and $.k1 came first; $.k2 .. $.k4 (30 exchanges) are folded
    assert contacts["paths_untracked"] == {"limit": 3, "differences": 30, "exchanges": 30}
    text = render_text(report)
    assert "other paths: 30 differences in 30 exchanges" in text


def test_the_text_fits_80_columns(report: dict[str, Any]) -> None:
    text = render_text(report, width=80)
    assert all(len(line) <= 80 for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "== contacts ===" in text
    assert "$.comments[*].body" in text
    assert "200->404 x10" in text
    assert "Suggested ignore rules" in text
    assert "upstream-timeout" in text


def test_an_empty_log() -> None:
    report = Summary().report()
    assert report["totals"]["match_rate"] is None
    assert report["suggestions_yaml"] == ""
    assert "No records" in render_text(report)
