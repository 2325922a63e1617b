"""Telemetry windows and guard verdicts: pure, table-driven."""

from __future__ import annotations

import pytest

from proxy.config.spec import GuardSpec
from proxy.control.guard import judge
from proxy.telemetry import CellWindow, Figures, Histogram, Telemetry
from tests.configs import base_doc, load


def figures(**kw: object) -> Figures:
    base: dict[str, object] = {
        "window_s": 60.0,
        "requests": 0,
        "requests_new": 0,
        "errors_new": 0,
        "compared": 0,
        "mismatched": 0,
        "p95_old": None,
        "p95_new": None,
        "samples_old": 0,
        "samples_new": 0,
    }
    base.update(kw)
    return Figures(**base)  # type: ignore[arg-type]


GUARD = GuardSpec(
    min_requests=20, max_mismatch_rate=0.05, max_error_rate=0.02, max_latency_ratio=1.5
)


@pytest.mark.parametrize(
    ("kw", "breaches", "judged"),
    [
        ({}, [], False),
        ({"compared": 19, "mismatched": 19}, [], False),  # not enough comparisons to judge
        ({"compared": 100, "mismatched": 5}, [], True),
        ({"compared": 100, "mismatched": 6}, ["mismatch rate 6.0% > 5.0%"], True),
        ({"requests_new": 50, "errors_new": 1}, [], True),
        ({"requests_new": 50, "errors_new": 2}, ["new-platform error rate 4.0% > 2.0%"], True),
        ({"samples_old": 30, "samples_new": 30, "p95_old": 0.01, "p95_new": 0.015}, [], True),
        (
            {"samples_old": 30, "samples_new": 30, "p95_old": 0.01, "p95_new": 0.025},
            ["p95 latency new/old 2.50 > 1.50"],
            True,
        ),
        ({"samples_old": 30, "samples_new": 5, "p95_old": 0.01, "p95_new": 1.0}, [], False),
    ],
)
def test_judge(kw, breaches, judged):
    verdict = judge(("r", "web", "everyone"), figures(**kw), GUARD, on_new=True, rolled_back=False)
    assert [b.split(" (")[0] for b in verdict.breaches] == breaches
    assert verdict.judged == judged


def test_histogram_quantile_is_a_bucket_bound():
    hist = Histogram()
    for ms in [1] * 90 + [40] * 10:
        hist.observe(ms / 1000)
    assert hist.quantile(0.5) == 0.001
    assert hist.quantile(0.95) == 0.05
    assert Histogram().quantile(0.95) is None


def test_window_forgets_what_is_older_than_asked():
    window = CellWindow(slot_s=1.0, keep_s=10.0)
    for t in range(30):
        slot = window.slot(1000.0 + t)
        slot.requests["new"] += 1
        slot.errors["new"] += t >= 25
    recent = window.figures(1029.5, 5.0)
    assert (recent.requests_new, recent.errors_new) == (5, 5)
    assert len(window.slots) <= 12


def test_labels_are_bounded_by_the_table():
    telemetry = Telemetry(load(base_doc()))
    telemetry.request("contacts", "chat", "pilot", "new", 200, 0.01)
    telemetry.request("evil-route", "fax", "hackers", "new", 500, 0.01)
    telemetry.request(None, None, None, None, 404, 0.001)
    assert set(telemetry.requests) == {
        ("contacts", "chat", "pilot", "new", "2xx"),
        ("other", "other", "other", "new", "5xx"),
        ("other", "other", "other", "none", "4xx"),
    }


def test_a_new_table_relabels_names_seen_before():
    """Cells are remembered by the names a request gives; a reload that adds a cohort must
    not leave its requests counted as "other"."""
    before = base_doc()
    telemetry = Telemetry(load(before))
    telemetry.request("contacts", "chat", "vip", "old", 200, 0.01)
    after = base_doc()
    after["cohorts"] = [{"name": "vip", "customers": ["C-9"]}, *after["cohorts"]]
    telemetry.retable(load(after))
    telemetry.request("contacts", "chat", "vip", "old", 200, 0.01)
    telemetry.compared("contacts", "chat", "vip", "match", secondary=("new", 0.02))
    assert telemetry.requests[("contacts", "chat", "other", "old", "2xx")] == 1
    assert telemetry.requests[("contacts", "chat", "vip", "old", "2xx")] == 1
    assert telemetry.figures(("contacts", "chat", "vip"), 60).compared == 1


def test_names_a_table_does_not_know_are_remembered_within_a_bound():
    telemetry = Telemetry(load(base_doc()))
    for n in range(3000):
        telemetry.request("contacts", f"channel-{n}", "pilot", "new", 200, 0.01)
    assert len(telemetry._cells) <= 1024
    assert telemetry.requests[("contacts", "other", "pilot", "new", "2xx")] == 3000
