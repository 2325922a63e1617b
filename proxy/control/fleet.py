"""Fleet control, the instance side: one MQTT link per cutover instance.

An instance subscribes to its migration's `config` and `rollback` topics, applies signed commands
through `Control`, and publishes what it runs on `instances/<id>` (retained, with a last will that
says `offline`) and what happens on `events`. The broker is never on the data path: with the
broker down the instance keeps serving its current table and its rollback flags, and the link
reconnects forever in the background; the retained commands it missed arrive on reconnect and are
applied when newer than what it has. docs/fleet.md is the user-facing text of this module.

Nothing here raises out of `FleetLink.run()`; a broken broker, a refused command or a failing
status callback is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from proxy.config import ConfigError, parse_config
from proxy.config.spec import MqttSpec
from proxy.control.live import Control
from proxy.control.signing import Refused, verify

log = structlog.get_logger("cutover.fleet")

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
BACKOFF_MIN = 0.2
BACKOFF_MAX = 10.0
#: how long a subscribe or a QoS 1 publish may wait for the broker's acknowledgement
MQTT_TIMEOUT = 5.0
#: the least time between two status messages sent because `notify_status()` was called
STATUS_MIN_INTERVAL = 2.0
EVENT_QUEUE = 1000
#: commands waiting to be applied; more than this while one is applied is a flood, not operators
INCOMING_QUEUE = 1000
#: how long a cancelled link may spend saying goodbye
GOODBYE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one migration, under `cutover/<migration>/`."""

    migration: str

    def __post_init__(self) -> None:
        _check_topic_level("migration", self.migration)

    @property
    def root(self) -> str:
        return f"cutover/{self.migration}"

    @property
    def config(self) -> str:
        return f"{self.root}/config"

    @property
    def rollback(self) -> str:
        return f"{self.root}/rollback"

    @property
    def events(self) -> str:
        return f"{self.root}/events"

    @property
    def instances(self) -> str:
        """The wildcard that matches every instance's status."""
        return f"{self.root}/instances/+"

    def instance(self, instance: str) -> str:
        _check_topic_level("instance id", instance)
        return f"{self.root}/instances/{instance}"


def _check_topic_level(what: str, value: str) -> None:
    if not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{what} {value!r} cannot be one MQTT topic level")


@dataclass(frozen=True, slots=True)
class Broker:
    """How to reach the broker, resolved once from `MqttSpec` and the environment."""

    scheme: str
    host: str
    port: int
    tls: aiomqtt.TLSParameters | None = None
    tls_insecure: bool | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """For logs and the admin state: never credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def client(
        self,
        identifier: str,
        *,
        keepalive: float,
        will: aiomqtt.Will | None = None,
        timeout: float = MQTT_TIMEOUT,
        max_incoming: int | None = None,
    ) -> aiomqtt.Client:
        """A new client (aiomqtt connects in a thread, so connecting never blocks the loop)."""
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=identifier,
            keepalive=max(1, round(keepalive)),
            will=will,
            timeout=timeout,
            tls_params=self.tls,
            tls_insecure=self.tls_insecure,
            max_queued_incoming_messages=max_incoming,
            # control messages are small and urgent: without TCP_NODELAY, Nagle's algorithm
            # meets the peer's delayed ACK and each hop waits ~40 ms (measured: a rollback
            # took 45 ms per hop on loopback; with it, about 1 ms)
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )


def broker_from_spec(spec: MqttSpec, env: Mapping[str, str] | None = None) -> Broker:
    """Raises ValueError for a URL or credentials that cannot work (never with their values)."""
    environ = os.environ if env is None else env
    parts = urlsplit(spec.url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("mqtt.url: expected mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise ValueError(
            "mqtt.url: credentials do not belong in the URL; use username_env and password_env"
        )
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("mqtt.url: the port is not a number from 1 to 65535") from None
    username = password = None
    if spec.username_env:
        username = environ.get(spec.username_env)
        if not username:
            raise ValueError(f"mqtt.username_env: ${spec.username_env} is not set")
    if spec.password_env:
        password = environ.get(spec.password_env)
        if not password:
            raise ValueError(f"mqtt.password_env: ${spec.password_env} is not set")
        if username is None:
            raise ValueError("mqtt.password_env needs mqtt.username_env too")
    tls: aiomqtt.TLSParameters | None = None
    insecure: bool | None = None
    if parts.scheme == "mqtts":
        opts = spec.tls
        insecure = bool(opts and opts.insecure)
        tls = aiomqtt.TLSParameters(
            ca_certs=opts.ca_file if opts else None,
            certfile=opts.cert_file if opts else None,
            keyfile=opts.key_file if opts else None,
            # insecure: no certificate check at all, for a test broker with a throwaway cert
            cert_reqs=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED,
        )
    elif spec.tls is not None:
        raise ValueError("mqtt.tls is set but mqtt.url is mqtt://; use mqtts:// for TLS")
    return Broker(parts.scheme, parts.hostname, port, tls, insecure, username, password)


class _Stopped(Exception):
    """Raised inside a session to end it after `stop()` said goodbye."""


class FleetLink:
    """One instance's connection to the fleet; `run()` is owned by a supervisor task."""

    def __init__(
        self,
        control: Control,
        spec: MqttSpec,
        *,
        key: bytes,
        extra_status: Callable[[], dict[str, Any]] = dict,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not key:
            raise ValueError(f"fleet control needs a key in ${spec.key_env}")
        self.control = control
        self.spec = spec
        self.instance = control.instance
        self.topics = Topics(control.table.migration)
        self._fence = f"{self.topics.root}/fence/{self.instance}-{uuid.uuid4().hex[:8]}"
        #: set once, after the first connection applied what the broker retained: an instance
        #: opens its data path only then (bounded), so a restart never serves a lifted state
        self.synced = asyncio.Event()
        self.status_topic = self.topics.instance(self.instance)
        self.broker = broker_from_spec(spec, env)
        self._key = key
        self._extra_status = extra_status
        self.connected = False  # subscribed and announced: commands are being received
        self.last_message_at: float | None = None
        self.refused: Counter[str] = Counter()
        self.reconnects = 0
        self._connects = 0
        self.connect_failures = 0
        self.events_sent = 0
        self.events_dropped: Counter[str] = Counter()  # "offline", "queue_full", "failed"
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EVENT_QUEUE)
        self._status_due = asyncio.Event()
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        control.on_event(self._on_event)

    def __repr__(self) -> str:
        return f"<FleetLink {self.instance} {self.broker.url} connected={self.connected}>"

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, and on any loss reconnect with backoff, until `stop()`."""
        self._task = asyncio.current_task()
        delay = BACKOFF_MIN
        last_failure_log = 0.0
        try:
            while not self._stop.is_set():
                error, served = await self._session()
                if self._stop.is_set():
                    break
                if served:
                    delay = BACKOFF_MIN
                    log.warning("fleet_disconnected", broker=self.broker.url, error=error)
                else:
                    self.connect_failures += 1
                    now = time.monotonic()
                    if now - last_failure_log > 60.0:  # once a minute while the broker is away
                        last_failure_log = now
                        log.warning(
                            "fleet_connect_failed",
                            broker=self.broker.url,
                            error=error,
                            retry_in_s=round(delay, 2),
                        )
                # jitter spreads a fleet's reconnects after a broker restart
                pause = delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not secrecy
                delay = min(delay * 2, BACKOFF_MAX)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)
        finally:
            self.connected = False
            self._finished.set()

    async def stop(self, timeout: float = 2.0) -> None:
        """Say goodbye (retained status `offline`), disconnect, and wait for `run()` to return;
        past `timeout` the run task is cancelled."""
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(self._finished.wait(), timeout)
        except TimeoutError:
            log.warning("fleet_stop_timeout", broker=self.broker.url, timeout_s=timeout)
            task.cancel()
            await asyncio.wait({task}, timeout=GOODBYE_TIMEOUT)

    def notify_status(self) -> None:
        """Something in the status changed (e.g. the outbox backlog): publish it soon, at most
        every STATUS_MIN_INTERVAL seconds."""
        self._status_due.set()

    def snapshot(self) -> dict[str, Any]:
        """For the admin state."""
        return {
            "broker": self.broker.url,
            "topics": self.topics.root,
            "instance": self.instance,
            "connected": self.connected,
            "last_message_at": self.last_message_at,
            "refused": dict(self.refused),
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "events_sent": self.events_sent,
            "events_dropped": dict(self.events_dropped),
        }

    # --- one connection ----------------------------------------------------------------------

    async def _session(self) -> tuple[str | None, bool]:
        """One connection from connect to loss or stop: (what ended it, whether it served)."""
        error: str | None = None
        served = False
        client = self.broker.client(
            f"cutover-{self.instance}",
            keepalive=self.spec.keepalive,
            will=aiomqtt.Will(self.status_topic, self._will_payload(), qos=1, retain=True),
            max_incoming=INCOMING_QUEUE,
        )
        try:
            async with client:
                try:
                    await self._serve(client)
                except asyncio.CancelledError:
                    # cancelled without stop() (a supervisor drain): still leave "offline" behind
                    # rather than an "online" that nobody will ever correct
                    if not self._stop.is_set():
                        self._stop.set()
                        await self._goodbye(client)
                    raise
        except* _Stopped:
            pass
        except* aiomqtt.MqttError as group:
            error = _describe(group)
        except* Exception as group:  # a bug must not end fleet control for good
            error = _describe(group)
            log.error("fleet_session_failed", error=error, exc_info=group)
        finally:
            served = self.connected
            self.connected = False
        return error, served

    async def _serve(self, client: aiomqtt.Client) -> None:
        granted = await client.subscribe(
            [(self.topics.config, 1), (self.topics.rollback, 1), (self._fence, 1)]
        )
        if subscription_refused(granted):
            raise aiomqtt.MqttError("the broker refused the subscription (check its ACL)")
        # messages are handled in order: once this marker comes back, the retained config and
        # rollback the broker sent on subscribing have been applied (see `synced`)
        await client.publish(self._fence, b"fence", qos=1)
        await self._publish_status(client)
        self.connected = True
        self._connects += 1
        if self._connects > 1:
            self.reconnects += 1
        log.info(
            "fleet_connected",
            broker=self.broker.url,
            topics=self.topics.root,
            reconnects=self.reconnects,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive(client), name="fleet-receive")
            tasks.create_task(self._send_events(client), name="fleet-events")
            tasks.create_task(self._send_status(client), name="fleet-status")
            tasks.create_task(self._until_stopped(client), name="fleet-stop")

    async def _until_stopped(self, client: aiomqtt.Client) -> None:
        await self._stop.wait()
        await self._goodbye(client)
        raise _Stopped

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        try:
            await client.publish(
                self.status_topic,
                self._status_bytes(),
                qos=1,
                retain=True,
                timeout=GOODBYE_TIMEOUT,
            )
            log.info("fleet_goodbye", broker=self.broker.url)
        except aiomqtt.MqttError as exc:
            log.warning("fleet_goodbye_failed", broker=self.broker.url, error=str(exc))

    # --- commands ----------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.value == self._fence:
                self.synced.set()
                continue
            payload = message.payload
            if not payload:
                continue  # an empty retained message clears the topic: nothing to apply
            if await self._handle(message.topic.value, payload):
                await self._publish_status(client)

    async def _handle(self, topic: str, message: bytes) -> bool:
        """Apply one command; True when the status should be published again."""
        self.last_message_at = time.time()
        try:
            return await self._apply(topic, verify(self._key, topic, message))
        except Refused as exc:
            self.refused[exc.reason] += 1
            log.warning("fleet_message_refused", topic=topic, reason=exc.reason, detail=exc.detail)
            self.control.event("message_refused", topic=topic, reason=exc.reason, detail=exc.detail)
            return False

    async def _apply(self, topic: str, data: dict[str, Any]) -> bool:
        if topic == self.topics.config:
            return await self._apply_config(data)
        if topic == self.topics.rollback:
            return self._apply_rollback(data)
        raise Refused("unknown_topic", "not a command topic")

    async def _apply_config(self, data: dict[str, Any]) -> bool:
        control = self.control
        seq: int = data["seq"]
        if seq == control.config_seq:
            return False  # the retained message we applied already, delivered again
        if seq < control.config_seq:
            raise Refused("replay", f"config seq {seq} is older than {control.config_seq}")
        text: str = data["text"]
        if data["version"] == control.table.version:
            control.note_config_seq(seq)  # we run that file already (same bytes, same version)
            log.info("fleet_config_current", seq=seq, version=data["version"])
            return True
        # the migration decides every customer's bucket: a file for another one must not even be
        # written (a restart would load it); parsed off the loop, it is a whole routes.yaml
        migration = await asyncio.to_thread(self._migration_of, text)
        if migration is not None and migration != self.topics.migration:
            raise Refused("wrong_migration", f"the text is for migration {migration!r}")
        try:
            applied = control.write_and_apply(text.encode(), source="fleet")
        except OSError as exc:  # routes.yaml cannot be written: the running table stays
            raise Refused(
                "write_failed", f"routes.yaml not written: {exc.strerror or exc}"
            ) from None
        if applied.ok:
            control.note_config_seq(seq)
            log.info("fleet_config_applied", seq=seq, version=applied.version)
        return True

    def _migration_of(self, text: str) -> str | None:
        """None when the text is invalid: `Control` then refuses it with every error listed."""
        try:
            table = parse_config(
                text,
                source="fleet config",
                base_dir=self.control.table.base_dir,
                env=self.control.env,
            )
        except ConfigError:
            return None
        return table.migration

    def _apply_rollback(self, data: dict[str, Any]) -> bool:
        control = self.control
        seq: int = data["seq"]
        if seq == control.fleet.seq:
            return False
        if seq < control.fleet.seq:
            raise Refused("replay", f"rollback seq {seq} is older than {control.fleet.seq}")
        control.apply_fleet_rollback(seq, data["scopes"])
        log.info("fleet_rollback_applied", seq=seq, scopes=len(data["scopes"]), by=data["by"])
        return True

    # --- what the instance says ----------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        """Control's event sink: called on the loop, must never block or raise."""
        self._status_due.set()  # every event is a change the status should show
        if not self.connected:
            self.events_dropped["offline"] += 1
            return
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self.events_dropped["queue_full"] += 1

    async def _send_events(self, client: aiomqtt.Client) -> None:
        while True:
            event = await self._events.get()
            try:
                await client.publish(self.topics.events, _dumps(event), qos=1)
            except aiomqtt.MqttError:
                self.events_dropped["failed"] += 1
                raise
            self.events_sent += 1

    async def _send_status(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_due.wait()
            await self._publish_status(client)
            await asyncio.sleep(STATUS_MIN_INTERVAL)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        self._status_due.clear()
        await client.publish(self.status_topic, self._status_bytes(), qos=1, retain=True)

    def status(self) -> dict[str, Any]:
        """The retained status: unsigned, it is information, not a command."""
        control = self.control
        try:
            extra = dict(self._extra_status())
        except Exception:  # the caller's numbers are optional; the status is not
            log.exception("fleet_extra_status_failed")
            extra = {}
        return {
            **extra,
            **control.status(),
            "status": "offline" if self._stop.is_set() else "online",
            "rollback_scopes": list(control.fleet.scopes),
            "ts": time.time(),
            "last_reload_error": control.last_error,
        }

    def _status_bytes(self) -> bytes:
        return _dumps(self.status())

    def _will_payload(self) -> bytes:
        """Sent by the broker when the connection dies without a goodbye; fixed at connect."""
        return _dumps(
            {
                "instance": self.instance,
                "status": "offline",
                "migration": self.topics.migration,
                "lost": True,
                "ts": time.time(),
            }
        )


def subscription_refused(granted: Iterable[int | ReasonCode]) -> bool:
    """A SUBACK code of 0x80 or more: the broker said no, e.g. its ACL (MQTT 3.1.1 and 5)."""
    return any((c.value if isinstance(c, ReasonCode) else c) >= 0x80 for c in granted)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


def _describe(group: BaseExceptionGroup[Any]) -> str:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return f"{type(first).__name__}: {first}"
