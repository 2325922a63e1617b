"""`cutover run --workers 2`: two processes on one port, one outbox sender, one admin API."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.demo.platforms import Simulators
from tests.configs import demo_doc
from tests.processes import CutoverProcess, port_open, wait_for

pytestmark = pytest.mark.e2e


def listening(proxy: CutoverProcess) -> set[str]:
    """Which workers logged that they listen (the port answering says only that one does)."""
    return {
        str(e["instance"]).rsplit("-", 1)[-1]
        for e in proxy.log_events()
        if e.get("event") == "listening"
    }


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


async def requests_counted(http: aiohttp.ClientSession, proxy: CutoverProcess) -> float:
    async with http.get(proxy.admin_url + "/metrics", headers=proxy.admin_headers) as r:
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(s.value for s in families["cutover_requests"].samples if s.name.endswith("_total"))


async def test_two_workers_share_the_port_the_outbox_and_the_control(
    sims: Simulators, cutover, http
):
    proxy = await cutover(demo_doc(sims), ids=sims, args=["--workers", "2"])
    assert proxy.proc is not None
    await wait_for(lambda: len(worker_pids(proxy.proc.pid)) == 2, what="two workers")
    await wait_for(lambda: listening(proxy) == {"w0", "w1"}, what="both workers listening")

    async def read(n: int, channel: str = "email") -> str:
        async with (  # a new connection each time: both workers get some
            aiohttp.ClientSession() as fresh,
            fresh.get(
                f"{proxy.url}/api/contacts/{1010 + n}",
                headers={"X-Customer-Id": f"C-{1010 + n}", "X-Channel": channel},
            ) as r,
        ):
            assert r.status == 200
            return r.headers["X-Cutover-Platform"]

    sides = await asyncio.gather(*(read(n) for n in range(100)))
    assert set(sides) == {"old"}
    # /metrics (worker 0) adds up both workers' counters
    await wait_for(lambda: _at_least(http, proxy, 100), what="both workers' requests in /metrics")
    state_dir = Path(orjson.loads(proxy.config.read_bytes())["state_dir"])
    shared = list(state_dir.glob("telemetry-*-w1.json"))
    assert shared, "worker 1 shares its counters"
    served_by_1 = sum(
        row[-1] for row in orjson.loads(shared[0].read_bytes())["telemetry"]["requests"]
    )
    assert 0 < served_by_1 < 100, "both workers served some of the 100 new connections"

    # an admin change (worker 0 writes routes.yaml) reaches the other worker too
    async with http.put(
        proxy.admin_url + "/admin/routes/contacts/weights",
        headers=proxy.admin_headers,
        json={"channel": "email", "percent": 100, "reason": "both workers"},
    ) as r:
        assert r.status == 200

    async def all_new() -> bool:
        return set(await asyncio.gather(*(read(n) for n in range(40)))) == {"new"}

    await wait_for(all_new, what="both workers serving email from new")

    # dual-writes through both workers reach the other platform exactly once each
    since = sims.old_crm.last_seq

    async def write(n: int) -> None:
        async with (
            aiohttp.ClientSession() as fresh,
            fresh.patch(
                f"{proxy.url}/api/contacts/{1100 + n}",
                headers={"X-Customer-Id": f"C-{1100 + n}", "X-Channel": "email"},
                json={"full_name": f"Worker write {n}"},
            ) as r,
        ):
            assert r.status == 200

    await asyncio.gather(*(write(n) for n in range(30)))

    def mirrored() -> list[str]:
        return [
            r.path
            for r in sims.old_crm.requests(since)
            if r.header("X-Cutover-Mirror") == "dual-write"
        ]

    await wait_for(lambda: len(mirrored()) >= 30, what="the dual-writes to reach old")
    assert sorted(mirrored()) == sorted(f"/api/contacts/{1100 + n}" for n in range(30))

    assert await proxy.stop() == 0
    assert not port_open(proxy.port)


async def _at_least(http: aiohttp.ClientSession, proxy: CutoverProcess, n: int) -> bool:
    return await requests_counted(http, proxy) >= n


async def test_workers_die_with_their_parent(sims: Simulators, cutover):
    proxy = await cutover(demo_doc(sims), args=["--workers", "2"])
    assert proxy.proc is not None
    await wait_for(lambda: len(worker_pids(proxy.proc.pid)) == 2, what="two workers")
    pids = worker_pids(proxy.proc.pid)
    proxy.signal(signal.SIGKILL)
    await proxy.wait_exit()
    await wait_for(
        lambda: not any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids),
        timeout=35,
        what="the orphaned workers to stop",
    )
    await wait_for(lambda: not port_open(proxy.port), timeout=5, what="the port to close")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_broken_routes_yaml_exits_2_before_any_worker_starts(tmp_path: Path):
    """With --workers N the parent reads the file first: exit 2 with its errors, no restart
    loop of workers that can never start."""
    config = tmp_path / "routes.yaml"
    config.write_text("version: 1\nmigration: m\nroutes: [{name: x}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(config), "run", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "routes.yaml" in done.stderr
    assert "worker_started" not in done.stdout + done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_state_dir_that_cannot_be_written_exits_2_before_serving(tmp_path: Path, workers: str):
    """The fleet's rollback flags and plan progress are kept in state_dir: a folder that cannot
    be written stops the start with its path, instead of failing at the first rollback."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    doc = yaml.load(Path(__file__).parents[2] / "routes.yaml")
    (tmp_path / "occupied").write_text("a file, not a folder")
    doc.update(
        state_dir=str(tmp_path / "occupied" / "state"),
        store=f"sqlite:///{tmp_path}/cutover.db",
        diff_log={"dir": str(tmp_path / "diffs")},
    )
    config = tmp_path / "routes.yaml"
    with config.open("w") as fh:
        yaml.dump(doc, fh)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(config), "run", "--workers", workers],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"state_dir {tmp_path}/occupied/state is not writable" in done.stderr
    assert "listening" not in done.stdout + done.stderr
    assert (tmp_path / "diffs").is_dir()  # the folder that can be written is ready
