"""Fleet control through a broker that wants a username, a password and TLS (a private
Mosquitto with a throwaway CA, made here with openssl and mosquitto_passwd)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.config.spec import MqttSpec, MqttTls
from proxy.control import fleetctl
from proxy.control.fleet import FleetLink
from proxy.control.live import Control
from proxy.state import TableStore
from proxy.supervisor import Supervisor
from tests.configs import base_doc, load
from tests.processes import free_port, port_open, wait_for

KEY = b"tls-test-key-0123456789abcdef"
USER, PASSWORD = "cutover", "s3cret-pw"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class SecureBroker:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        ca_key, ca, key, csr, cert = (
            tmp / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
        )
        _run(
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=cutover-test-ca",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
        )
        _run(
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        )
        ext = tmp / "ext.cnf"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _run(
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(ext),
            "-out",
            str(cert),
        )
        passwords = tmp / "passwords"
        passwords.write_text("")
        _run("mosquitto_passwd", "-b", str(passwords), USER, PASSWORD)
        # mosquitto started as root drops to its own user: throwaway test files must be readable
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        self.ca = ca
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {passwords}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        )

    async def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(self.conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_for(lambda: port_open(self.port), timeout=5, what="TLS mosquitto")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    def spec(self, **tls: object) -> MqttSpec:
        return MqttSpec(
            url=f"mqtts://127.0.0.1:{self.port}",
            username_env="T_MQTT_USER",
            password_env="T_MQTT_PASSWORD",
            keepalive=5,
            tls=MqttTls(ca_file=str(self.ca), **tls),
        )


@pytest.fixture
async def broker() -> AsyncIterator[SecureBroker]:
    # not tmp_path: the broker drops root for its own user, which must reach the files
    tmp = Path(tempfile.mkdtemp(prefix="cutover-tls-"))
    secure = SecureBroker(tmp)
    try:
        await secure.start()
        yield secure
        await secure.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_rollback_over_tls_with_credentials(broker: SecureBroker, monkeypatch, tmp_path):
    monkeypatch.setenv("T_MQTT_USER", USER)
    monkeypatch.setenv("T_MQTT_PASSWORD", PASSWORD)
    migration = f"tls-{uuid.uuid4().hex[:8]}"
    doc = base_doc()
    doc["migration"] = migration
    control = Control(TableStore(load(doc)), None, "tls-1", tmp_path)
    spec = broker.spec()
    link = FleetLink(control, spec, key=KEY)
    supervisor = Supervisor("test")
    supervisor.spawn(link.run(), name="link")
    try:
        await wait_for(lambda: link.connected, what="the link connected over TLS")
        seq = await fleetctl.publish_rollback(
            spec, migration, KEY, [{"route": "contacts"}], by="ops", reason="tls"
        )
        await wait_for(lambda: control.fleet.seq == seq, what="the rollback applied")
        assert control.tables.overlay == {("contacts", None, None)}
    finally:
        await link.stop()
        await supervisor.drain(2)


async def test_a_wrong_password_or_an_untrusted_ca_never_connects(
    broker: SecureBroker, monkeypatch
):
    monkeypatch.setenv("T_MQTT_USER", USER)
    monkeypatch.setenv("T_MQTT_PASSWORD", "wrong")
    with pytest.raises(fleetctl.FleetError):
        await fleetctl.read_retained(broker.spec(), "x", KEY, timeout=2)
    monkeypatch.setenv("T_MQTT_PASSWORD", PASSWORD)
    other_ca = broker.dir / "other-ca.pem"
    _run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=someone-else",
        "-keyout",
        str(broker.dir / "other.key"),
        "-out",
        str(other_ca),
    )
    spec = MqttSpec(
        url=f"mqtts://127.0.0.1:{broker.port}",
        username_env="T_MQTT_USER",
        password_env="T_MQTT_PASSWORD",
        tls=MqttTls(ca_file=str(other_ca)),
    )
    with pytest.raises(fleetctl.FleetError):
        await fleetctl.read_retained(spec, "x", KEY, timeout=2)
