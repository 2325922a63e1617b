"""The soak: a real cutover with shadow and dual-write under mixed load while faults come and go.

    .venv/bin/python -m bench.soak --minutes 30            # the reference run (not in CI)
    .venv/bin/python -m bench.soak --minutes 2 --store redis

The demo platforms run in this process; cutover, and a Mosquitto and a Redis of the soak's own
(free ports, work folder), are child processes stopped by pid. N clients send a fixed total
rate of reads (shadowed) and writes (dual-written). A cycle of faults repeats over the run: the
secondary slow, flaky, down and back; the primary down for two seconds; the broker killed and
restarted; Redis killed (-9) and restarted when it holds the outbox. Every few seconds the soak
samples cutover's resident memory and its /metrics (outbox depth, mirrors dropped).

At the end the faults are lifted, the outbox drains, and every write is checked on both
platforms: the last accepted write of each record must be what both hold, every accepted create
must exist on both. Anything else is a lost write, and the run fails. The report (markdown, and
the raw figures as JSON) goes to bench/results/. bench/README.md explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from bench.common import PYTHON, REPO, free_port, port_open
from proxy.demo.platforms import Simulators, run_simulators

SAMPLE_EVERY_S = 5.0
DRAIN_TIMEOUT_S = 300.0
ADMIN_TOKEN = "soak-admin-token"
CONTROL_KEY = "soak-control-key-0123456789abcdef"
MIX = ("read",) * 12 + ("ticket",) * 2 + ("patch",) * 4 + ("post",) * 2
CHANNELS = ("phone", "email", "chat", "web")


@dataclass
class Settings:
    minutes: float
    clients: int
    rate: float
    store: str  # sqlite | redis
    broker: bool
    out: Path
    keep: bool
    seed: int


# --- child processes --------------------------------------------------------------------------


@dataclass
class Child:
    """A child process started and stopped by its pid, never by name."""

    name: str
    argv: list[str]
    log: Path
    port: int
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 30.0) -> None:
        handle = self.log.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=handle,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
            )
        finally:
            handle.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.returncode is not None:
                raise SystemExit(f"soak: {self.name} exited {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"soak: {self.name} not listening on {self.port}; see {self.log}")
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return proc.returncode


# --- what clients saw -------------------------------------------------------------------------


@dataclass
class Write:
    kind: str  # patch | post
    key: str  # the contact's old id (patch) or the created name (post)
    name: str
    outcome: str  # accepted | refused | unknown
    at: float


@dataclass
class Ledger:
    started: float = field(default_factory=time.monotonic)
    requests: Counter[str] = field(default_factory=Counter)  # by kind
    answers: Counter[str] = field(default_factory=Counter)  # by status class
    errors: Counter[str] = field(default_factory=Counter)  # client-visible, by kind
    errors_by_fault: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    writes: list[Write] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started


def outcome_of(status: int | str) -> str:
    """What a write's answer says happened on the platforms: accepted (2xx); refused (4xx and
    cutover's own 503: nothing was written); unknown (the rest: 5xx of a platform, no answer)."""
    if isinstance(status, int) and 200 <= status < 300:
        return "accepted"
    if isinstance(status, int) and (400 <= status < 500 or status == 503):
        return "refused"
    return "unknown"


# --- the run ------------------------------------------------------------------------------------


class Soak:
    def __init__(self, settings: Settings, work: Path) -> None:
        self.s = settings
        self.work = work
        self.ledger = Ledger()
        self.timeline: list[tuple[float, str]] = []
        self.active: set[str] = set()
        self.samples: list[dict[str, Any]] = []
        self.children: list[Child] = []
        self.sims: Simulators | None = None
        self.cutover: Child | None = None
        self.broker: Child | None = None
        self.redis: Child | None = None
        self.admin_port = free_port()
        self.listen_port = free_port()
        self.migration = f"soak-{int(time.time())}"
        self.stop_load = asyncio.Event()
        self._fault_tasks: set[asyncio.Task[None]] = set()

    def note(self, text: str) -> None:
        at = self.ledger.now()
        self.timeline.append((round(at, 1), text))
        print(f"soak: {at:7.1f}s  {text}", flush=True)

    # -- set-up --------------------------------------------------------------------------------

    async def start_services(self) -> None:
        if self.s.store == "redis":
            port = free_port()
            self.redis = Child(
                "redis",
                [
                    shutil.which("redis-server") or "redis-server",
                    "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.work),
                    "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                ],
                self.work / "redis.log",
                port,
            )  # fmt: skip
            await self.redis.start()
            self.children.append(self.redis)
        if self.s.broker:
            port = free_port()
            conf = self.work / "mosquitto.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            self.broker = Child(
                "mosquitto",
                [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                self.work / "mosquitto.log",
                port,
            )
            await self.broker.start()
            self.children.append(self.broker)

    def routes(self, sims: Simulators) -> dict[str, Any]:
        doc: dict[str, Any] = YAML(typ="safe").load(REPO / "routes.yaml")
        for side, api, app in sims.upstreams():
            doc["platforms"][side][api]["url"] = app.url
        doc["listen"] = f"127.0.0.1:{self.listen_port}"
        doc["admin"] = {"listen": f"127.0.0.1:{self.admin_port}"}
        doc["migration"] = self.migration
        doc["state_dir"] = str(self.work / "state")
        doc["diff_log"] = {"dir": str(self.work / "diffs"), "max_size": "50MB", "keep": 3}
        doc["outbox"] = {"backoff_min": "100ms", "backoff_max": "5s", "max_attempts": 1000}
        if self.redis is not None:
            doc["store"] = f"redis://127.0.0.1:{self.redis.port}/0"
        else:
            doc["store"] = f"sqlite:///{self.work}/store/outbox.db"
        if self.broker is not None:
            doc["mqtt"] = {"url": f"mqtt://127.0.0.1:{self.broker.port}", "keepalive": "2s"}
        return doc

    async def start_cutover(self, sims: Simulators) -> None:
        config = self.work / "routes.yaml"
        config.write_bytes(orjson.dumps(self.routes(sims)))
        env = {
            "PATH": "/usr/bin:/bin",
            "CUTOVER_ADMIN_TOKEN": ADMIN_TOKEN,
            "CUTOVER_CONTROL_KEY": CONTROL_KEY,
            "CUTOVER_INSTANCE_ID": "soak",
        }
        pairs = self.work / "ids.csv"
        pairs.write_text("".join(f"{k},{o},{n}\n" for k, o, n in sims.id_map))
        imported = await self.cli("idmap", "import", str(pairs))
        if imported[0] != 0:
            raise SystemExit(f"soak: idmap import failed: {imported[2]}")
        self.cutover = Child(
            "cutover",
            [PYTHON, "-m", "proxy", "--config", str(config), "run", "--workers", "1"],
            self.work / "cutover.log",
            self.listen_port,
            cwd=self.work,
            env=env,
        )
        await self.cutover.start()
        self.children.append(self.cutover)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "proxy", "--config", str(self.work / "routes.yaml"), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=self.work,
            env={"PATH": "/usr/bin:/bin", "CUTOVER_ADMIN_TOKEN": ADMIN_TOKEN},
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    # -- load ------------------------------------------------------------------------------------

    async def client(self, http: aiohttp.ClientSession, index: int) -> None:
        rng = random.Random(self.s.seed * 1000 + index)
        every = self.s.clients / self.s.rate
        mine = [c for c in range(1001, 1301) if (c - 1001) % self.s.clients == index]
        k = 0
        start = time.monotonic() + rng.random() * every
        while not self.stop_load.is_set():
            slot = start + k * every
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronisation
            kind = MIX[(k + index) % len(MIX)]
            await self.one(http, rng, kind, index, k, mine[k % len(mine)])
            k += 1

    async def one(
        self,
        http: aiohttp.ClientSession,
        rng: random.Random,
        kind: str,
        index: int,
        k: int,
        own_contact: int,
    ) -> None:
        contact = rng.randrange(1001, 1301)
        body: dict[str, Any] | None = None
        name = ""
        if kind == "read":
            method, path = "GET", f"/api/contacts/{contact}"
        elif kind == "ticket":
            method, path = "GET", f"/api/tickets?limit=5&contact_id={contact}"
        elif kind == "patch":
            contact = own_contact
            name = f"Soak {index}-{k}"
            method, path, body = "PATCH", f"/api/contacts/{contact}", {"full_name": name}
        else:
            name = f"Soak new {index}-{k}"
            method, path = "POST", "/api/contacts"
            body = {"customer": f"C-S{index}-{k}", "full_name": name}
        headers = {"X-Customer-Id": f"C-{contact}", "X-Channel": rng.choice(CHANNELS)}
        status: int | str
        began = time.monotonic()
        try:
            async with http.request(method, self.url + path, json=body, headers=headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        led = self.ledger
        led.latencies.append(time.monotonic() - began)
        led.requests[kind] += 1
        led.answers[f"{status // 100}xx" if isinstance(status, int) else "no answer"] += 1
        if not (isinstance(status, int) and status < 500):
            what = f"{method} {status}"
            led.errors[what] += 1
            led.errors_by_fault[", ".join(sorted(self.active)) or "none"][what] += 1
        if kind in ("patch", "post"):
            key = str(contact) if kind == "patch" else name
            led.writes.append(Write(kind, key, name, outcome_of(status), led.now()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    # -- faults ----------------------------------------------------------------------------------

    def schedule(
        self, total: float
    ) -> list[tuple[float, str, Callable[[], Coroutine[Any, Any, None]]]]:
        """One cycle of faults, repeated: (at seconds, name, action)."""
        sims = self.sims
        assert sims is not None
        cycle = min(max(total / 5, 60.0), 360.0)
        window = cycle * 0.08
        events: list[tuple[float, str, Callable[[], Coroutine[Any, Any, None]]]] = []

        def at(fraction: float) -> float:
            return fraction * cycle

        for n in range(int(total // cycle) + 1):
            base = n * cycle
            plan: list[tuple[float, str, Callable[[], Coroutine[Any, Any, None]]]] = [
                (at(0.05), "secondary slow (800 ms)", self._fault(sims.new_crm, "slow", delay_ms=800)),
                (at(0.05) + window, "secondary ok", self._fault(sims.new_crm, "ok")),
                (at(0.20), "secondary flaky (30 % 503)", self._fault(sims.new_crm, "flaky", error_rate=0.3, status=503, seed=n)),
                (at(0.20) + window, "secondary ok", self._fault(sims.new_crm, "ok")),
                (at(0.35), "secondary down", self._down(sims.new_crm)),
                (at(0.35) + window, "secondary back", self._up(sims.new_crm)),
                (at(0.50), "primary down for 2 s", self._blip(sims.old_crm, 2000)),
            ]  # fmt: skip
            if self.broker is not None:
                plan.append(
                    (at(0.60), "broker killed, back after 5 s", self._restart(self.broker, 5))
                )
            if self.redis is not None:
                plan.append(
                    (at(0.75), "redis killed -9, back after 3 s", self._restart(self.redis, 3))
                )
            events += [(base + t, name, action) for t, name, action in plan if base + t < total]
        return sorted(events, key=lambda e: e[0])

    def _fault(
        self, app: Any, mode: str, **settings: Any
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            app.set_faults(mode, **settings)
            label = f"{app.name} {mode}"
            self.active = {a for a in self.active if not a.startswith(app.name)}
            if mode != "ok":
                self.active.add(label)

        return run

    def _down(self, app: Any) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            await app.go_down()
            self.active.add(f"{app.name} down")

        return run

    def _up(self, app: Any) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            await app.come_up()
            self.active.discard(f"{app.name} down")

        return run

    def _blip(self, app: Any, ms: int) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            label = f"{app.name} down"
            self.active.add(label)
            await app.go_down()
            await asyncio.sleep(ms / 1000)  # the length of the outage
            await app.come_up()
            self.active.discard(label)

        return run

    def _restart(self, child: Child, seconds: float) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            label = f"{child.name} down"
            self.active.add(label)
            await child.stop(signal.SIGKILL)
            await asyncio.sleep(seconds)  # the length of the outage
            await child.start()
            self.active.discard(label)

        return run

    async def faults(self, total: float) -> None:
        for at, name, action in self.schedule(total):
            delay = at - self.ledger.now()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule, not synchronisation
            if self.stop_load.is_set():
                return
            self.note(name)
            # a fault may last (an outage of a few seconds): it runs beside the schedule
            task = asyncio.get_running_loop().create_task(action(), name=f"fault: {name}")
            self._fault_tasks.add(task)
            task.add_done_callback(self._fault_tasks.discard)

    # -- watching --------------------------------------------------------------------------------

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(url, headers=headers) as response:
            text = await response.text()
        out: dict[str, float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "cutover_outbox_pending":
                    out["outbox"] += s.value
                elif s.name == "cutover_outbox_intents":
                    out["intents"] += s.value
                elif s.name == "cutover_mirror_dropped_total":
                    out[f"dropped {s.labels.get('reason')}"] += s.value
                    out["dropped"] += s.value
                elif s.name == "cutover_shadow_total":
                    out[f"shadow {s.labels.get('result')}"] += s.value
                elif s.name == "cutover_outbox_dead":
                    out["dead"] += s.value
        return dict(out)

    def rss_mib(self) -> float:
        pid = self.cutover.pid if self.cutover is not None else None
        if pid is None:
            return 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def sampler(self, http: aiohttp.ClientSession) -> None:
        while True:
            sample: dict[str, Any] = {"t": round(self.ledger.now(), 1), "rss_mib": self.rss_mib()}
            try:
                sample.update(await self.metrics(http))
            except (aiohttp.ClientError, TimeoutError):
                sample["metrics"] = "unavailable"
            sample["requests"] = sum(self.ledger.requests.values())
            sample["errors"] = sum(self.ledger.errors.values())
            sample["faults"] = sorted(self.active)
            self.samples.append(sample)
            if self.cutover is not None and not self.cutover.alive():
                self.note("cutover died")
                self.stop_load.set()
                return
            await asyncio.sleep(SAMPLE_EVERY_S)  # the sampling interval

    # -- the end ---------------------------------------------------------------------------------

    async def drain(self, http: aiohttp.ClientSession) -> float:
        began = time.monotonic()
        while time.monotonic() - began < DRAIN_TIMEOUT_S:
            code, out, _ = await self.cli("outbox", "status", "--json")
            if code == 0:
                status = orjson.loads(out)
                if status["ready"] == 0 and status["intents"] == 0:
                    return time.monotonic() - began
            await asyncio.sleep(1.0)  # polling the outbox
        return -1.0

    def verify(self) -> dict[str, Any]:
        sims = self.sims
        assert sims is not None
        old_names = {str(c["full_name"]) for c in sims.old_crm.contacts()}
        new_names = {str(c["name"]) for c in sims.new_crm.contacts()}
        by_contact: dict[str, list[Write]] = defaultdict(list)
        lost: list[str] = []
        accepted = unknown = refused = unverifiable = diverged = 0
        for write in self.ledger.writes:
            accepted += write.outcome == "accepted"
            unknown += write.outcome == "unknown"
            refused += write.outcome == "refused"
            if write.kind == "post":
                on_both = write.name in old_names and write.name in new_names
                if write.outcome == "accepted" and not on_both:
                    lost.append(f"create {write.name}")
                if write.outcome == "refused" and (
                    write.name in old_names or write.name in new_names
                ):
                    lost.append(f"refused create {write.name} was written")
            else:
                by_contact[write.key].append(write)
        for contact, writes in by_contact.items():
            old_record = sims.old_crm.contact(int(contact))
            new_id = sims.new_id("contact", int(contact))
            new_record = sims.new_crm.contact(new_id) if new_id is not None else None
            old_name = old_record["full_name"] if old_record else None
            new_name = new_record["name"] if new_record else None
            if old_name != new_name:
                diverged += 1
                lost.append(f"contact {contact}: old has {old_name!r}, new has {new_name!r}")
                continue
            last = [w for w in writes if w.outcome != "refused"]
            if not last or last[-1].outcome != "accepted":
                unverifiable += 1  # the last write's outcome is unknown: both agree, that is all
                continue
            if old_name != last[-1].name:
                lost.append(
                    f"contact {contact}: last accepted {last[-1].name!r}, both hold {old_name!r}"
                )
        return {
            "writes": len(self.ledger.writes),
            "accepted": accepted,
            "refused": refused,
            "unknown_outcome": unknown,
            "records_checked": len(by_contact),
            "records_unverifiable": unverifiable,
            "records_diverged": diverged,
            "lost": len(lost),
            "lost_examples": lost[:20],
        }

    async def run(self) -> dict[str, Any]:
        total = self.s.minutes * 60
        await self.start_services()
        async with run_simulators(ports=0) as sims:
            self.sims = sims
            await self.start_cutover(sims)
            self.note(
                f"running: {self.s.clients} clients, {self.s.rate:g} req/s, "
                f"store {self.s.store}, broker {'on' if self.broker else 'off'}"
            )
            timeout = aiohttp.ClientTimeout(total=15)
            connector = aiohttp.TCPConnector(limit=self.s.clients * 2)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                watcher = asyncio.get_running_loop().create_task(self.sampler(http))
                faults = asyncio.get_running_loop().create_task(self.faults(total))
                clients = [
                    asyncio.get_running_loop().create_task(self.client(http, n))
                    for n in range(self.s.clients)
                ]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_load.wait(), timeout=total)
                self.stop_load.set()
                await asyncio.gather(*clients)
                faults.cancel()
                await asyncio.gather(faults, *self._fault_tasks, return_exceptions=True)
                self.note("load stopped; faults lifted")
                for app in sims:
                    await app.come_up()
                    app.set_faults("ok")
                for child in (self.broker, self.redis):
                    if child is not None and not child.alive():
                        await child.start()
                drained = await self.drain(http)
                self.note(
                    f"outbox drained in {drained:.1f}s" if drained >= 0 else "outbox NOT drained"
                )
                final = await self.metrics(http)
                listed, out, _ = await self.cli("outbox", "dead-letters", "--json")
                dead = orjson.loads(out) if listed == 0 and out.strip() else []
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                self.samples.append(
                    {"t": round(self.ledger.now(), 1), "rss_mib": self.rss_mib(), **final}
                )
            verified = self.verify()
            assert self.cutover is not None
            code = await self.cutover.stop()
            self.note(f"cutover stopped with exit code {code}")
        reasons = Counter(
            f"{d.get('method')} {d.get('route')}: {d.get('dead_reason') or d.get('last_error')}"
            for d in dead
        )
        return {
            "final_metrics": final,
            "drain_s": drained,
            "verify": verified,
            "exit_code": code,
            "dead_letters": dict(reasons),
        }

    async def stop_all(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                await child.stop()


# --- the report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(soak: Soak, result: dict[str, Any], seconds: float) -> tuple[str, dict[str, Any]]:
    led = soak.ledger
    s = soak.s
    samples = soak.samples
    rss = [x["rss_mib"] for x in samples if x.get("rss_mib")]
    after_first_minute = [x["rss_mib"] for x in samples if x["t"] >= 60 and x.get("rss_mib")]
    outbox_peak = max((x.get("outbox", 0) + x.get("intents", 0) for x in samples), default=0)
    final = result["final_metrics"]
    verify = result["verify"]
    total = sum(led.requests.values())
    errors = sum(led.errors.values())
    ok = verify["lost"] == 0 and result["exit_code"] == 0 and result["drain_s"] >= 0
    lines = [
        f"# Soak {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {'PASS' if ok else 'FAIL'}",
        "",
        f"`python -m bench.soak --minutes {s.minutes:g} --clients {s.clients} --rate {s.rate:g} "
        f"--store {s.store}{'' if s.broker else ' --no-broker'}` — {seconds / 60:.1f} minutes of load "
        '(bench/README.md, "Soak").',
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {total} ({total / max(seconds, 1):.0f}/s): "
        + ", ".join(f"{k} {v}" for k, v in sorted(led.requests.items()))
        + " |",
        "| answers | " + ", ".join(f"{k} {v}" for k, v in sorted(led.answers.items())) + " |",
        f"| client-visible errors | {errors} ({errors / max(total, 1):.2%}) |",
        f"| latency p50 / p99 / max | {percentile(led.latencies, 0.5) * 1000:.1f} / "
        f"{percentile(led.latencies, 0.99) * 1000:.1f} / {max(led.latencies, default=0) * 1000:.0f} ms |",
        f"| mirrors dropped | {final.get('dropped', 0):.0f} ("
        + ", ".join(
            f"{k.split(' ', 1)[1]} {v:.0f}"
            for k, v in sorted(final.items())
            if k.startswith("dropped ") and v
        )
        + ") |",
        "| shadow comparisons | "
        + ", ".join(
            f"{k.split(' ', 1)[1]} {v:.0f}"
            for k, v in sorted(final.items())
            if k.startswith("shadow ") and v
        )
        + " |",
        f"| outbox peak depth | {outbox_peak:.0f} (ready + intents, sampled every {SAMPLE_EVERY_S:g} s) |",
        f"| outbox drained after the load | {result['drain_s']:.1f} s |"
        if result["drain_s"] >= 0
        else "| outbox drained | NO |",
        f"| dead letters | {final.get('dead', 0):.0f} |",
        f"| RSS start / after 1 min / end / peak | {rss[0] if rss else 0:.0f} / "
        f"{f'{after_first_minute[0]:.0f}' if after_first_minute else 'n/a'} / "
        f"{rss[-1] if rss else 0:.0f} / "
        f"{max(rss, default=0):.0f} MiB |",
        f"| writes | {verify['writes']}: accepted {verify['accepted']}, refused {verify['refused']}, "
        f"outcome unknown {verify['unknown_outcome']} |",
        f"| records checked on both platforms | {verify['records_checked']} "
        f"({verify['records_unverifiable']} ended on a write of unknown outcome: both agree) |",
        f"| **writes lost** | **{verify['lost']}** |",
        f"| cutover exit code | {result['exit_code']} |",
        "",
        "## Client-visible errors by fault in force",
        "",
        "| faults in force | errors |",
        "|---|---|",
    ]
    for faults, counts in sorted(led.errors_by_fault.items()):
        lines.append(
            f"| {faults} | " + ", ".join(f"{k} x{v}" for k, v in counts.most_common()) + " |"
        )
    lines += ["", "## Faults", "", "| t (s) | event |", "|---|---|"]
    lines += [f"| {t} | {text} |" for t, text in soak.timeline]
    lines += [
        "",
        "## Over time",
        "",
        "| t (s) | RSS MiB | requests | errors | outbox | dropped | faults |",
        "|---|---|---|---|---|---|---|",
    ]
    step = max(1, len(samples) // 40)
    for x in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
        lines.append(
            f"| {x['t']} | {x.get('rss_mib', 0):.1f} | {x.get('requests', '')} | {x.get('errors', '')} | "
            f"{x.get('outbox', 0) + x.get('intents', 0):.0f} | {x.get('dropped', 0):.0f} | "
            f"{', '.join(x.get('faults', []))} |"
        )
    if result["dead_letters"]:
        lines += ["", "## Dead letters (writes the outbox gave up on, with the reason)", ""]
        lines += [f"- {reason} (x{count})" for reason, count in result["dead_letters"].items()]
    if verify["lost_examples"]:
        lines += ["", "## Lost writes", ""] + [f"- {e}" for e in verify["lost_examples"]]
    raw = {
        "settings": {**asdict(s), "out": str(s.out)},
        "seconds": seconds,
        "requests": dict(led.requests),
        "answers": dict(led.answers),
        "errors": dict(led.errors),
        "errors_by_fault": {k: dict(v) for k, v in led.errors_by_fault.items()},
        "timeline": soak.timeline,
        "samples": samples,
        **result,
        "pass": ok,
    }
    return "\n".join(lines) + "\n", raw


def parse(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="length of the load (default 30)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--rate", type=float, default=100.0, help="total requests/s (default 100)")
    parser.add_argument(
        "--store",
        choices=["sqlite", "redis"],
        default="redis",
        help="the outbox store (default redis: its restart is one of the faults)",
    )
    parser.add_argument(
        "--no-broker", action="store_true", help="no MQTT broker (and no broker restarts)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (logs, diff log, store)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.rate <= 0:
        parser.error("--minutes, --clients and --rate must be positive")
    return Settings(
        args.minutes,
        args.clients,
        args.rate,
        args.store,
        not args.no_broker,
        args.out,
        args.keep,
        args.seed,
    )


async def _main(settings: Settings) -> int:
    work = Path(tempfile.mkdtemp(prefix="cutover-soak-"))
    soak = Soak(settings, work)
    began = time.monotonic()
    try:
        result = await soak.run()
    finally:
        await soak.stop_all()
    seconds = settings.minutes * 60 if soak.ledger.requests else time.monotonic() - began
    text, raw = report(soak, result, min(seconds, time.monotonic() - began))
    settings.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (settings.out / f"soak-{stamp}.md").write_text(text)
    (settings.out / "raw").mkdir(exist_ok=True)
    (settings.out / "raw" / f"soak-{stamp}.json").write_bytes(
        orjson.dumps(raw, option=orjson.OPT_INDENT_2)
    )
    print(text)
    print(f"soak: report in {settings.out / f'soak-{stamp}.md'}; work folder {work}")
    if not settings.keep and raw["pass"]:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if raw["pass"] else 1


def main(argv: list[str] | None = None) -> int:
    settings = parse(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop

        return uvloop.run(_main(settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
