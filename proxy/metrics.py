"""Prometheus exposition of what cutover counts, built at scrape time.

The data path only increments plain dicts (proxy.telemetry, shadow.stats); this collector turns
them into metric families when /metrics is scraped, so the hot path pays no locks and no label
lookups. Series and labels (every label set bounded by the table in force):

  cutover_requests_total{route,channel,cohort,platform,code}     answers to clients
  cutover_upstream_seconds{route,platform,role}                  histogram; role primary|secondary
  cutover_shadow_total{route,channel,cohort,result}              match|mismatch|error|...
  cutover_mirror_dropped_total{upstream,reason}                  secondary work shed
  cutover_mirror_in_flight{upstream}
  cutover_mirror_limit{upstream}                                 slots in force: mirror.concurrency,
                                                                 fewer while the secondary is slow
  cutover_mirror_circuit_open{upstream}                          workers skipping a down upstream
  cutover_secondary_deferred_total{result}                       comparisons that waited for an
                                                                 idle loop: idle|overdue, or
                                                                 did not: crowded
  cutover_outbox_pending{target}, cutover_outbox_dead, cutover_outbox_intents
  cutover_outbox_sent_total, cutover_outbox_failed_total, cutover_outbox_lag_seconds{quantile}
  cutover_config_info{version,migration,instance}                 always 1
  cutover_rollback_active{route,channel,cohort,source}            1 per rollback flag in force
  cutover_reloads_total{result}                                   applied|refused
  cutover_guard_trips_total{route,channel,cohort}
  cutover_plan_step{route}
  cutover_fleet_connected, cutover_fleet_refused_total{reason}
  cutover_diff_log_records_total{result}                          written|dropped
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.telemetry import BUCKETS, Telemetry
from shadow.stats import ShadowStats

if TYPE_CHECKING:
    from proxy.app import Parts

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIBLING_FRESH_S = 10.0  # a worker whose counters are older than this is gone, or stuck


def _any(value: str | None) -> str:
    return value if value is not None else "*"


class CutoverCollector(Collector):
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def _merged(
        self,
    ) -> tuple[Telemetry, ShadowStats, dict[str, dict[str, int]], dict[str, int]]:
        """This process's counters plus the other workers' latest (docs: proxy/workers.py)."""
        parts = self.parts
        mirrors = parts.shadowing.dispatcher.snapshot()
        deferred = _deferred(parts)
        siblings = read_siblings(parts)
        if not siblings:
            return parts.telemetry, parts.shadowing.stats, mirrors, deferred
        telemetry = Telemetry(parts.control.table)
        telemetry.absorb(parts.telemetry.export())
        shadow = ShadowStats()
        shadow.absorb(parts.shadowing.stats.export())
        merged = {k: dict(v) for k, v in mirrors.items()}
        for data in siblings:
            telemetry.absorb(data.get("telemetry", {}))
            shadow.absorb(data.get("shadow", []))
            for upstream, counts in data.get("mirrors", {}).items():
                mine = merged.setdefault(upstream, {})
                for key, value in counts.items():
                    mine[key] = mine.get(key, 0) + int(value)
            for key, value in data.get("deferred", {}).items():
                deferred[key] = deferred.get(key, 0) + int(value)
        return telemetry, shadow, merged, deferred

    def collect(self) -> Iterator[Metric]:
        parts = self.parts
        telemetry, shadow_stats, mirrors, deferred = self._merged()
        control = parts.control
        table = control.table

        requests = CounterMetricFamily(
            "cutover_requests",
            "Requests answered to clients",
            labels=["route", "channel", "cohort", "platform", "code"],
        )
        for labels, value in sorted(telemetry.requests.items()):
            requests.add_metric(list(labels), value)
        yield requests

        latency = HistogramMetricFamily(
            "cutover_upstream_seconds",
            "Latency of answers by platform (primary: what the client "
            "waited; secondary: shadow reads)",
            labels=["route", "platform", "role"],
        )
        for (route, platform, role), hist in sorted(telemetry.latency.items()):
            cumulative = 0
            buckets = []
            for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([route, platform, role], buckets, hist.total)
        yield latency

        shadow = CounterMetricFamily(
            "cutover_shadow",
            "Shadow comparisons by outcome",
            labels=["route", "channel", "cohort", "result"],
        )
        for (route, channel, cohort), cell in sorted(shadow_stats.cells.items()):
            for result in ("match", "mismatch", "error", "dropped", "aborted"):
                shadow.add_metric([route, channel, cohort, result], getattr(cell, result))
        yield shadow

        dropped = CounterMetricFamily(
            "cutover_mirror_dropped",
            "Secondary work dropped by the mirror budget",
            labels=["upstream", "reason"],
        )
        in_flight = GaugeMetricFamily(
            "cutover_mirror_in_flight", "Secondary requests in flight", labels=["upstream"]
        )
        limit = GaugeMetricFamily(
            "cutover_mirror_limit",
            "Secondary requests allowed in flight: mirror.concurrency, fewer while the secondary "
            "answers over mirror.slow_ratio x slower than the primary",
            labels=["upstream"],
        )
        circuit = GaugeMetricFamily(
            "cutover_mirror_circuit_open",
            "Worker processes skipping secondary work to this upstream: it cannot be reached",
            labels=["upstream"],
        )
        for upstream, snap in sorted(mirrors.items()):
            in_flight.add_metric([upstream], snap.get("in_flight", 0))
            limit.add_metric([upstream], snap.get("limit", 0))
            circuit.add_metric([upstream], snap.get("circuit_open", 0))
            for key, value in snap.items():
                if key.startswith("dropped_"):
                    dropped.add_metric([upstream, key.removeprefix("dropped_")], value)
        yield dropped
        yield in_flight
        yield limit
        yield circuit

        waited = CounterMetricFamily(
            "cutover_secondary_deferred",
            "Comparisons that waited for a pass of the event loop with no client request: "
            "let through then (idle) or after the longest wait (overdue), or at once with many "
            "client requests in flight (crowded)",
            labels=["result"],
        )
        for result, count in sorted(deferred.items()):
            waited.add_metric([result], count)
        yield waited

        yield from self._outbox()

        info = GaugeMetricFamily(
            "cutover_config_info",
            "The routes.yaml in force",
            labels=["version", "migration", "instance"],
        )
        info.add_metric([table.version, table.migration, parts.instance], 1)
        yield info

        active = GaugeMetricFamily(
            "cutover_rollback_active",
            "Rollback flags in force",
            labels=["route", "channel", "cohort", "source"],
        )
        for source, scopes in (("file", table.rollback), ("fleet", control.fleet.keys)):
            for scope in sorted(scopes, key=str):
                active.add_metric([*(_any(part) for part in scope), source], 1)
        yield active

        reloads = CounterMetricFamily("cutover_reloads", "routes.yaml reloads", labels=["result"])
        reloads.add_metric(["applied"], control.reloads)
        reloads.add_metric(["refused"], control.refused)
        yield reloads

        trips = CounterMetricFamily(
            "cutover_guard_trips",
            "Guards that rolled a cell back",
            labels=["route", "channel", "cohort"],
        )
        guardian = parts.guardian
        for tripped, count in sorted((guardian.trips if guardian else {}).items()):
            trips.add_metric(list(tripped), count)
        yield trips

        step = GaugeMetricFamily("cutover_plan_step", "The plan step in force", labels=["route"])
        for planned in table.routes:
            if planned.spec.plan is not None:
                step.add_metric([planned.name], planned.spec.plan.step)
        yield step

        if parts.fleet is not None:
            yield GaugeMetricFamily(
                "cutover_fleet_connected",
                "Connected to the MQTT broker",
                value=1 if parts.fleet.connected else 0,
            )
            refused = CounterMetricFamily(
                "cutover_fleet_refused", "Control messages refused", labels=["reason"]
            )
            for reason, count in sorted(parts.fleet.refused.items()):
                refused.add_metric([reason], count)
            yield refused

        if parts.difflog is not None:
            records = CounterMetricFamily(
                "cutover_diff_log_records", "Diff log records", labels=["result"]
            )
            records.add_metric(["written"], parts.difflog.written)
            records.add_metric(["dropped"], parts.difflog.dropped)
            yield records

    def _outbox(self) -> Iterator[Metric]:
        snapshot: dict[str, Any] | None = self.parts.outbox_snapshot
        if snapshot is None:
            return
        pending = GaugeMetricFamily(
            "cutover_outbox_pending", "Writes waiting for a platform", labels=["target"]
        )
        for target in ("old", "new"):
            pending.add_metric([target], snapshot["by_target"].get(target, 0))
        yield pending
        yield GaugeMetricFamily("cutover_outbox_dead", "Dead letters", value=snapshot["dead"])
        yield GaugeMetricFamily(
            "cutover_outbox_intents",
            "Writes whose primary outcome is not known yet",
            value=snapshot["intents"],
        )
        worker = self.parts.worker
        if worker is not None:
            yield CounterMetricFamily(
                "cutover_outbox_sent", "Writes confirmed by the secondary", value=worker.stats.sent
            )
            yield CounterMetricFamily(
                "cutover_outbox_failed", "Failed tries to the secondary", value=worker.stats.failed
            )
            lag = GaugeMetricFamily(
                "cutover_outbox_lag_seconds",
                "From the primary's answer to the secondary's, recent writes",
                labels=["quantile"],
            )
            snap = worker.snapshot()
            for q, key in (("0.5", "lag_ms_p50"), ("0.99", "lag_ms_p99")):
                if snap.get(key) is not None:
                    lag.add_metric([q], snap[key] / 1000)
            yield lag


def _deferred(parts: Parts) -> dict[str, int]:
    gate = parts.shadowing.gate
    return gate.counts() if gate is not None else {}


def sibling_path(parts: Parts, worker: int) -> Path:
    return parts.control.state_dir / f"telemetry-{parts.base_instance}-w{worker}.json"


def export(parts: Parts) -> bytes:
    """What a worker other than 0 writes for worker 0 to add up."""
    return orjson.dumps(
        {
            "at": time.time(),
            "telemetry": parts.telemetry.export(),
            "shadow": parts.shadowing.stats.export(),
            "mirrors": parts.shadowing.dispatcher.snapshot(),
            "deferred": _deferred(parts),
        }
    )


def read_siblings(parts: Parts) -> list[dict[str, Any]]:
    if parts.workers <= 1:
        return []
    out = []
    for worker in range(1, parts.workers):
        try:
            data = orjson.loads(sibling_path(parts, worker).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(data, dict) and time.time() - float(data.get("at", 0)) < SIBLING_FRESH_S:
            out.append(data)
    return out


def exposition(parts: Parts) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CutoverCollector(parts))
    return generate_latest(registry)
