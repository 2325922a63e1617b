"""Reading what a running cutover reports about itself: /metrics, and its diff log on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.processes import CutoverProcess


async def samples(http: aiohttp.ClientSession, proxy: CutoverProcess) -> list[Sample]:
    async with http.get(proxy.admin_url + "/metrics", headers=proxy.admin_headers) as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(found: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        s.value
        for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def shadow_results(found: list[Sample], route: str) -> dict[str, int]:
    """cutover_shadow_total of one route by result: match, mismatch, error, dropped, aborted."""
    out: dict[str, int] = {}
    for s in found:
        if s.name == "cutover_shadow_total" and s.labels.get("route") == route:
            out[s.labels["result"]] = out.get(s.labels["result"], 0) + int(s.value)
    return out


def diff_records(directory: Path) -> list[dict[str, Any]]:
    """Every complete record in a diff log directory (all instances, rotated files too)."""
    records = []
    for file in sorted(directory.glob("diffs-*.jsonl")) if directory.exists() else []:
        for line in file.read_bytes().splitlines():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:  # a line being written
                continue
    return records
