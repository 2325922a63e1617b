"""Shared fixtures: the demo platforms on free ports, and real cutover processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.demo.platforms import Simulators, run_simulators
from tests.configs import base_doc
from tests.processes import CutoverProcess


@pytest.fixture
async def sims() -> AsyncIterator[Simulators]:
    async with run_simulators(ports=0) as simulators:
        yield simulators


def doc_for(sims: Simulators) -> dict[str, Any]:
    """The test base routes.yaml pointed at the running simulators."""
    doc = base_doc(
        sims.old_crm.url, sims.new_crm.url, sims.old_ticketing.url, sims.new_ticketing.url
    )
    doc["routes"][0]["contract"] = {"new_path": "/v2/contacts"}
    doc["routes"][1]["contract"] = {"new_path": "/v2/tickets"}
    doc["routes"].append(
        {
            "name": "attachments",
            "api": "ticketing",
            "path": "/api/attachments",
            "contract": {"new_path": "/v2/attachments"},
        }
    )
    return doc


@pytest.fixture
async def cutover(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """A factory: `await cutover(doc)` starts a real `cutover run` on that routes.yaml."""
    started: list[CutoverProcess] = []

    async def make(
        doc: dict[str, Any] | None = None,
        *,
        ids: Simulators | None = None,
        wait_admin: bool = True,
        **kwargs: Any,
    ) -> CutoverProcess:
        """`ids=sims` loads the simulators' seeded id pairs with `cutover idmap import` first."""
        process = CutoverProcess(tmp_path / f"cutover-{len(started)}", doc, **kwargs)
        started.append(process)
        if ids is not None:
            pairs = process.workdir / "ids.csv"
            pairs.write_text(
                "resource,old,new\n"
                + "".join(f"{kind},{old},{new}\n" for kind, old, new in ids.id_map)
            )
            result = process.cli("idmap", "import", str(pairs))
            assert result.returncode == 0, result.stderr
        return await process.start(wait_admin=wait_admin)

    yield make
    for process in started:
        process.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


REDIS_URL = "redis://127.0.0.1:6379/0"


async def _require_redis() -> Any:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"these tests need the real Redis at {REDIS_URL} (./dev test starts it): {exc}")
    return client


@pytest.fixture(params=["sqlite", "redis"])
async def store_choice(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """The outbox store for a test, both kinds: `{"store": url, "migration": name}` to merge
    into routes.yaml. Redis keys live under the migration name, deleted afterwards."""
    if request.param == "sqlite":
        yield {"store": f"sqlite:///{tmp_path}/state/cutover.db", "migration": "crm-2026"}
        return
    client = await _require_redis()
    migration = f"test-{uuid.uuid4().hex[:10]}"
    try:
        yield {"store": REDIS_URL, "migration": migration}
    finally:
        keys = [k async for k in client.scan_iter(match=f"cutover:{migration}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
