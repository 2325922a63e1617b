"""Fleet control against the real Mosquitto: instances (FleetLink + Control) and the operator's
commands (fleetctl), each test under a migration of its own so retained messages never mix."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from proxy.config import content_version, parse_config
from proxy.config.spec import MqttSpec
from proxy.control import fleetctl
from proxy.control.fleet import FleetLink, Topics
from proxy.control.fleetctl import FleetError
from proxy.control.live import Control
from proxy.control.signing import sign
from proxy.state import TableStore
from proxy.supervisor import Supervisor
from tests.brokers import OwnBroker
from tests.configs import base_doc, dump
from tests.processes import REPO, free_port, port_open, wait_for

pytestmark = pytest.mark.broker

BROKER_PORT = 1883
KEY = b"fleet-test-key-0123456789abcdef"
OTHER_KEY = b"not-the-fleet-key-0123456789abcd"


class Fleet:
    """Instances of one test migration in this process, and the clean-up of what they left."""

    def __init__(self, tmp: Path, spec: MqttSpec) -> None:
        self.tmp = tmp
        self.spec = spec
        self.migration = f"t-{uuid.uuid4().hex[:12]}"
        self.topics = Topics(self.migration)
        self.supervisor = Supervisor("test-fleet")
        self.links: list[FleetLink] = []
        self.instances: set[str] = set()

    def doc(self) -> dict[str, Any]:
        doc = base_doc()
        doc["migration"] = self.migration
        return doc

    def control(self, name: str, doc: dict[str, Any] | None = None) -> Control:
        instance = f"{name}-{self.migration}"
        self.instances.add(instance)
        folder = self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "routes.yaml"
        path.write_bytes(dump(doc or self.doc()))
        table = parse_config(path.read_bytes(), source=str(path), base_dir=folder, env={})
        return Control(TableStore(table), path, instance, folder / "state", env={})

    async def start(self, control: Control, spec: MqttSpec | None = None, **kw: Any) -> FleetLink:
        link = FleetLink(control, spec or self.spec, key=KEY, **kw)
        self.links.append(link)
        self.supervisor.spawn(link.run(), name=f"fleet-{control.instance}")
        await wait_for(lambda: link.connected, timeout=5, what=f"{control.instance} connected")
        return link

    async def status(self, instance: str) -> dict[str, Any]:
        view = await fleetctl.read_retained(self.spec, self.migration, KEY)
        return view.instances.get(instance, {})

    async def close(self) -> None:
        for link in self.links:
            await link.stop()
        await self.supervisor.drain(2.0)
        async with raw_client(self.spec) as client:
            for topic in (
                self.topics.config,
                self.topics.rollback,
                *(self.topics.instance(i) for i in self.instances),
            ):
                await client.publish(topic, b"", qos=1, retain=True)


@asynccontextmanager
async def raw_client(spec: MqttSpec) -> AsyncIterator[aiomqtt.Client]:
    """A plain client, as any publisher on the broker could use: no signing, no checks."""
    port = int(spec.url.rsplit(":", 1)[1])
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"test-{uuid.uuid4().hex[:8]}") as c:
        yield c


async def collect(
    client: aiomqtt.Client, kind: str, count: int, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """The next `count` events of `kind` the client receives (it subscribed before)."""
    out: list[dict[str, Any]] = []
    messages = aiter(client.messages)
    deadline = time.monotonic() + timeout
    while len(out) < count:
        message = await asyncio.wait_for(anext(messages), max(0.01, deadline - time.monotonic()))
        event = orjson.loads(message.payload) if message.payload else {}
        if event.get("kind") == kind:
            out.append(event)
    return out


@pytest.fixture
def spec() -> MqttSpec:
    if not port_open(BROKER_PORT):
        pytest.fail(
            f"these tests need the real Mosquitto at 127.0.0.1:{BROKER_PORT} "
            "(start it with ./dev test, or `mosquitto -p 1883`)"
        )
    return MqttSpec(url=f"mqtt://127.0.0.1:{BROKER_PORT}", keepalive=5)


@pytest.fixture
async def fleet(tmp_path: Path, spec: MqttSpec) -> AsyncIterator[Fleet]:
    f = Fleet(tmp_path, spec)
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[OwnBroker]:
    broker = OwnBroker(tmp_path)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- rollback -------------------------------------------------------------------------------


async def test_rollback_reaches_the_instance_and_its_status(fleet: Fleet) -> None:
    """A published rollback becomes the routing overlay, and the status reports its seq."""
    control = fleet.control("a")
    link = await fleet.start(control)
    seq = await fleetctl.publish_rollback(
        fleet.spec, fleet.migration, KEY, [{"channel": "chat"}], by="ops", reason="chat drops"
    )
    await wait_for(lambda: control.fleet.seq == seq, what="rollback applied")
    assert control.fleet.keys == {(None, "chat", None)}
    assert control.tables.overlay == {(None, "chat", None)}
    assert control.fleet.scopes[0]["by"] == "ops"

    async def reported() -> bool:
        return (await fleet.status(control.instance)).get("rollback_seq") == seq

    await wait_for(reported, what="status with the rollback seq")
    status = await fleet.status(control.instance)
    assert status["status"] == "online"
    assert status["migration"] == fleet.migration
    assert status["rollback_scopes"][0]["channel"] == "chat"
    assert link.refused == Counter()

    # resume: the empty list is the whole desired state
    resumed = await fleetctl.publish_rollback(
        fleet.spec, fleet.migration, KEY, [], by="ops", reason="fixed"
    )
    assert resumed > seq
    await wait_for(lambda: control.fleet.seq == resumed, what="resume applied")
    assert control.tables.overlay == frozenset()


async def test_forged_unsigned_and_replayed_rollbacks_change_nothing(fleet: Fleet) -> None:
    """Bad signature, no signature, an older seq: each refused, counted and announced; the same
    seq delivered again is no refusal at all."""
    control = fleet.control("a")
    link = await fleet.start(control)
    seq = await fleetctl.publish_rollback(
        fleet.spec, fleet.migration, KEY, [{"route": "contacts"}], by="ops", reason="r"
    )
    await wait_for(lambda: control.fleet.seq == seq, what="rollback applied")

    topic = fleet.topics.rollback

    def payload(seq: int, scopes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"kind": "rollback", "seq": seq, "ts": time.time(), "scopes": scopes, "by": "x"}

    async with raw_client(fleet.spec) as client:
        await client.subscribe(fleet.topics.events, qos=1)
        same = {**payload(seq, [{"route": "contacts"}]), "reason": "again"}
        await client.publish(topic, sign(KEY, topic, same), qos=1, retain=True)
        forged = {**payload(seq + 10, []), "reason": "resume, says who?"}
        await client.publish(topic, sign(OTHER_KEY, topic, forged), qos=1, retain=True)
        unsigned = orjson.dumps({"payload": payload(seq + 20, []) | {"reason": "trust me"}})
        await client.publish(topic, unsigned, qos=1, retain=True)
        replayed = {**payload(seq - 1, []), "reason": "old"}
        await client.publish(topic, sign(KEY, topic, replayed), qos=1, retain=True)

        expected = Counter(bad_signature=1, unsigned=1, replay=1)
        await wait_for(lambda: link.refused == expected, what=f"refusals {dict(link.refused)}")
        events = await collect(client, "message_refused", 3)

    assert sorted(e["reason"] for e in events) == ["bad_signature", "replay", "unsigned"]
    assert all(e["topic"] == topic and e["instance"] == control.instance for e in events)
    assert control.fleet.seq == seq
    assert control.tables.overlay == {("contacts", None, None)}
    assert link.snapshot()["refused"] == dict(expected)


async def test_an_instance_started_later_gets_the_retained_rollback(fleet: Fleet) -> None:
    """A rollback published while an instance was away reaches it when it connects."""
    seq = await fleetctl.publish_rollback(
        fleet.spec, fleet.migration, KEY, [{"channel": "chat"}], by="ops", reason="r"
    )
    control = fleet.control("late")
    assert control.fleet.seq == 0
    await fleet.start(control)
    await wait_for(lambda: control.fleet.seq == seq, what="retained rollback applied")
    assert control.tables.overlay == {(None, "chat", None)}


# --- config ---------------------------------------------------------------------------------


async def test_published_config_swaps_the_table_and_is_written_to_disk(fleet: Fleet) -> None:
    """A valid routes.yaml is applied and kept; an invalid one or one for another migration is
    refused and leaves the file and the table alone."""
    control = fleet.control("a")
    link = await fleet.start(control)
    assert control.path is not None
    doc = fleet.doc()
    doc["routes"][0]["weights"]["chat"]["default"] = 50
    text = dump(doc).decode()
    version = content_version(text.encode())

    seq = await fleetctl.publish_config(fleet.spec, fleet.migration, KEY, text)
    await wait_for(lambda: control.table.version == version, what="config applied")
    route = control.table.route("contacts")
    assert route is not None
    assert route.weight_bp("chat", "everyone") == 5000
    assert control.path.read_text() == text
    assert control.config_seq == seq
    converged, statuses = await fleetctl.wait_converged(
        fleet.spec, fleet.migration, config_version=version, timeout=5
    )
    assert converged, statuses
    assert statuses[control.instance]["config_seq"] == seq

    # valid YAML for this migration, but not a valid routes.yaml: Control refuses it
    broken = copy.deepcopy(doc)
    broken["channels"] = []
    await fleetctl.publish_config(fleet.spec, fleet.migration, KEY, dump(broken).decode())
    await wait_for(lambda: control.refused == 1, what="invalid config refused")
    assert control.table.version == version
    assert control.path.read_text() == text
    assert control.config_seq == seq

    async def error_reported() -> bool:
        return bool((await fleet.status(control.instance)).get("last_reload_error"))

    await wait_for(error_reported, what="last_reload_error in the status")

    # a file for another migration: fleetctl will not publish it, and an instance will not
    # write it even when it is signed
    other = fleet.doc()
    other["migration"] = "another-one"
    with pytest.raises(FleetError, match="another-one"):
        await fleetctl.publish_config(fleet.spec, fleet.migration, KEY, dump(other).decode())
    other_text = dump(other).decode()
    message = sign(
        KEY,
        fleet.topics.config,
        {
            "kind": "config",
            "seq": seq + 10**6,
            "ts": time.time(),
            "version": content_version(other_text.encode()),
            "text": other_text,
        },
    )
    async with raw_client(fleet.spec) as client:
        await client.publish(fleet.topics.config, message, qos=1, retain=True)
    await wait_for(lambda: link.refused["wrong_migration"] == 1, what="wrong migration refused")
    assert control.path.read_text() == text
    assert control.table.migration == fleet.migration


# --- the broker going away --------------------------------------------------------------------


async def test_reconnects_after_the_broker_restarts(fleet: Fleet, own_broker: OwnBroker) -> None:
    """Broker down: the instance keeps its table, commands fail clearly, and once the broker is
    back the link reconnects and applies what is published then."""
    control = fleet.control("a")
    link = await fleet.start(control, own_broker.spec)
    before = control.table

    await own_broker.stop()
    await wait_for(lambda: not link.connected, what="disconnect noticed")
    with pytest.raises(FleetError, match="cannot reach the MQTT broker"):
        await fleetctl.publish_rollback(
            own_broker.spec, fleet.migration, KEY, [{}], by="ops", reason="r"
        )
    assert control.table is before

    await own_broker.start()
    await wait_for(lambda: link.connected, timeout=15, what="reconnected")
    assert link.reconnects == 1
    seq = await fleetctl.publish_rollback(
        own_broker.spec, fleet.migration, KEY, [{}], by="ops", reason="global brake"
    )
    await wait_for(lambda: control.fleet.seq == seq, what="rollback after restart")
    assert control.tables.overlay == {(None, None, None)}
    await link.stop()


async def test_stop_says_goodbye(fleet: Fleet) -> None:
    """stop() leaves a retained `offline` status and ends run(); no key in what the link shows."""
    control = fleet.control("a")
    link = await fleet.start(control, extra_status=lambda: {"outbox_pending": 7})
    assert (await fleet.status(control.instance))["outbox_pending"] == 7
    await link.stop()
    assert not link.connected
    assert len(fleet.supervisor) == 0
    status = await fleet.status(control.instance)
    assert status["status"] == "offline"
    assert status["instance"] == control.instance
    shown = repr(link) + str(link.snapshot())
    assert KEY.decode() not in shown
    assert link.snapshot()["broker"] == fleet.spec.url


async def test_a_cancelled_link_still_leaves_offline_behind(fleet: Fleet) -> None:
    """A supervisor drain that cancels run() without stop(): the status still ends `offline`,
    not an `online` nobody would ever correct."""
    control = fleet.control("a")
    link = await fleet.start(control)
    assert (await fleet.status(control.instance))["status"] == "online"
    assert await fleet.supervisor.drain(0.0) == 1
    assert not link.connected
    assert (await fleet.status(control.instance))["status"] == "offline"


async def test_fleetctl_errors_are_plain() -> None:
    """No key, or no broker: a FleetError that says so."""
    nowhere = MqttSpec(url=f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(FleetError, match=r"\$CUTOVER_CONTROL_KEY"):
        await fleetctl.publish_rollback(nowhere, "m", b"", [], by="ops", reason="r")
    with pytest.raises(FleetError, match="cannot reach the MQTT broker"):
        await fleetctl.read_retained(nowhere, "m", None)


async def test_the_inbox_loses_no_message_to_its_time_limit(spec: MqttSpec) -> None:
    """Waits so short that most end while a message is on its way (aiomqtt's own iterator,
    cancelled by `asyncio.wait_for`, lost a quarter of these): every message arrives, in
    order, and a wait with nothing to read ends empty."""
    topic = f"test/inbox/{uuid.uuid4().hex}"
    count = 300
    async with raw_client(spec) as reader, raw_client(spec) as writer:
        await reader.subscribe(topic, qos=1)
        with fleetctl.Inbox(reader) as inbox:
            assert await inbox.get(0.01) is None

            async def publish_all() -> None:
                for i in range(count):
                    await writer.publish(topic, str(i).encode(), qos=1)

            publishing = asyncio.ensure_future(publish_all())  # noqa: TID251 - awaited below
            got: list[int] = []
            deadline = time.monotonic() + 20
            while len(got) < count and time.monotonic() < deadline:
                message = await inbox.get(0.0002)
                if message is not None:
                    got.append(int(bytes(message.payload)))
            await publishing
    assert got == list(range(count))


# --- convergence ------------------------------------------------------------------------------

INSTANCE_SCRIPT = """
import asyncio, sys
from pathlib import Path
from proxy.config import load_config
from proxy.config.spec import MqttSpec
from proxy.control.fleet import FleetLink
from proxy.control.live import Control
from proxy.control.signing import key_from_env
from proxy.state import TableStore

path, state, instance, url = sys.argv[1:5]
async def main():
    control = Control(TableStore(load_config(path, env={})), Path(path), instance, Path(state))
    key = key_from_env("CUTOVER_CONTROL_KEY")
    await FleetLink(control, MqttSpec(url=url, keepalive=60), key=key).run()
asyncio.run(main())
"""


async def test_wait_converged_waits_for_online_instances_only(fleet: Fleet) -> None:
    """Three instances converge on a rollback. An instance that hangs (still `online` to the
    broker) holds convergence back until its timeout; once it dies its last will marks it
    offline and it is no longer waited for; one that said goodbye never was."""
    controls = [fleet.control(name) for name in ("a", "b", "c")]
    links = [await fleet.start(c) for c in controls]

    # a fourth instance in its own process, so that it can hang and die for real
    hung = fleet.control("hung")
    assert hung.path is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        INSTANCE_SCRIPT,
        str(hung.path),
        str(hung.state_dir),
        hung.instance,
        fleet.spec.url,
        cwd=REPO,
        env={**os.environ, "CUTOVER_CONTROL_KEY": KEY.decode()},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def hung_online() -> bool:
            return (await fleet.status(hung.instance)).get("status") == "online"

        await wait_for(hung_online, timeout=15, what="the instance process online")

        seq = await fleetctl.publish_rollback(
            fleet.spec, fleet.migration, KEY, [{"channel": "chat"}], by="ops", reason="r"
        )
        converged, statuses = await fleetctl.wait_converged(
            fleet.spec, fleet.migration, rollback_seq=seq, timeout=10
        )
        assert converged, statuses
        assert {i for i, s in statuses.items() if s["rollback_seq"] >= seq} == fleet.instances

        # one says goodbye; the process hangs (its connection stays up, so it stays `online`)
        await links[2].stop()
        os.kill(proc.pid, signal.SIGSTOP)
        resumed = await fleetctl.publish_rollback(
            fleet.spec, fleet.migration, KEY, [], by="ops", reason="fixed"
        )
        started = time.monotonic()
        converged, statuses = await fleetctl.wait_converged(
            fleet.spec, fleet.migration, rollback_seq=resumed, timeout=1.0
        )
        assert not converged
        assert time.monotonic() - started >= 1.0
        assert statuses[hung.instance]["status"] == "online"
        assert statuses[hung.instance]["rollback_seq"] == seq
        assert statuses[controls[2].instance]["status"] == "offline"
        for control in controls[:2]:
            assert statuses[control.instance]["rollback_seq"] == resumed

        # it dies: the broker publishes its will, and convergence no longer waits for it
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        converged, statuses = await fleetctl.wait_converged(
            fleet.spec, fleet.migration, rollback_seq=resumed, timeout=5
        )
        assert converged, statuses
        assert statuses[hung.instance]["status"] == "offline"
        assert statuses[hung.instance]["lost"] is True
        assert links[0].snapshot()["connected"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
