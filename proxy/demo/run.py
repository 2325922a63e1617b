"""`cutover demo`: the simulated platforms with cutover in front, in one process.

It works in ./cutover-demo/ (routes.yaml, state, diff logs) so that the tour's changes never touch
the repository's routes.yaml, and it uses the ports of the demo routes.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from importlib import resources
from pathlib import Path

from yarl import URL

from proxy.config import load_config
from proxy.config.spec import Side
from proxy.demo.platforms import PlatformPorts, Simulators, run_simulators
from proxy.demo.traffic import TrafficStats, customers_of, generate
from proxy.dualwrite.model import IdEntry, id_json
from proxy.observe import configure_logging
from proxy.runner import install_uvloop, start

DEMO_DIR = Path("cutover-demo")


def demo_config_text() -> str:
    return resources.files("proxy.demo").joinpath("routes.yaml").read_text()


def prepare_workdir(workdir: Path, port: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "routes.yaml"
    text = demo_config_text().replace("listen: 127.0.0.1:8080", f"listen: 127.0.0.1:{port}")
    # the demo's own copy only: its admin API on loopback answers without a token (set
    # $CUTOVER_ADMIN_TOKEN to require one); the repository's routes.yaml stays a sound example
    text = text.replace(
        "  token_env: CUTOVER_ADMIN_TOKEN",
        "  insecure_no_auth: true           # the demo only: loopback, no token needed\n"
        "  token_env: CUTOVER_ADMIN_TOKEN",
        1,
    )
    config.write_text(text)
    return config


def _ports_of(config: Path) -> PlatformPorts:
    table = load_config(config)

    def port(side: Side, api: str) -> int:
        return URL(table.upstream(side, api).url).port or 80

    return PlatformPorts(
        port("old", "crm"), port("old", "ticketing"), port("new", "crm"), port("new", "ticketing")
    )


def seeded_ids(sims: Simulators) -> list[IdEntry]:
    """The demo's platforms were filled by one bulk migration: its id pairs seed the id map,
    as `cutover idmap import` would for a real one."""
    return [
        IdEntry(kind, id_json(old), id_json(new), origin="old") for kind, old, new in sims.id_map
    ]


def tour(base: str, config: Path) -> str:
    c = f"cutover -c {config}"
    return f"""
cutover demo is running.

  cutover      {base}          (routes: {config})
  admin API    http://127.0.0.1:8081 (loopback, no token in the demo)
  console      http://127.0.0.1:8081/console/ (sign in with an empty token and your name)
  old platform http://127.0.0.1:9001 (crm)  http://127.0.0.1:9002 (ticketing)
  new platform http://127.0.0.1:9101 (crm)  http://127.0.0.1:9102 (ticketing)

Try it (another terminal; `cutover` is .venv/bin/cutover):

  # a pilot customer on chat is on the new platform (weights: chat pilot 100 %),
  # and still gets the old API's answer: id 1001, full_name, ...
  curl -si {base}/api/contacts/1001 -H 'X-Customer-Id: C-1001' -H 'X-Channel: chat'
  # the same customer by phone stays on the old one
  curl -si {base}/api/contacts/1001 -H 'X-Customer-Id: C-1001' -H 'X-Channel: phone' | grep -i x-cutover
  # move half of the email customers to new, then pull the brake on email, then lift it
  {c} shift contacts 50 --channel email --reason "email wave 1"
  {c} rollback --channel email --reason "wait times up" --wait
  {c} resume --reason "fixed"
  {c} status
  # a write lands on both platforms (dual-write), each under its own ids
  curl -s -X PATCH {base}/api/contacts/1002 -H 'X-Customer-Id: C-1002' \\
       -H 'Content-Type: application/json' -d '{{"full_name": "Changed Everywhere"}}'
  curl -s 'http://127.0.0.1:9101/v2/contacts?customer=C-1002'
  # QA: how far is the new platform from the old one, field by field?
  {c} diff
  {c} outbox status
  # an upstream going down becomes a 502 problem answer naming the route and platform
  curl -s -X POST http://127.0.0.1:9001/_sim/faults -d '{{"mode": "down", "down_for_ms": 5000}}'
  curl -s {base}/api/contacts/1002 -H 'X-Customer-Id: C-1002'

Ctrl-C stops everything.
"""


async def _demo(args: argparse.Namespace) -> int:
    config = prepare_workdir(DEMO_DIR, args.port)
    try:
        ports = _ports_of(config)
        async with run_simulators(ports=ports, customers=args.customers) as sims:
            running = await start(
                load_config(config), config_path=config, preload_ids=seeded_ids(sims)
            )
            base = f"http://127.0.0.1:{running.port}"
            print(tour(base, config.resolve()), flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            stats = TrafficStats()
            traffic = None
            if args.traffic > 0:
                traffic = running.proxy.supervisor.spawn(
                    generate(base, customers_of(sims), rate=args.traffic, stats=stats, stop=stop),
                    name="demo-traffic",
                )
            try:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=args.report_every)
                    if traffic is not None and not stop.is_set():
                        print(f"demo traffic: {stats.line()}", flush=True)
            finally:
                stop.set()
                if traffic is not None:
                    await traffic
                await running.stop()
    except OSError as exc:
        print(
            f"cutover demo: cannot listen ({exc.strerror or exc}); is another demo running?",
            file=sys.stderr,
        )
        return 1
    print("cutover demo stopped.", flush=True)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    install_uvloop()
    return asyncio.run(_demo(args))
