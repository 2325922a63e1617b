"""Shadow reads on the data path: send a read to the secondary too, compare, log the difference.

Vocabulary from GitHub's Scientist: the primary's answer is the control, the secondary's the
candidate. The client only ever gets the control; the candidate runs in a job of the mirror
dispatcher (bounded, dropped and counted when full) and a candidate failure never reaches the
caller. The handler tees the primary's body into a `Capture` while it relays it, and only once
the client has its answer does the secondary request leave: the read being shadowed costs its
own client nothing (an upstream that answers in 0.1 ms used to wait for the ~0.2 ms it takes to
build and send the copy), and the comparison never holds up a client.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson
import structlog
from multidict import CIMultiDict

from proxy.config.table import Route, RouteTable, Upstream
from proxy.dualwrite.model import OutboxEntry
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.headers import (
    MIRROR,
    REQUEST_ID,
    Forwarded,
    add_forwarding,
    upstream_request_headers,
)
from proxy.http1.client import Answer as ClientAnswer
from proxy.idlegate import IdleGate
from proxy.mirror import FollowUp, MirrorDispatcher
from proxy.observe import CustomerHasher
from proxy.routing import Decision
from proxy.telemetry import Telemetry
from proxy.translate import Resolved, Translator
from proxy.upstream import UpstreamClients
from shadow.compare import Comparison, Difference, Observation, compare, compare_repeat
from shadow.noise import NoiseLearner, NoiseSet
from shadow.redact import redact_difference, redact_doc
from shadow.rules import CompareRules
from shadow.stats import Cell, Outcome, ShadowStats

log = structlog.get_logger("cutover.shadow")

#: bodies larger than this are compared in a worker thread, not on the event loop
COMPARE_OFF_LOOP = 64 * 1024
#: mismatching bodies up to this size are kept in the diff record for side-by-side display
RECORD_BODIES_UP_TO = 64 * 1024


class RecordSink(Protocol):
    def submit(self, record: dict[str, Any]) -> bool: ...


class Capture:
    """A tee of one answer's body: up to `cap` bytes of it, and the sha256 of all of it once
    it is larger than that (a body kept whole is hashed only if someone asks)."""

    __slots__ = ("_hash", "_parts", "cap", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._hash: Any = None  # hashlib's sha256, from the moment the body overflows
        self._parts: list[bytes] = []
        self.size = 0

    @property
    def overflow(self) -> bool:
        return self._hash is not None

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._hash is not None:
            self._hash.update(chunk)
        elif self.size > self.cap:
            self._hash = hashlib.sha256(b"".join(self._parts))
            self._hash.update(chunk)
            self._parts.clear()
        else:
            self._parts.append(chunk)

    def observation(self, status: int, headers: Mapping[str, str]) -> Observation:
        """`headers` as the answer has them (a case-insensitive mapping: compare looks names
        up in lower case)."""
        whole = self._hash is None
        return Observation(
            status=status,
            headers=headers,
            body=b"".join(self._parts) if whole else None,
            body_sha256="" if whole else self._hash.hexdigest(),
            body_size=self.size,
            content_type=headers.get("content-type", ""),
        )


@dataclass(slots=True)  # not frozen: made per request (a frozen dataclass's __init__ is ~4x slower)
class ClientHeaders:
    """What a secondary request needs of the client's request, copied while it is at hand."""

    items: tuple[tuple[str, str], ...]
    named: frozenset[str]
    peer: str | None
    proto: str
    host: str | None
    trusted: Forwarded | None = None

    def for_secondary(
        self, upstream: Upstream, route: Route, request_id: str, kind: str
    ) -> CIMultiDict[str]:
        """Never the client's credentials; the platform's own; marked as a mirror copy."""
        headers = upstream_request_headers(self.items, self.named, upstream.headers, secondary=True)
        add_forwarding(
            headers,
            peer=self.peer,
            proto=self.proto,
            host=self.host,
            request_id=request_id,
            trusted=self.trusted,
        )
        for name, value in route.spec.mirror_headers.items():
            headers[name] = value
        headers[MIRROR] = kind
        return headers


@dataclass(slots=True)
class Answer:
    """One side of an exchange as the comparison sees it."""

    observation: Observation | None
    latency_ms: float
    error: str | None = None  # the UpstreamError kind when the side failed


@dataclass(slots=True)
class ShadowRead:
    """A read the secondary's lane took (`Proxy._shadow_read`): what its request needs, and the
    control, teed while the primary's answer is relayed and complete once the client has it.
    What it needs of the client's headers is copied after the answer (`Shadowing.start`)."""

    decision: Decision
    secondary: Upstream
    primary: Upstream
    method: str
    path: str
    query: str
    primary_target: str  # what the primary was asked for (a noise probe asks it again)
    request_id: str
    resolved: Resolved
    probe_noise: bool
    capture: Capture
    started: float = field(default_factory=time.monotonic)
    control: Answer | None = None

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        latency = (time.monotonic() - self.started) * 1000
        self.control = Answer(self.capture.observation(status, headers), latency)

    def failed(self, kind: str) -> None:
        self.control = Answer(None, (time.monotonic() - self.started) * 1000, kind)


def cell_of(decision: Decision) -> Cell:
    """The stats cell of a decision: (route, channel, cohort)."""
    identity = decision.identity
    return (decision.route.name, identity.channel, identity.cohort)


async def _tee(answer: ClientAnswer, capture: Capture, upstream: Upstream, deadline: float) -> None:
    """The body of an answer that did not arrive in one read, by `deadline` (monotonic)."""
    async for chunk in answer.chunks():
        capture.feed(chunk)
        if time.monotonic() > deadline:
            raise UpstreamTimeout(upstream.name, "the answer's body took over twice the timeout")


def mask_query(query: str) -> str:
    """Query values can be personal data (a searched e-mail): keep the names, mask the values."""
    if not query:
        return ""
    return "&".join(f"{name}=***" for name, _ in parse_qsl(query, keep_blank_values=True))


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds, for one diff record per compared read: the
    date and time to the second are formatted once a second, not once a record."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


_iso_now = _Clock().now


class Shadowing:
    """Owns shadow jobs' shared parts: the dispatcher, the noise learners, the stats, the sink."""

    def __init__(
        self,
        clients: UpstreamClients,
        dispatcher: MirrorDispatcher,
        stats: ShadowStats,
        hasher: CustomerHasher,
        sink: RecordSink | None,
        translator: Translator | None = None,
        telemetry: Telemetry | None = None,
        gate: IdleGate | None = None,
    ) -> None:
        self.clients = clients
        self.telemetry = telemetry
        self.gate = gate  # comparisons yield to client requests (proxy/idlegate.py)
        self.translator = translator or Translator(None)
        self.dispatcher = dispatcher
        self.stats = stats
        self.hasher = hasher
        self.sink = sink
        self._learners: dict[str, NoiseLearner] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutover-compare")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.sink is not None and not self.sink.submit(record):
            self.stats.drop_reasons["diff_log_full"] += 1

    def verify(
        self, table: RouteTable, route: Route, path: str, resolved: Resolved, entry: OutboxEntry
    ) -> bool:
        """Read one written record on both platforms and log the comparison (`kind: verify`).
        Runs in the secondary's mirror lane; False when the lane dropped it."""
        old_up = table.upstream("old", route.api)
        new_up = table.upstream("new", route.api)

        async def job() -> None:
            old_target = await self.translator.path_on(route, "old", path, "", resolved)
            new_target = await self.translator.path_on(route, "new", path, "", resolved)
            if old_target is None or new_target is None:
                return
            answers = []
            for upstream, target in ((old_up, old_target), (new_up, new_target)):
                headers: CIMultiDict[str] = CIMultiDict(upstream.headers)
                headers[MIRROR] = "verify"
                headers[REQUEST_ID] = entry.request_id
                answers.append(self.fetch(upstream, "GET", target, headers, route.rules.max_body))
            old, new = await asyncio.gather(*answers)
            comparison = None
            if old.observation is not None and new.observation is not None:
                new_obs, translated = await self.in_old_terms(route, new.observation)
                comparison = await self.compare(
                    old.observation, new_obs, route.rules, route.name, translated=translated
                )
                self.stats.verified[comparison.match] += 1
            head = {
                "ts": _iso_now(),
                "kind": "verify",
                "request_id": entry.request_id,
                "route": route.name,
                "channel": None,
                "cohort": None,
                "customer": entry.customer,
                "method": "GET",
                "path": path,
                "query": "",
                "primary": "old" if entry.target == "new" else "new",
            }
            # the raw customer key is not kept in the outbox, so no bodies to scrub it from
            self.write(
                build_record(
                    head,
                    old,
                    new,
                    comparison,
                    route.rules,
                    customer=None,
                    hasher=self.hasher,
                    bodies=False,
                )
            )

        target = new_up if entry.target == "new" else old_up
        return self.dispatcher.submit(target.name, target.mirror, job) is None

    def learner(self, route: str) -> NoiseLearner:
        learner = self._learners.get(route)
        if learner is None:
            learner = self._learners[route] = NoiseLearner()
        return learner

    def noise_report(self) -> dict[str, dict[str, int]]:
        return {name: dict(lr.snapshot().counts) for name, lr in self._learners.items()}

    def turned_away(self, decision: Decision, secondary: Upstream) -> bool:
        """True (counted as dropped) when the secondary's lane would drop this read anyway."""
        reason = self.dispatcher.turn_away(secondary.name, secondary.mirror)
        if reason is None:
            return False
        self.stats.dropped(cell_of(decision), reason)
        return True

    def aborted(self, read: ShadowRead) -> None:
        """The client went away before the primary's answer: nothing to compare, no copy sent."""
        self.stats.count(cell_of(read.decision), "aborted")

    async def start(self, read: ShadowRead, client: ClientHeaders) -> bool:
        """Once the client has the primary's answer (`read.control`): submit the secondary read;
        False when it was dropped (counted). Never raises: the client has its answer, and what
        goes wrong with the copy is the copy's (logged, counted as an error)."""
        cell = cell_of(read.decision)
        try:
            route = read.decision.route
            control = read.control
            assert control is not None, "a shadow read starts once the primary has answered"
            translator = self.translator
            path, query, resolved = read.path, read.query, read.resolved
            side = read.secondary.side
            if translator.looks_up_query(route, query):
                target = await translator.path_on(route, side, path, query, resolved)
            else:
                target = translator.path_now(route, side, path, query, resolved)
            if target is None:
                self.stats.dropped(cell, "one_sided_record")  # nothing to compare it with
                return False
            exchange = _Exchange(self, read, client, cell, control, target)
            secondary = read.secondary
            reason = self.dispatcher.submit(secondary.name, secondary.mirror, exchange.run)
        except Exception:
            log.exception("shadow_start_failed", request_id=read.request_id)
            self.stats.count(cell, "error")
            return False
        if reason is not None:
            self.stats.dropped(cell, reason)
            return False
        return True

    async def fetch(
        self, upstream: Upstream, method: str, target: str, headers: CIMultiDict[str], cap: int
    ) -> Answer:
        """One secondary-role request, its whole body teed into a capture, within 2 x timeout;
        whether the upstream answered at all feeds its lane's circuit breaker."""
        started = time.monotonic()
        capture = Capture(cap)
        try:
            # the head and each chunk are bounded by the upstream's timeout (the pool's); the
            # whole body by twice that, checked between chunks
            async with self.clients.request(upstream, "secondary", method, target, headers) as r:
                if r.complete:  # the usual case: the answer came in one read
                    capture.feed(r.take())
                else:
                    await _tee(r, capture, upstream, started + upstream.timeout * 2)
                observation = capture.observation(r.status, r.headers)
        except TimeoutError:
            self.dispatcher.report(upstream.name, reachable=False)
            return Answer(None, (time.monotonic() - started) * 1000, "upstream-timeout")
        except UpstreamError as exc:
            self.dispatcher.report(upstream.name, reachable=False)
            return Answer(None, (time.monotonic() - started) * 1000, exc.kind)
        self.dispatcher.report(upstream.name, reachable=True)
        return Answer(observation, (time.monotonic() - started) * 1000)

    async def in_old_terms(self, route: Route, new: Observation) -> tuple[Observation, bool]:
        """The new platform's answer with its ids translated to old ids (and so the contract
        applied) for routes with an id map; compare applies the contract itself otherwise."""
        if route.ids is None or new.body is None or "json" not in new.content_type.lower():
            return new, False
        try:
            doc = orjson.loads(new.body)
        except orjson.JSONDecodeError:
            return new, False
        body = orjson.dumps(await self.translator.answer_doc(route, "new", doc))
        translated = replace(new, body=body, body_sha256="", body_size=len(body))
        return translated, True

    @staticmethod
    def fits_loop(old: Observation, new: Observation) -> bool:
        """Bodies small enough to compare on the loop (COMPARE_OFF_LOOP); larger ones are
        compared in the worker thread, so that the loop keeps serving meanwhile."""
        return max(old.body_size, new.body_size) <= COMPARE_OFF_LOOP

    def _noise(self, route: str) -> NoiseSet | None:
        return self._learners[route].snapshot() if route in self._learners else None

    def compare_now(
        self,
        old: Observation,
        new: Observation,
        rules: CompareRules,
        route: str,
        *,
        translated: bool = False,
    ) -> Comparison:
        """On the loop, for what `fits_loop`: no coroutine (the judge calls it directly)."""
        return compare(old, new, rules, noise=self._noise(route), new_is_translated=translated)

    async def compare(
        self,
        old: Observation,
        new: Observation,
        rules: CompareRules,
        route: str,
        *,
        translated: bool = False,
    ) -> Comparison:
        if self.fits_loop(old, new):
            return self.compare_now(old, new, rules, route, translated=translated)
        return await self.compare_off_loop(old, new, rules, route, translated=translated)

    async def compare_off_loop(
        self,
        old: Observation,
        new: Observation,
        rules: CompareRules,
        route: str,
        *,
        translated: bool = False,
    ) -> Comparison:
        noise = self._noise(route)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            lambda: compare(old, new, rules, noise=noise, new_is_translated=translated),
        )


@dataclass(slots=True)
class _Exchange:
    """One shadow job: the candidate request, then the comparison with the control, the record."""

    shadowing: Shadowing
    read: ShadowRead
    client: ClientHeaders
    cell: Cell
    control: Answer
    secondary_target: str

    async def run(self) -> FollowUp:
        """The candidate request (in the lane's slot); then, outside it, the comparison."""
        read = self.read
        route = read.decision.route
        headers = self.client.for_secondary(read.secondary, route, read.request_id, "shadow")
        candidate = await self.shadowing.fetch(
            read.secondary, read.method, self.secondary_target, headers, route.rules.max_body
        )

        return partial(self.judge, candidate)

    async def judge(self, candidate: Answer) -> None:
        """Compare with the control, count, record."""
        read = self.read
        route = read.decision.route
        sh = self.shadowing
        control = self.control
        sh.dispatcher.primary_took(read.secondary.name, control.latency_ms / 1000)
        gate = sh.gate
        if gate is not None and not gate.at_once():  # the comparison and the record wait
            await gate.wait()  # for a pass of the loop without client requests
        if control.observation is None or candidate.observation is None:
            sh.stats.count(self.cell, "error")
            self._record(control, candidate, None)
            return
        old, new = self._oriented(control, candidate)
        assert old.observation is not None
        assert new.observation is not None
        # no coroutine for what needs none: no id map to translate through, a body small
        # enough to compare on the loop (two coroutines fewer per comparison)
        if route.ids is None:
            new_obs, translated = new.observation, False
        else:
            new_obs, translated = await sh.in_old_terms(route, new.observation)
        if sh.fits_loop(old.observation, new_obs):
            comparison = sh.compare_now(
                old.observation, new_obs, route.rules, route.name, translated=translated
            )
        else:
            comparison = await sh.compare_off_loop(
                old.observation, new_obs, route.rules, route.name, translated=translated
            )
        result: Outcome = "match" if comparison.match else "mismatch"
        sh.stats.count(self.cell, result, noisy=bool(comparison.noise))
        if sh.telemetry is not None:
            sh.telemetry.compared(
                *self.cell, result, secondary=(read.secondary.side, candidate.latency_ms / 1000)
            )
        if comparison.differences:
            sh.stats.paths(route.name, [d.path for d in comparison.differences])
        self._record(control, candidate, comparison)
        if read.probe_noise:
            self._probe(control.observation)

    def _oriented(self, control: Answer, candidate: Answer) -> tuple[Answer, Answer]:
        """(old, new): comparisons always read old against new, whoever was primary."""
        return (control, candidate) if self.read.decision.primary == "old" else (candidate, control)

    def _probe(self, first: Observation) -> None:
        """Ask the primary again: what differs between two of its own answers is noise."""
        read = self.read
        route = read.decision.route
        sh = self.shadowing
        primary = read.primary
        target = read.primary_target
        headers = self.client.for_secondary(primary, route, read.request_id, "noise-probe")
        side = primary.side

        async def probe() -> None:
            again = await sh.fetch(primary, read.method, target, headers, route.rules.max_body)
            if again.observation is None:
                return
            comparison = compare_repeat(first, again.observation, route.rules, side=side)
            sh.learner(route.name).learn(comparison)

        reason = sh.dispatcher.submit(primary.name, primary.mirror, probe)
        if reason is not None:
            sh.stats.drop_reasons[f"noise_probe_{reason}"] += 1

    def _record(self, control: Answer, candidate: Answer, comparison: Comparison | None) -> None:
        read = self.read
        decision = read.decision
        old, new = self._oriented(control, candidate)
        head = {
            "ts": _iso_now(),
            "kind": "shadow",
            "request_id": read.request_id,
            "route": decision.route.name,
            "channel": decision.identity.channel,
            "cohort": decision.identity.cohort,
            "customer": self.shadowing.hasher(decision.identity.customer),
            "method": read.method,
            "path": self._masked_path(),
            "query": mask_query(read.query),
            "primary": decision.primary,
        }
        record = build_record(
            head,
            old,
            new,
            comparison,
            decision.route.rules,
            customer=decision.identity.customer,
            hasher=self.shadowing.hasher,
        )
        self.shadowing.write(record)

    def _masked_path(self) -> str:
        """The path, with the customer key (when it appears in it) replaced by its hash."""
        path = self.read.path
        customer = self.read.decision.identity.customer
        if customer and customer in path:
            return path.replace(customer, self.shadowing.hasher(customer) or "***")
        return path


def build_record(
    head: dict[str, Any],
    old: Answer,
    new: Answer,
    comparison: Comparison | None,
    rules: CompareRules,
    *,
    customer: str | None,
    hasher: CustomerHasher,
    bodies: bool = True,
) -> dict[str, Any]:
    """One diff-log line (docs/diff-log.md): redacted, the customer key hashed wherever a
    platform echoed it; bodies only for mismatches, and only small ones. `head` becomes the
    record (one dict per compared read, not two)."""
    record = head  # the caller's own dict, made for this record
    old_seen, new_seen = old.observation, new.observation
    record["status"] = {
        "old": old_seen.status if old_seen else None,
        "new": new_seen.status if new_seen else None,
    }
    record["latency_ms"] = {"old": round(old.latency_ms, 2), "new": round(new.latency_ms, 2)}
    if comparison is None:
        record["result"] = "error"
        record["match"] = False
        record["mode"] = None
        record["differences"] = []
        record["noise"] = []
        record["error"] = {"side": "old" if old.error else "new", "kind": old.error or new.error}
        return record
    match = comparison.match
    record["result"] = "match" if match else "mismatch"
    record["match"] = match
    record["mode"] = comparison.mode
    differences, noise = comparison.differences, comparison.noise
    record["differences"] = [_diff(redact_difference(d, rules)) for d in differences]
    record["noise"] = [_diff(redact_difference(d, rules)) for d in noise]
    record["error"] = None
    if match and not noise:
        return record  # nothing from the bodies in it: no bodies to add, nothing to scrub
    sizes = [seen.body_size for seen in (old_seen, new_seen) if seen is not None]
    small = max(sizes, default=0) <= RECORD_BODIES_UP_TO
    if bodies and not match and comparison.mode == "json" and small:
        record["bodies"] = {
            "old": redact_doc(comparison.old_doc, rules),
            "new": redact_doc(comparison.new_doc, rules),
        }
    if customer is not None:
        hashed = hasher(customer) or "***"
        for key in ("differences", "noise", "bodies"):
            if record.get(key):
                record[key] = scrub(record[key], customer, hashed)
    return record


def scrub(value: Any, secret: str, replacement: str) -> Any:
    """A copy of a JSON value with every occurrence of `secret` in its strings replaced: the
    customer key is personal data wherever a platform happens to echo it."""
    if isinstance(value, str):
        return value.replace(secret, replacement) if secret in value else value
    if isinstance(value, dict):
        return {k: scrub(v, secret, replacement) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secret, replacement) for v in value]
    return value


def _diff(difference: Difference) -> dict[str, Any]:
    return {
        "path": difference.path,
        "kind": difference.kind,
        "old": difference.old,
        "new": difference.new,
    }
