"""Fleet rollback latency: from `cutover rollback` to three instances all serving old.

    .venv/bin/python -m bench.rollback [runs]

Three cutover processes (core 0) share one Mosquitto: by default a private one configured as
docs/fleet.md recommends (`set_tcp_nodelay true`); with `--system-broker`, the machine's own at
127.0.0.1:1883 (Mosquitto's defaults, where each hop waits ~20 ms more). The simulated
platforms and the clients run here (core 1). Clients keep reading through all three; each run
publishes a rollback exactly as `cutover rollback --fleet` does (fleetctl: read the retained
state, publish the signed flags) and records, per instance, the first answer served by old after
the publish began; then it resumes and waits for new again. Failed client requests are counted
over the whole run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from bench.common import CUTOVER_RUN, PYTHON, Proc, free_port, pinned, wait_port
from proxy.config.spec import MqttSpec
from proxy.control import fleetctl
from proxy.demo.platforms import run_simulators
from tests.brokers import clear_retained

KEY = "bench-fleet-key-0123456789abcdef"
PACE = float(os.environ.get("BENCH_PACE", "0.005"))


async def main() -> None:
    """Runs the measurement; whatever it started is stopped, even when it fails."""
    started: list[Proc] = []
    try:
        await _measure(started)
    finally:
        for proc in reversed(started):
            proc.stop()


async def _measure(started: list[Proc]) -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    runs = int(args[0]) if args else 30
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-rb-"))
    migration = f"bench-{uuid.uuid4().hex[:8]}"
    broker_proc = None
    broker_port = 1883
    if "--system-broker" not in sys.argv:
        broker_port = free_port()
        (work / "mosquitto.conf").write_text(
            f"listener {broker_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        )
        broker_proc = Proc.start(
            "mosquitto",
            [
                shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                "-c",
                str(work / "mosquitto.conf"),
            ],
            work / "mosquitto.log",
        )
        started.append(broker_proc)
        wait_port(broker_port)
    broker_url = f"mqtt://127.0.0.1:{broker_port}"
    spec = MqttSpec(url=broker_url, keepalive=5)
    async with run_simulators(ports=0) as sims:
        procs: list[tuple[Proc, int]] = []
        for n in range(3):
            port, admin = free_port(), free_port()
            doc = {
                "version": 1,
                "migration": migration,
                "listen": f"127.0.0.1:{port}",
                "admin": {"listen": f"127.0.0.1:{admin}"},
                "mqtt": {"url": broker_url, "key_env": "CUTOVER_CONTROL_KEY"},
                "platforms": {
                    "old": {"crm": {"url": sims.old_crm.url}},
                    "new": {"crm": {"url": sims.new_crm.url}},
                },
                "channels": ["web"],
                "routes": [
                    {
                        "name": "contacts",
                        "api": "crm",
                        "path": "/api/contacts",
                        "weights": {"default": 100},
                        "contract": {"new_path": "/v2/contacts"},
                    }
                ],
            }
            case = work / f"i{n}"
            case.mkdir()
            (case / "routes.yaml").write_bytes(orjson.dumps(doc))
            env = {
                "CUTOVER_CONTROL_KEY": KEY,
                "CUTOVER_ADMIN_TOKEN": "bench",
                "CUTOVER_INSTANCE_ID": f"bench-{n}",
            }
            proc = Proc.start(
                f"i{n}",
                pinned(
                    "0",
                    list(CUTOVER_RUN),
                ),
                case / "cutover.log",
                cwd=case,
                env=env,
            )
            procs.append((proc, port))
            started.append(proc)
        for _, port in procs:
            wait_port(port)
        await asyncio.sleep(1.0)  # connected to the broker (their status is retained)

        seen: list[tuple[float, int, str]] = []
        failures = 0
        stop = asyncio.Event()

        async def client(n: int, port: int, session: aiohttp.ClientSession) -> None:
            nonlocal failures
            while not stop.is_set():
                try:
                    async with session.get(
                        f"http://127.0.0.1:{port}/api/contacts?limit=1",
                        headers={"X-Customer-Id": f"C-{n}"},
                    ) as r:
                        await r.read()
                        if r.status != 200:
                            failures += 1
                        seen.append(
                            (time.monotonic(), port, r.headers.get("X-Cutover-Platform", "?"))
                        )
                except aiohttp.ClientError:
                    failures += 1
                await asyncio.sleep(PACE)  # ~200 requests/s per client: load, not saturation

        async def first(side: str, since: float) -> float:
            while True:
                done: dict[int, float] = {}
                for at, port, platform in reversed(seen):
                    if at < since:
                        break
                    if platform == side:
                        done[port] = min(done.get(port, at), at)
                if len(done) == len(procs):
                    return max(done.values())
                await asyncio.sleep(0.001)

        timings: list[float] = []
        publish_ms: list[float] = []
        async with aiohttp.ClientSession() as session:
            clients = [
                asyncio.ensure_future(client(n, port, session))  # noqa: TID251
                for n, (_, port) in enumerate(procs)
                for _ in range(2)
            ]
            for _ in range(runs):
                began = time.monotonic()
                await fleetctl.publish_rollback(
                    spec, migration, KEY.encode(), [{}], by="bench", reason="bench"
                )
                publish_ms.append((time.monotonic() - began) * 1000)
                timings.append((await first("old", began) - began) * 1000)
                resumed = time.monotonic()
                await fleetctl.publish_rollback(
                    spec, migration, KEY.encode(), [], by="bench", reason="bench"
                )
                await first("new", resumed)
            cli_began = time.monotonic()
            await asyncio.to_thread(
                subprocess.run,
                [
                    PYTHON,
                    "-m",
                    "proxy",
                    "--config",
                    str(work / "i0" / "routes.yaml"),
                    "rollback",
                    "--fleet",
                    "--reason",
                    "bench",
                ],
                check=True,
                capture_output=True,
                env={**os.environ, "CUTOVER_CONTROL_KEY": KEY},
            )
            cli_ms = (time.monotonic() - cli_began) * 1000
            stop.set()
            await asyncio.gather(*clients)
        for proc, _ in procs:
            proc.stop()
        await clear_retained(migration, broker_port)
    if broker_proc is not None:
        broker_proc.stop()
    timings.sort()
    p50 = timings[len(timings) // 2]
    p99 = timings[min(int(len(timings) * 0.99), len(timings) - 1)]
    broker = "system Mosquitto, defaults" if broker_proc is None else "Mosquitto, set_tcp_nodelay"
    print(
        f"[{broker}] rollback to all 3 instances serving old, over {runs} runs: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {timings[-1]:.1f} ms"
    )
    publish_ms.sort()
    print(
        f"of which publishing (read the retained state, sign, publish): p50 "
        f"{publish_ms[len(publish_ms) // 2]:.1f} ms, max {publish_ms[-1]:.1f} ms"
    )
    print(f"client requests during the runs: {len(seen)}, failed: {failures}")
    print(
        f"`cutover rollback --fleet` wall time (process start, broker round trips, convergence "
        f"wait): {cli_ms:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
