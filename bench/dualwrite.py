"""Dual-write figures: writes/s through cutover, primary-answer-to-secondary-write delay, and
the replay rate after an outage of the secondary.

    .venv/bin/python -m bench.dualwrite [seconds]

cutover runs alone on core 0 (SQLite outbox in a temp folder); the simulated platforms and the
load share core 1. Writes are PATCHes of the 300 seeded contacts (old primary, new secondary).
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from bench.common import CUTOVER_RUN, PYTHON, Proc, free_port, pinned, routes_yaml, wait_port, wrk
from proxy.demo.platforms import PlatformPorts, Simulators, run_simulators

PATCH_LUA = """
counter = 0
request = function()
  counter = counter + 1
  local id = 1001 + (counter % 300)
  wrk.headers["X-Customer-Id"] = "C-" .. id
  wrk.headers["Content-Type"] = "application/json"
  return wrk.format("PATCH", "/api/contacts/" .. id, nil, '{"full_name": "Bench ' .. counter .. '"}')
end
"""


def cutover(
    work: Path, name: str, ports: dict[str, int], dual: bool, sims: Simulators
) -> tuple[Proc, int]:
    listen = free_port()
    case = work / name
    case.mkdir()
    text = routes_yaml(listen=listen, ports=ports, shadow=0)
    if not dual:
        text = text.replace("dual_write: true", "dual_write: false")
    (case / "routes.yaml").write_text(text)
    (case / "ids.csv").write_text("".join(f"{k},{o},{n}\n" for k, o, n in sims.id_map))
    Proc.start(
        "import",
        [PYTHON, "-m", "proxy", "--config", "routes.yaml", "idmap", "import", "ids.csv"],
        case / "import.log",
        cwd=case,
    ).popen.wait()
    proc = Proc.start(
        name,
        pinned(
            "0",
            list(CUTOVER_RUN),
        ),
        case / "cutover.log",
        cwd=case,
    )
    wait_port(listen)
    return proc, listen


async def outbox_depth(case: Path) -> int:
    out = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "proxy",
        "--config",
        str(case / "routes.yaml"),
        "outbox",
        "status",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=case,
    )
    data, _ = await out.communicate()
    status = orjson.loads(data)
    return int(status["ready"]) + int(status["intents"])


async def lag_and_replay(sims: Simulators, url: str, case: Path, seconds: int) -> dict[str, float]:
    """Paced writes: when each was answered vs when the secondary saw it; then an outage."""
    answered: dict[str, float] = {}
    rng = random.Random(5)
    async with aiohttp.ClientSession(url) as session:

        async def write(n: int) -> None:
            old_id = 1001 + rng.randrange(300)
            rid = f"lag-{n}"
            async with session.patch(
                f"/api/contacts/{old_id}",
                json={"full_name": f"Lag {n}"},
                headers={"X-Customer-Id": f"C-{old_id}", "X-Request-ID": rid},
            ) as r:
                await r.read()
                if r.status == 200:
                    answered[rid] = time.time()

        total = seconds * 100
        for n in range(total):  # 100 writes/s
            await write(n)
            await asyncio.sleep(0.01)
        await asyncio.sleep(2)
        seen = {
            r.header("X-Request-ID"): r.at
            for r in sims.new_crm.requests()
            if r.header("X-Cutover-Mirror") == "dual-write"
        }
        lags = sorted((seen[rid] - at) * 1000 for rid, at in answered.items() if rid in seen)

        await sims.new_crm.go_down()
        backlog = 3000
        await asyncio.gather(*(write(100_000 + n) for n in range(backlog)))
        depth = await outbox_depth(case)
        since = sims.new_crm.last_seq
        await sims.new_crm.come_up()
        back = time.time()
        while await outbox_depth(case) > 0:
            await asyncio.sleep(0.2)
        replayed = [
            r.at
            for r in sims.new_crm.requests(since)
            if r.header("X-Cutover-Mirror") == "dual-write"
        ]
        noticed = min(replayed) - back
        drained = max(replayed) - min(replayed)

    def pct(q: float) -> float:
        return lags[min(int(q * len(lags)), len(lags) - 1)]

    return {
        "lag_p50_ms": pct(0.5),
        "lag_p99_ms": pct(0.99),
        "lag_samples": len(lags),
        "backlog": depth,
        "noticed_s": noticed,
        "replay_s": drained,
        "replay_per_s": depth / drained,
    }


async def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-dw-"))
    script = work / "patch.lua"
    script.write_text(PATCH_LUA)
    async with run_simulators(ports=PlatformPorts.free()) as sims:
        ports = {
            "old_crm": sims.old_crm.port,
            "old_ticketing": sims.old_ticketing.port,
            "new_crm": sims.new_crm.port,
            "new_ticketing": sims.new_ticketing.port,
        }
        rows = []
        for name, dual in (("pass-through writes", False), ("dual-write", True)):
            proc, port = cutover(work, name.replace(" ", "-"), ports, dual, sims)
            try:
                cpu0 = proc.cpu_seconds()
                result = await asyncio.to_thread(
                    wrk, f"http://127.0.0.1:{port}", seconds=seconds, connections=16, script=script
                )
                cpu = proc.cpu_seconds() - cpu0
                rows.append(
                    (name, result.requests_per_s, result.errors, cpu / result.requests * 1000)
                )
                if dual:
                    while await outbox_depth(work / "dual-write") > 0:
                        await asyncio.sleep(0.2)
                    figures = await lag_and_replay(
                        sims, f"http://127.0.0.1:{port}", work / "dual-write", seconds
                    )
            finally:
                proc.stop()
    print("\n| case | writes/s | errors | cutover CPU s / 1000 writes |\n|---|---:|---:|---:|")
    for name, rps, errors, cpu in rows:
        print(f"| {name} | {rps:,.0f} | {errors} | {cpu:.3f} |")
    print(
        f"\nprimary answer -> secondary write: p50 {figures['lag_p50_ms']:.1f} ms, "
        f"p99 {figures['lag_p99_ms']:.1f} ms ({figures['lag_samples']:.0f} writes at 100/s)"
    )
    print(
        f"replay after an outage: {figures['backlog']:.0f} writes in {figures['replay_s']:.1f} s "
        f"= {figures['replay_per_s']:,.0f} writes/s, starting {figures['noticed_s']:.1f} s after "
        "the secondary came back"
    )


if __name__ == "__main__":
    asyncio.run(main())
