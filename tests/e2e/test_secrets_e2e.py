"""Secrets and personal data: planted in a real run, looked for in everything it left behind.

A real cutover with shadow, dual-write and fleet control (the real Mosquitto), every platform
requiring its own credential from `${VAR}`, the admin token, the MQTT signing key and the
customer-hash key set, runs a mixed workload: creates, reads, updates, a mismatch on a redacted
field, bad requests, an unknown route, a platform down, admin changes. Then all of its output is
searched: the debug-level log, the diff log, the state directory and its audit file, the admin
API's answers, /metrics, the answers clients got, every MQTT message under the migration, and
what `cutover diff` shows QA. No secret and no personal value may appear anywhere; customer keys
only as their keyed hash, redacted fields only as "***". The outbox store holds the writes'
bodies by necessity (THREAT_MODEL.md) but no credential. And the platforms' request logs show
that each platform only ever got its own credential, and a secondary never the client's.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import orjson
import pytest
from yarl import URL

from proxy.demo.platforms import run_simulators
from proxy.observe import CustomerHasher
from tests.brokers import BROKER_PORT, clear_retained, require_broker
from tests.configs import demo_doc
from tests.e2e.test_dualwrite_e2e import outbox_drained
from tests.processes import CutoverProcess, wait_for
from tests.scrape import diff_records

pytestmark = [pytest.mark.e2e, pytest.mark.broker]

# secrets: none of them may appear in any output
TOKENS = {
    "OLD_CRM_TOKEN": "oldcrm-s3cr3t-a1b2c3d4",
    "NEW_CRM_TOKEN": "newcrm-s3cr3t-e5f6a7b8",
    "OLD_TK_TOKEN": "oldtk-s3cr3t-c9d0e1f2",
    "NEW_TK_TOKEN": "newtk-s3cr3t-a3b4c5d6",
}
ADMIN_TOKEN = "admin-s3cr3t-0f1e2d3c4b5a"
CONTROL_KEY = "control-s3cr3t-9a8b7c6d5e4f3a2b1c0d"
HASH_KEY = "hash-s3cr3t-13579bdf"
CLIENT_AUTH = "Bearer client-s3cr3t-2468ace0"
CLIENT_COOKIE = "cookie-s3cr3t-fedcba98"
SECRETS = [*TOKENS.values(), ADMIN_TOKEN, CONTROL_KEY, HASH_KEY, CLIENT_AUTH, CLIENT_COOKIE]

# personal data: none may appear but as a hash or "***"
CUSTOMER = "C-PLANTED-7731"
OTHER_CUSTOMER = "C-PLANTED-8842"
EMAIL = "planted.person@example.org"
OTHER_EMAIL = "other.planted@example.org"
PHONE = "07700 913579"
OTHER_PHONE = "07700 924680"
PERSONAL = [CUSTOMER, OTHER_CUSTOMER, EMAIL, OTHER_EMAIL, "7700913579", "7700924680"]


def forms(value: str) -> set[str]:
    """A value as it may be written: as is, lower-cased, JSON-escaped."""
    return {value, value.lower(), orjson.dumps(value).decode()[1:-1]}


class Run:
    """Requests as clients and operators make them; error answers kept for the search."""

    def __init__(self, http: aiohttp.ClientSession, proxy: CutoverProcess) -> None:
        self.http = http
        self.proxy = proxy
        self.answers: list[bytes] = []

    async def call(
        self,
        method: str,
        path: str,
        *,
        customer: str = CUSTOMER,
        json: Any = None,
        admin: bool = False,
        token: str | None = None,
    ) -> tuple[int, Any]:
        if admin:
            url = self.proxy.admin_url + path
            headers = {"Authorization": f"Bearer {token or ADMIN_TOKEN}"}
        else:
            url = self.proxy.url + path
            headers = {
                "X-Customer-Id": customer,
                "Authorization": CLIENT_AUTH,
                "Cookie": f"session={CLIENT_COOKIE}",
            }
        target = URL(url, encoded=True)  # as written: a client library must not clean it up
        async with self.http.request(method, target, json=json, headers=headers) as response:
            body = await response.read()
        if response.status >= 400:  # a client's own data in its 2xx answers is no leak
            head = "".join(f"{k}: {v}\n" for k, v in response.headers.items())
            self.answers.append(head.encode() + body)
        try:
            return response.status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return response.status, body


async def collect_mqtt(migration: str, messages: list[bytes], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", BROKER_PORT) as client:
        await client.subscribe(f"cutover/{migration}/#")
        ready.set()
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            messages.append(str(message.topic).encode() + b" " + payload)


def files_under(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


async def test_no_secret_and_no_personal_value_in_any_output(tmp_path: Path):
    """See the module's docstring: every output searched, every platform's requests checked."""
    require_broker()
    credentials = {
        "old-crm": f"Bearer {TOKENS['OLD_CRM_TOKEN']}",
        "new-crm": f"Bearer {TOKENS['NEW_CRM_TOKEN']}",
        "old-ticketing": f"Bearer {TOKENS['OLD_TK_TOKEN']}",
        "new-ticketing": f"Bearer {TOKENS['NEW_TK_TOKEN']}",
    }
    migration = f"secrets-{uuid.uuid4().hex[:8]}"
    messages: list[bytes] = []
    subscribed = asyncio.Event()
    async with run_simulators(ports=0, credentials=credentials) as sims:
        doc = demo_doc(sims)
        for side, api, var in (
            ("old", "crm", "OLD_CRM_TOKEN"),
            ("new", "crm", "NEW_CRM_TOKEN"),
            ("old", "ticketing", "OLD_TK_TOKEN"),
            ("new", "ticketing", "NEW_TK_TOKEN"),
        ):
            doc["platforms"][side][api]["headers"] = {"Authorization": f"Bearer ${{{var}}}"}
        workdir = tmp_path / "cutover"
        state = workdir / "state"
        doc.update(
            migration=migration,
            store=f"sqlite:///{workdir}/store/outbox.db",
            state_dir=str(state),
            diff_log={"dir": str(workdir / "diffs")},
            outbox={"backoff_min": "20ms", "backoff_max": "200ms"},
            mqtt={"url": f"mqtt://127.0.0.1:{BROKER_PORT}", "keepalive": "2s"},
        )
        doc["routes"][0]["verify_after"] = "100ms"
        listening = asyncio.ensure_future(collect_mqtt(migration, messages, subscribed))  # noqa: TID251
        await asyncio.wait_for(subscribed.wait(), timeout=10)
        proxy = CutoverProcess(
            workdir,
            doc,
            env={
                **TOKENS,
                "CUTOVER_ADMIN_TOKEN": ADMIN_TOKEN,
                "CUTOVER_CONTROL_KEY": CONTROL_KEY,
                "CUTOVER_HASH_KEY": HASH_KEY,
            },
            args=["--workers", "1", "--log-level", "debug"],
        )
        proxy.token = ADMIN_TOKEN
        pairs = workdir / "ids.csv"
        pairs.write_text(
            "resource,old,new\n" + "".join(f"{k},{o},{n}\n" for k, o, n in sims.id_map)
        )
        assert proxy.cli("idmap", "import", str(pairs)).returncode == 0
        try:
            await proxy.start()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                run = Run(http, proxy)
                await workload(run, sims, proxy)
                outputs = await admin_outputs(run)
            assert await proxy.stop() == 0
        finally:
            proxy.kill()
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
            await clear_retained(migration)

        diff_cli = proxy.cli("diff", "--json")
        assert diff_cli.returncode == 0, diff_cli.stderr
        record_ids = [r["request_id"] for r in diff_records(workdir / "diffs")]
        shown = proxy.cli("diff", "show", record_ids[-1], "--no-color")
        outputs.update(
            {
                "log": proxy.log_path.read_bytes(),
                "cutover diff": diff_cli.stdout.encode(),
                "cutover diff show": shown.stdout.encode() + shown.stderr.encode(),
                "error answers": b"\n".join(run.answers),
                "mqtt": b"\n".join(messages),
                **files_under(workdir / "diffs"),
                **files_under(state),
            }
        )
        assert any("audit" in name for name in outputs), "no audit file written"
        assert messages, "nothing seen on the broker"
        store = files_under(workdir / "store")

        for name, data in outputs.items():
            text = data.decode("utf-8", "replace")
            for value in SECRETS + PERSONAL:
                for form in forms(value):
                    assert form not in text, f"{value!r} in {name}: …{_around(text, form)}…"
        for name, data in store.items():
            text = data.decode("latin-1")
            for secret in SECRETS:
                assert secret not in text, f"{secret!r} in the outbox store {name}"

        hashed = CustomerHasher(migration, key=HASH_KEY)(CUSTOMER)
        assert hashed is not None
        assert hashed in outputs["log"].decode(), "customer keys are logged as their hash"
        records = diff_records(workdir / "diffs")
        masked = [
            d
            for r in records
            for d in r.get("differences", [])
            if d["path"].endswith("email") and "***" in (d["old"], d["new"])
        ]
        assert masked, "the planted mismatch on $.email is in the diff log, masked"
        assert any(r.get("customer") == hashed for r in records)

        check_platform_credentials(sims, credentials)


async def workload(run: Run, sims: Any, proxy: CutoverProcess) -> None:
    status, created = await run.call(
        "POST",
        "/api/contacts",
        json={"customer": CUSTOMER, "full_name": "Planted Person", "email": EMAIL, "phone": PHONE},
    )
    assert status == 201, created
    contact = created["id"]
    await wait_for(lambda: outbox_drained(proxy), timeout=30, what="the create on both platforms")
    sims.new_crm.set_faults("wrong_field", field="email", value=OTHER_EMAIL)
    for _ in range(3):
        status, _ = await run.call("GET", f"/api/contacts/{contact}")
        assert status == 200
    assert (await run.call("GET", f"/api/contacts?customer={CUSTOMER}"))[0] == 200
    assert (await run.call("PATCH", f"/api/contacts/{contact}", json={"phone": OTHER_PHONE}))[
        0
    ] == 200
    status, _ = await run.call(
        "POST",
        "/api/contacts",
        customer=OTHER_CUSTOMER,
        json={"customer": OTHER_CUSTOMER, "full_name": "Other", "email": OTHER_EMAIL},
    )
    assert status == 201
    # refusals and errors, each with the planted customer on it
    assert (await run.call("GET", "/api/contacts/%2e%2e/admin"))[0] == 400
    assert (await run.call("GET", f"/nope?customer={CUSTOMER}"))[0] == 404
    assert (await run.call("GET", "/api/contacts/1001", customer=CUSTOMER + "x" * 300))[0] == 400
    await sims.old_ticketing.go_down()
    assert (await run.call("GET", f"/api/tickets?customer={CUSTOMER}"))[0] == 502
    await sims.old_ticketing.come_up()
    assert (await run.call("GET", "/api/tickets?limit=2"))[0] == 200
    assert (await run.call("GET", "/admin/state", admin=True, token="not-the-token"))[0] == 401
    rollback = {"route": "contacts", "reason": "secrets test", "by": "tester"}
    assert (await run.call("POST", "/admin/rollback", admin=True, json=rollback))[0] == 200
    resume = {"route": "contacts", "reason": "done", "by": "tester"}
    assert (await run.call("POST", "/admin/resume", admin=True, json=resume))[0] == 200
    await wait_for(lambda: outbox_drained(proxy), timeout=30, what="every write on both")
    await wait_for(lambda: len(diff_records(proxy.workdir / "diffs")) >= 4, what="the diff records")


async def admin_outputs(run: Run) -> dict[str, bytes]:
    out = {}
    for path in ("/admin/state", "/metrics", "/admin/changes", "/admin/diffs", "/admin/fleet"):
        status, body = await run.call("GET", path, admin=True)
        assert status == 200, (path, body)
        out[path] = body if isinstance(body, bytes) else orjson.dumps(body)
    return out


def check_platform_credentials(sims: Any, credentials: dict[str, str]) -> None:
    """Each platform only ever got its own credential; a secondary never the client's."""
    for app in sims:
        seen = app.requests()
        assert seen, f"{app.name} got no request"
        for request in seen:
            assert request.header("Authorization") == credentials[app.name], (
                app.name,
                request.method,
                request.path,
                request.header("X-Cutover-Mirror"),
            )
            if request.header("X-Cutover-Mirror") is not None:
                assert request.header("Cookie") is None, (app.name, request.path)
    mirrored = [r for app in sims for r in app.requests() if r.header("X-Cutover-Mirror")]
    assert {r.header("X-Cutover-Mirror") for r in mirrored} >= {"shadow", "dual-write"}
    primary_cookies = [
        r.header("Cookie") for r in sims.old_crm.requests() if not r.header("X-Cutover-Mirror")
    ]
    assert f"session={CLIENT_COOKIE}" in primary_cookies  # the primary is the client's to talk to


def _around(text: str, found: str) -> str:
    at = text.find(found)
    return text[max(0, at - 120) : at + len(found) + 60]
