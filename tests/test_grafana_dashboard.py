"""The Grafana dashboard (docs/grafana/cutover-dashboard.json) is importable and only asks
Prometheus for series cutover really exports.

The metric names and label names the dashboard's PromQL uses are checked against the exposition
of a real in-process cutover (demo platforms on loopback, SQLite outbox, real diff log, a guard
that trips, a plan, a fleet link whose broker is away) after a few requests went through it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import proxy.app
from proxy.config import parse_config
from proxy.control.fleet import Topics
from proxy.demo.platforms import Simulators
from proxy.demo.run import seeded_ids
from proxy.metrics import exposition
from proxy.runner import Running, start
from tests.configs import REPO, demo_doc, dump
from tests.processes import free_port, wait_for

DASHBOARD = REPO / "docs" / "grafana" / "cutover-dashboard.json"
DATASOURCE = "${DS_PROMETHEUS}"
METRIC = re.compile(r"cutover_[a-z0-9_]+")
SELECTOR = re.compile(r"(cutover_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
QUANTILE = re.compile(r"histogram_quantile\((0\.\d+)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
#: labels Prometheus adds at scrape time (cutover's own `instance` label on cutover_config_info
#: becomes `exported_instance` under the default honor_labels: false)
TARGET_LABELS = {"instance", "job", "exported_instance"}
#: the dashboard's rows, by a word of their title, in order
ROWS = ("Traffic", "Shadow", "Latency", "outbox", "Rollbacks")
KEY_ENV = "CUTOVER_GRAFANA_TEST_KEY"

Series = dict[str, dict[str, set[str]]]  # sample name -> label -> values


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def content_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows are layout), also those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def rows_with_panels(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> the panels under it (top-level panels follow their row in `panels`)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], list(panel.get("panels", [])))
        else:
            assert current is not None, f"panel {panel['title']!r} comes before any row"
            current.append(panel)
    return rows


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the model: targets, annotations, template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


# --- the model ----------------------------------------------------------------------------------


def test_the_dashboard_is_an_importable_model() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard.get("id") is None, "an exported model carries no database id"
    [source] = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("datasource", "prometheus") in required
    assert ("grafana", "grafana") in required
    panel_types = {p["type"] for p in content_panels(dashboard)}
    assert panel_types <= {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    ids = [p["id"] for p in dashboard["panels"]] + [
        p["id"] for row in dashboard["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_template_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert {"route", "channel", "cohort", "instance"} <= set(variables)
    for name in ("route", "channel", "cohort"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["definition"].startswith("label_values(cutover_requests_total")
        assert variable["definition"].endswith(f", {name})")
        assert variable["datasource"]["uid"] == DATASOURCE
    assert variables["instance"]["definition"].startswith("label_values(cutover_")
    assert variables["instance"]["definition"].endswith(", instance)")
    assert variables["instance"]["multi"] is True
    assert variables["instance"]["datasource"]["uid"] == DATASOURCE


def test_every_row_has_panels() -> None:
    rows = rows_with_panels(load_dashboard())
    titles = list(rows)
    for word in ROWS:
        [title] = [t for t in titles if word.lower() in t.lower()]
        assert rows[title], f"row {title!r} has no panels"
    assert [next(i for i, t in enumerate(titles) if w.lower() in t.lower()) for w in ROWS] == (
        sorted(range(len(ROWS)))
    )


def test_every_panel_queries_the_imported_datasource() -> None:
    for panel in content_panels(load_dashboard()):
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, title
        assert panel["targets"], f"{title} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["datasource"]["uid"] == DATASOURCE, title
        assert panel.get("description"), f"{title} does not say what it answers"


def test_the_rows_ask_what_was_asked() -> None:
    """A few of the queries, spelled as the operators' questions need them."""
    exprs = [t["expr"] for p in content_panels(load_dashboard()) for t in p["targets"]]
    text = "\n".join(exprs)
    assert 'result="dropped"' in text
    assert "cutover_mirror_dropped_total" in text
    assert 'result="match"' in text
    assert 'result=~"match|mismatch"' in text
    for role in ("primary", "secondary"):
        quantiles = [e for e in exprs if f'role="{role}"' in e and "histogram_quantile" in e]
        levels = {m.group(1) for e in quantiles for m in QUANTILE.finditer(e)}
        assert levels >= {"0.5", "0.95", "0.99"}, role
        assert all("by (le, platform)" in e and "[5m]" in e for e in quantiles)
    assert 'quantile="0.5"' in text
    assert 'quantile="0.99"' in text


# --- the names against a real exposition --------------------------------------------------------


async def call(
    running: Running, method: str, path: str, customer: str, channel: str, json: Any = None
) -> int:
    headers = {"X-Customer-Id": customer, "X-Channel": channel}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://127.0.0.1:{running.port}{path}", json=json, headers=headers
        ) as response,
    ):
        await response.read()
        return response.status


async def exposed(sims: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Series:
    """Sample name -> label name -> the values seen, from the /metrics text of a cutover that
    has served reads (one shadowed with a difference, one shed by the mirror budget), a dual
    write, a guard trip and a forged fleet message."""
    monkeypatch.setenv(KEY_ENV, "grafana-test-key-0123456789abcdef")
    monkeypatch.setattr(proxy.app, "FLEET_SYNC_TIMEOUT", 0.1)  # the broker is away on purpose
    doc = demo_doc(sims)
    doc.update(
        store=f"sqlite:///{tmp_path}/state/cutover.db",
        state_dir=str(tmp_path / "state"),
        diff_log={"dir": str(tmp_path / "diffs")},
        outbox={"backoff_min": "20ms", "backoff_max": "200ms"},
        mqtt={"url": f"mqtt://127.0.0.1:{free_port()}", "key_env": KEY_ENV},
    )
    # a mirror budget of one shadow read for new ticketing: the second one is dropped
    doc["platforms"]["new"]["ticketing"]["mirror"] = {"rate": 0.001}
    routes = {route["name"]: route for route in doc["routes"]}
    routes["contacts"]["guard"] = {
        "interval": "50ms",
        "min_requests": 1,
        "max_mismatch_rate": 0.0,
    }
    routes["attachments"]["plan"] = {
        "steps": [{"weights": {"default": 0}}, {"weights": {"default": 10}}]
    }
    path = tmp_path / "routes.yaml"
    path.write_bytes(dump(doc))
    table = parse_config(path.read_bytes(), source=str(path), base_dir=tmp_path, env={})
    running = await start(table, config_path=path, preload_ids=seeded_ids(sims))
    parts = running.parts
    try:
        # a pilot on chat is served by new; C-1002 is seeded with a difference: a mismatch
        assert await call(running, "GET", "/api/contacts?customer=C-1002", "C-1002", "chat") == 200
        # everyone else on the web is served by old, shadowed on new
        assert await call(running, "GET", "/api/contacts?customer=C-1010", "C-1010", "web") == 200
        for _ in range(2):
            assert await call(running, "GET", "/api/tickets", "C-1010", "email") == 200
        patch = {"status": "closed"}
        assert await call(running, "PATCH", "/api/contacts/1003", "C-1003", "phone", patch) == 200
        assert parts.shadowing is not None
        await wait_for(
            lambda: sum(c.match + c.mismatch for c in parts.shadowing.stats.cells.values()) >= 3,
            what="three comparisons",
        )
        await wait_for(
            lambda: (
                parts.worker is not None
                and parts.worker.stats.sent >= 1
                and parts.worker.snapshot().get("lag_ms_p99") is not None
            ),
            what="the write to reach the secondary",
        )
        await wait_for(lambda: parts.guardian and parts.guardian.trips, what="the guard to trip")
        await wait_for(lambda: parts.control.table.rollback, what="the guard's rollback flag")
        await wait_for(lambda: parts.outbox_snapshot is not None, what="the outbox figures")
        assert parts.fleet is not None
        # what a broker would deliver from someone without the key: refused and counted
        await parts.fleet._handle(Topics(table.migration).rollback, b'{"kind": "rollback"}')
        assert parts.fleet.refused
        text = exposition(parts).decode()
    finally:
        await running.stop()
    series: Series = {}
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            labels = series.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return series


def used_in(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, its selector's matchers as (label, op, value)) for each metric named in a
    PromQL text."""
    selected = {m.start(1) for m in SELECTOR.finditer(expr)}
    for match in SELECTOR.finditer(expr):
        yield match.group(1), MATCHER.findall(match.group(2))
    for match in METRIC.finditer(expr):
        if match.start() not in selected:
            yield match.group(0), []


async def test_every_series_the_dashboard_uses_is_exported(
    sims: Simulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = await exposed(sims, tmp_path, monkeypatch)
    dashboard = load_dashboard()
    used: set[str] = set()
    for expr in queries(dashboard):
        metrics: set[str] = set()
        for metric, matchers in used_in(expr):
            assert metric in series, (
                f"{metric} (in {expr!r}) is not exported; cutover exports {sorted(series)}"
            )
            exported = series[metric]
            unknown = {label for label, _, _ in matchers} - set(exported) - TARGET_LABELS
            assert not unknown, f"{metric} has no label {sorted(unknown)} (in {expr!r})"
            for label, op, value in matchers:
                if op == "=" and label in exported:  # a literal value: one cutover writes
                    assert value in exported[label], f"{metric}{{{label}={value!r}}} in {expr!r}"
            metrics.add(metric)
            used.add(metric)
        # `by (...)`, `on (...)`: labels that one of the expression's series carries
        known = set().union(*(set(series[m]) for m in metrics)) | TARGET_LABELS
        for grouping in GROUPING.findall(expr):
            names = {n.strip() for n in grouping.split(",") if n.strip()}
            assert not names - known, f"no series in {expr!r} has {sorted(names - known)}"
    # and nothing cutover exports is left off the dashboard
    assert {family(name) for name in series} == {family(name) for name in used}


def family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)
