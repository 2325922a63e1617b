"""Shadow comparison through a real `cutover run`, read back with the real `cutover diff`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.demo.platforms import Simulators
from tests.configs import demo_doc

pytestmark = pytest.mark.e2e


def cutover_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def drive(url: str, customers: list[str], http: aiohttp.ClientSession) -> None:
    for n, customer in enumerate(customers):
        headers = {"X-Customer-Id": customer, "X-Request-ID": f"req-{n}"}
        async with http.get(f"{url}/api/contacts?customer={customer}", headers=headers) as response:
            assert response.status == 200
            assert response.headers["X-Cutover-Platform"] == "old"


CUSTOMERS = ["C-1010", "C-1011", "C-1002", "C-1007", "C-1020"]


async def test_qa_sees_the_seeded_discrepancies_and_nothing_else(sims: Simulators, cutover, http):
    proxy = await cutover(demo_doc(sims), ids=sims)
    await drive(proxy.url, CUSTOMERS, http)
    assert await proxy.stop() == 0  # SIGTERM drains the mirrors and flushes the diff log

    result = cutover_cli(proxy.config, "diff", "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = orjson.loads(result.stdout)
    text = orjson.dumps(report).decode()
    assert "C-10" not in text, "customer keys are hashed in QA's report"
    contacts = next(r for r in report["routes"] if r["route"] == "contacts")
    assert contacts["compared"] == 5
    assert contacts["mismatched"] == 2
    paths = {p["path"] for p in contacts["paths"]}
    assert paths == {"$.items[*].balance", "$.items[*].address.postcode"}

    shown = cutover_cli(
        proxy.config, "diff", "show", f"req-{CUSTOMERS.index('C-1002')}", "--no-color"
    )
    assert shown.returncode == 0, shown.stderr
    assert "balance" in shown.stdout
    assert "!" in shown.stdout  # the differing line is marked
    assert "C-1002" not in shown.stdout


async def test_schema_differences_show_until_the_rules_for_them_are_added(
    sims: Simulators, cutover, http
):
    doc = demo_doc(sims)
    contacts = doc["routes"][0]
    contacts["contract"] = {"new_path": "/v2/contacts"}
    contacts["compare"] = {}
    proxy = await cutover(doc)
    await drive(proxy.url, CUSTOMERS[:2], http)
    assert await proxy.stop() == 0
    result = cutover_cli(proxy.config, "diff", "--json", "--route", "contacts")
    assert result.returncode == 0, result.stderr
    route = orjson.loads(result.stdout)["routes"][0]
    assert route["mismatched"] == 2
    assert {"$.items", "$.data", "$.total", "$.meta"} <= {p["path"] for p in route["paths"]}
