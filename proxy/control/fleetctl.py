"""Fleet control, the operator side: short-lived clients behind `cutover rollback`, `resume`,
`shift`, `publish` and `status`.

Each function opens its own connection, does one thing and closes it. Commands are published
retained with QoS 1 as the whole desired state, signed, with a `seq` above every one the fleet has
seen (the retained command's and the ones instances report), so a publisher whose clock is behind
the previous one's still moves the fleet forward.

Exceptions: `FleetError` (what an operator can act on: broker unreachable, key missing, a command
the fleet would refuse), never a traceback from aiomqtt.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import orjson
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from proxy.config import content_version
from proxy.config.spec import MqttSpec
from proxy.control.fleet import Broker, Topics, broker_from_spec, subscription_refused
from proxy.control.signing import MAX_SEQ, Refused, read_unverified, sign, verify

#: how long connecting, and each acknowledgement, may take before the command gives up
CONNECT_TIMEOUT = 5.0
#: the most read_retained waits for retained messages to stop arriving
FENCE_GRACE = 0.005  # s kept after the fence for brokers that order less strictly
READ_TIMEOUT = 5.0
#: seqs reported by instances are not signed: one further ahead than this is ignored, so a forged
#: status cannot push the fleet's seq to the end of its range
SEQ_LOOKAHEAD_MS = 366 * 24 * 3600 * 1000


class FleetError(Exception):
    """A fleet command that could not be done; the message says why, for an operator."""


@dataclass(frozen=True, slots=True)
class RetainedConfig:
    seq: int
    version: str
    text: str
    ts: float
    verified: bool  # False when read without a key: for display, never for trust


@dataclass(frozen=True, slots=True)
class RetainedRollback:
    seq: int
    scopes: tuple[dict[str, Any], ...]
    by: str
    reason: str
    ts: float
    verified: bool


@dataclass(frozen=True, slots=True)
class FleetView:
    """What the broker holds for one migration."""

    config: RetainedConfig | None = None
    rollback: RetainedRollback | None = None
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: topic -> refusal reason, for retained commands that did not verify (or instance statuses
    #: that are not JSON)
    refused: dict[str, str] = field(default_factory=dict)

    def online(self) -> dict[str, dict[str, Any]]:
        return {i: s for i, s in self.instances.items() if s.get("status") == "online"}


# --- commands -----------------------------------------------------------------------------------


async def publish_config(spec: MqttSpec, migration: str, key: bytes, text: str) -> int:
    """Publish a whole routes.yaml to the fleet; returns its seq."""
    _need_key(spec, key)
    topics = Topics(migration)
    _check_migration(text, migration)
    async with _connect(spec) as client:
        view = await _read(client, topics, [topics.config, topics.instances], key)
        current = [view.config.seq] if view.config else []
        seq = next_seq(current, _reported(view, "config_seq"))
        payload = {
            "kind": "config",
            "seq": seq,
            "ts": time.time(),
            "version": content_version(text.encode()),
            "text": text,
        }
        await _publish(client, topics.config, _sign(key, topics.config, payload))
    return seq


async def publish_rollback(
    spec: MqttSpec,
    migration: str,
    key: bytes,
    scopes: list[dict[str, Any]],
    *,
    by: str,
    reason: str,
) -> int:
    """Publish the fleet's rollback flags (the complete set: `[]` resumes); returns the seq.
    Each scope without its own `by`, `reason` or `at` gets the command's."""
    _need_key(spec, key)
    topics = Topics(migration)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    stamped = [
        {**s, "by": s.get("by") or by, "reason": s.get("reason") or reason, "at": s.get("at") or at}
        for s in scopes
    ]
    async with _connect(spec) as client:
        view = await _read(client, topics, [topics.rollback, topics.instances], key)
        current = [view.rollback.seq] if view.rollback else []
        seq = next_seq(current, _reported(view, "rollback_seq"))
        payload = {
            "kind": "rollback",
            "seq": seq,
            "ts": time.time(),
            "scopes": stamped,
            "by": by,
            "reason": reason,
        }
        await _publish(client, topics.rollback, _sign(key, topics.rollback, payload))
    return seq


def next_seq(current: Iterable[int], reported: Iterable[int], *, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch, or one more than any seq already seen if that is larger."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    seen = [s for s in (*current, *reported) if 0 < s <= now + SEQ_LOOKAHEAD_MS]
    seq = max([now, *(s + 1 for s in seen)])
    if seq > MAX_SEQ:
        raise FleetError(f"the next seq ({seq}) is beyond {MAX_SEQ}")
    return seq


# --- reading ------------------------------------------------------------------------------------


async def read_retained(
    spec: MqttSpec,
    migration: str,
    key: bytes | None,
    *,
    timeout: float = READ_TIMEOUT,
) -> FleetView:
    """The retained config, rollback flags and instance statuses; commands are verified when a
    key is given (read up to a fence, at most `timeout`)."""
    topics = Topics(migration)
    async with _connect(spec) as client:
        return await _read(
            client,
            topics,
            [topics.config, topics.rollback, topics.instances],
            key,
            timeout=timeout,
        )


async def wait_converged(
    spec: MqttSpec,
    migration: str,
    *,
    rollback_seq: int | None = None,
    config_version: str | None = None,
    timeout: float = 5.0,
) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Watch `instances/+` until every online instance reports `rollback_seq >= rollback_seq`
    and/or `version == config_version`: (converged, latest status of every instance seen).

    Offline instances are not waited for; an instance that is online but does not apply is.
    Convergence is judged only once the retained statuses are in (a fence, as in `_read`, plus
    FENCE_GRACE), so no instance is missed because its status came late; no instance online
    counts as converged (the statuses say so)."""
    topics = Topics(migration)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    statuses: dict[str, dict[str, Any]] = {}
    fence = f"{topics.root}/fence/{uuid.uuid4().hex}"
    judged_from: float | None = None  # when the retained burst is known to be over
    async with _connect(spec) as client:
        await _subscribe(client, [topics.instances, fence])
        await client.publish(fence, b"fence", qos=1)
        with Inbox(client) as inbox:
            while True:
                now = loop.time()
                ready = judged_from is not None and now >= judged_from
                if ready and _converged(statuses, rollback_seq, config_version):
                    return True, statuses
                if now >= deadline:
                    return False, statuses
                wake = deadline if ready or judged_from is None else min(judged_from, deadline)
                message = await inbox.get(wake - now)
                if message is None:
                    continue
                if message.topic.value == fence:
                    judged_from = loop.time() + FENCE_GRACE
                    continue
                instance = message.topic.value.rsplit("/", 1)[-1]
                status = _status(message.payload)
                if status is None:
                    statuses.pop(instance, None)
                else:
                    statuses[instance] = status


def convergence(view: FleetView) -> dict[str, Any]:
    """Every instance the broker knows, and whether it enforces the retained config and rollback
    flags (`cutover status --fleet`, the console's fleet view). The fleet has converged when at
    least one instance is online and every online one has."""
    want_version = view.config.version if view.config is not None else None
    want_seq = view.rollback.seq if view.rollback is not None else 0
    rows = []
    for instance, s in sorted(view.instances.items()):
        converged = (
            s.get("status") == "online"
            and (want_version is None or s.get("version") == want_version)
            and int(s.get("rollback_seq") or 0) >= want_seq
        )
        rows.append({**s, "instance": instance, "converged": converged})
    online = [r for r in rows if r.get("status") == "online"]
    return {
        "config_version": want_version,
        "rollback_seq": want_seq,
        "rollback_scopes": list(view.rollback.scopes) if view.rollback else [],
        "converged": bool(online) and all(r["converged"] for r in online),
        "instances": rows,
    }


def _converged(
    statuses: Mapping[str, Mapping[str, Any]], rollback_seq: int | None, version: str | None
) -> bool:
    for status in statuses.values():
        if status.get("status") != "online":
            continue
        seq = status.get("rollback_seq")
        if rollback_seq is not None and not (isinstance(seq, int) and seq >= rollback_seq):
            return False
        if version is not None and status.get("version") != version:
            return False
    return True


# --- plumbing -----------------------------------------------------------------------------------


@asynccontextmanager
async def _connect(spec: MqttSpec) -> AsyncIterator[aiomqtt.Client]:
    """One short connection; every aiomqtt error comes out as a FleetError."""
    try:
        broker: Broker = broker_from_spec(spec)
    except ValueError as exc:
        raise FleetError(str(exc)) from None
    client = broker.client(
        f"cutover-ctl-{uuid.uuid4().hex[:12]}", keepalive=spec.keepalive, timeout=CONNECT_TIMEOUT
    )
    entered = False
    try:
        async with client:
            entered = True
            yield client
    except aiomqtt.MqttError as exc:
        if not entered:
            raise FleetError(f"cannot reach the MQTT broker at {broker.url}: {exc}") from None
        raise FleetError(f"lost the MQTT broker at {broker.url}: {exc}") from None


async def _subscribe(client: aiomqtt.Client, topics: list[str]) -> None:
    if subscription_refused(await client.subscribe([(t, 1) for t in topics])):
        raise FleetError("the broker refused the subscription (check its ACL)")


async def _publish(client: aiomqtt.Client, topic: str, message: bytes) -> None:
    await client.publish(topic, message, qos=1, retain=True)


async def _read(
    client: aiomqtt.Client,
    topics: Topics,
    subscribe: list[str],
    key: bytes | None,
    *,
    timeout: float = READ_TIMEOUT,
) -> FleetView:
    """The retained messages of `subscribe`, read up to a fence: a marker this client publishes
    to a topic of its own after subscribing. The broker queues what it sends one client in
    order, so the retained messages (sent on SUBACK) come before the marker, and a rollback does
    not wait out a quiet period. FENCE_GRACE is kept after the marker for brokers that order
    less strictly."""
    fence = f"{topics.root}/fence/{uuid.uuid4().hex}"
    await _subscribe(client, [*subscribe, fence])
    await client.publish(fence, b"fence", qos=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    latest: dict[str, bytes] = {}
    fenced_at: float | None = None
    with Inbox(client) as inbox:
        while True:
            now = loop.time()
            until = deadline if fenced_at is None else min(deadline, fenced_at + FENCE_GRACE)
            if now >= until:
                break
            message = await inbox.get(until - now)
            if message is None:
                break
            topic = message.topic.value
            if topic == fence:
                fenced_at = loop.time()
                continue
            if message.payload:
                latest[topic] = bytes(message.payload)
            else:  # cleared while we listened
                latest.pop(topic, None)
    return _view(topics, latest, key)


class Inbox:
    """A client's messages, each waited for with a time limit, none lost to the limit.

    aiomqtt's iterator loses the message it has taken off its queue when its `__anext__` is
    cancelled after that (a timeout of `asyncio.wait_for` landing as the message arrives: seen
    as a fleet command waiting out its whole `--timeout` for a status that had come). So the
    pending read is kept from one wait to the next, and cancelled only when the inbox closes.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._messages = aiter(client.messages)
        self._next: asyncio.Future[aiomqtt.Message] | None = None

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        pending, self._next = self._next, None
        if pending is None:
            return
        if pending.done():
            if not pending.cancelled():
                pending.exception()  # retrieved: a disconnect nobody waits for any more is not news
        else:
            pending.cancel()

    async def get(self, timeout: float) -> aiomqtt.Message | None:
        """The next message, or None when none came within `timeout` seconds."""
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._messages))  # noqa: TID251 - ours, see __exit__
        done, _ = await asyncio.wait({self._next}, timeout=max(timeout, 0.0))
        if not done:
            return None
        pending, self._next = self._next, None
        return pending.result()


def _view(topics: Topics, latest: Mapping[str, bytes], key: bytes | None) -> FleetView:
    config: RetainedConfig | None = None
    rollback: RetainedRollback | None = None
    instances: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    prefix = topics.instances[:-1]
    for topic, data in latest.items():
        if topic.startswith(prefix):
            status = _status(data)
            if status is None:
                refused[topic] = "not_json"
            else:
                instances[topic[len(prefix) :]] = status
            continue
        try:
            payload = verify(key, topic, data) if key else read_unverified(topic, data)
        except Refused as exc:
            refused[topic] = exc.reason
            continue
        verified = key is not None
        if topic == topics.config:
            config = RetainedConfig(
                payload["seq"], payload["version"], payload["text"], payload["ts"], verified
            )
        elif topic == topics.rollback:
            rollback = RetainedRollback(
                payload["seq"],
                tuple(payload["scopes"]),
                payload["by"],
                payload["reason"],
                payload["ts"],
                verified,
            )
    return FleetView(config, rollback, instances, refused)


def _status(data: Any) -> dict[str, Any] | None:
    if not data or not isinstance(data, bytes | bytearray):
        return None
    try:
        status = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return status if isinstance(status, dict) else None


def _reported(view: FleetView, name: str) -> list[int]:
    values = (s.get(name) for s in view.instances.values())
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _sign(key: bytes, topic: str, payload: Mapping[str, Any]) -> bytes:
    try:
        return sign(key, topic, payload)
    except Refused as exc:
        raise FleetError(f"the fleet would refuse this command: {exc}") from None


def _need_key(spec: MqttSpec, key: bytes | None) -> None:
    if not key:
        raise FleetError(
            f"no control key: set ${spec.key_env} to the fleet's key (the same on every instance)"
        )


def _check_migration(text: str, migration: str) -> None:
    """A routes.yaml for another migration would be refused by every instance: say so here."""
    try:
        doc = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise FleetError(f"not valid YAML: {exc}") from None
    found = doc.get("migration") if isinstance(doc, dict) else None
    if found != migration:
        raise FleetError(f"this routes.yaml is for migration {found!r}, not {migration!r}")
