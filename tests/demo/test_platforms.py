"""The simulated platforms over real loopback sockets: CRUD, lists, idempotency, faults, streams."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.demo.apps import pattern_chunks, pattern_sha256
from proxy.demo.platforms import PlatformPorts, SimApp, Simulators, run_simulators

CUSTOMERS = 40
WAIT = 5.0


@pytest.fixture
async def sims() -> AsyncIterator[Simulators]:
    async with run_simulators(ports=0, customers=CUSTOMERS) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def body(response: aiohttp.ClientResponse, status: int) -> Any:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return orjson.loads(await response.read())


async def problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    answer: dict[str, Any] = orjson.loads(await response.read())
    assert answer["status"] == status
    return answer


def new_contact_id(sims: Simulators, old_id: int) -> str:
    new_id = sims.new_id("contact", old_id)
    assert new_id is not None
    return new_id


# --- records ----------------------------------------------------------------------------------


async def test_old_contact_crud(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """Create, read, replace, merge and delete a contact in the old schema."""
    base = sims.old_crm.url + "/api/contacts"
    created = await http.post(
        base,
        json={
            "customer": "C-9001",
            "full_name": "Mary Seacole",
            "email": "Mary.Seacole@example.com",
            "phone": "(020) 7946 0999",
            "channel": "whatsapp",
            "address": {"street": "1 Kingston Road", "city": "London", "postcode": "SE1 1AA"},
        },
    )
    record = await body(created, 201)
    assert record["id"] == 1001 + CUSTOMERS
    assert created.headers["Location"] == f"/api/contacts/{record['id']}"
    assert record["email"] == "Mary.Seacole@example.com"
    assert (record["status"], record["balance"], record["segment"]) == ("open", 0.0, None)
    assert record["updated_at"].endswith("+01:00")
    assert list(record)[-2:] == ["updated_at", "etag"]
    assert await body(await http.get(sims.old_crm.url + created.headers["Location"]), 200) == record
    assert sims.old_crm.contact(record["id"]) == record

    replaced = await body(
        await http.put(
            f"{base}/{record['id']}",
            json={**record, "full_name": "Mary J. Seacole", "email": None, "address": None},
        ),
        200,
    )
    assert replaced["full_name"] == "Mary J. Seacole"
    assert replaced["email"] is None and replaced["address"] is None
    assert replaced["etag"] != record["etag"]

    full = await body(
        await http.put(f"{base}/{record['id']}", json={"customer": "C-9001", "full_name": "M"}),
        200,
    )
    assert (full["channel"], full["phone"], full["status"]) == (None, None, "open")

    merged = await body(
        await http.patch(
            f"{base}/{record['id']}",
            json={"status": "closed", "address": {"city": "Bath"}, "balance": 3},
        ),
        200,
    )
    assert merged["status"] == "closed" and merged["balance"] == 3.0
    assert merged["address"] == {"street": None, "city": "Bath", "postcode": None}
    again = await body(
        await http.patch(f"{base}/{record['id']}", json={"address": {"street": "2 Lane"}}), 200
    )
    assert again["address"] == {"street": "2 Lane", "city": "Bath", "postcode": None}
    assert len({record["etag"], replaced["etag"], full["etag"], merged["etag"], again["etag"]}) == 5

    deleted = await http.delete(f"{base}/{record['id']}")
    assert deleted.status == 204
    gone = await problem(await http.get(f"{base}/{record['id']}"), 404)
    assert gone["instance"] == f"/api/contacts/{record['id']}"
    assert sims.old_crm.contact(record["id"]) is None


async def test_new_contact_crud(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """The same life cycle in the new schema: string ids, E.164 phones, UTC, upper-case states."""
    base = sims.new_crm.url + "/v2/contacts"
    record = await body(
        await http.post(
            base,
            json={
                "customer": "C-9001",
                "name": "Mary Seacole",
                "email": "Mary.Seacole@Example.com",
                "phone_e164": "+442079460999",
                "location": {"city": "London"},
            },
        ),
        201,
    )
    assert record["id"].startswith("CT-") and len(record["id"]) == 9
    assert record["email"] == "mary.seacole@example.com"
    assert record["status"] == "OPEN"
    assert record["location"] == {"street": None, "city": "London", "postal_code": None}
    assert record["updated_at"].endswith("Z")
    assert record["etag"].startswith("v1-")

    patched = await body(
        await http.patch(f"{base}/{record['id']}", json={"status": "RESOLVED"}), 200
    )
    assert patched["status"] == "RESOLVED" and patched["etag"].startswith("v2-")
    refused = await problem(
        await http.patch(f"{base}/{record['id']}", json={"phone_e164": "020 7946 0999"}), 422
    )
    assert refused["field"] == "phone_e164"
    replaced = await body(
        await http.put(f"{base}/{record['id']}", json={"customer": "C-9001", "name": "M. S."}),
        200,
    )
    assert replaced["email"] is None and replaced["etag"].startswith("v3-")
    assert (await http.delete(f"{base}/{record['id']}")).status == 204
    await problem(await http.delete(f"{base}/{record['id']}"), 404)


@pytest.mark.parametrize(
    ("app", "path", "payload", "field"),
    [
        ("old-crm", "/api/contacts", {"customer": "C-1"}, "full_name"),
        ("old-crm", "/api/contacts", {"full_name": "A"}, "customer"),
        ("old-crm", "/api/contacts", {"customer": "C-1", "full_name": "A", "name": "A"}, "name"),
        ("old-crm", "/api/contacts", {"customer": "C-1", "full_name": "A", "status": "OPEN"}, "status"),
        ("old-crm", "/api/contacts", {"customer": "C-1", "full_name": "A", "balance": "1"}, "balance"),
        ("old-crm", "/api/contacts", [1, 2], "$"),
        ("new-crm", "/v2/contacts", {"customer": "C-1", "full_name": "A"}, "full_name"),
        ("new-crm", "/v2/contacts", {"customer": "C-1", "name": "A", "location": {"postcode": "X"}}, "location.postcode"),
        ("old-ticketing", "/api/tickets", {"contact_id": 1001}, "subject"),
        ("old-ticketing", "/api/tickets", {"contact_id": "1001", "subject": "S"}, "contact_id"),
        ("old-ticketing", "/api/tickets", {"contact_id": 99, "subject": "S"}, "contact_id"),
        ("new-ticketing", "/v2/tickets", {"contact": "CT-NOPE00", "title": "T"}, "contact"),
        ("new-ticketing", "/v2/tickets", {"contact": "x", "title": "T", "priority": "high"}, "priority"),
    ],
)  # fmt: skip
async def test_invalid_writes_are_422_naming_the_field(
    sims: Simulators, http: aiohttp.ClientSession, app: str, path: str, payload: Any, field: str
) -> None:
    """Missing, unknown, mistyped or dangling fields are refused with the field named."""
    before = len(sims.by_name(app).store.contacts), len(sims.by_name(app).store.tickets)
    answer = await problem(await http.post(sims.by_name(app).url + path, json=payload), 422)
    assert answer["field"] == field
    assert field in {error["field"] for error in answer["errors"]}
    assert (len(sims.by_name(app).store.contacts), len(sims.by_name(app).store.tickets)) == before


async def test_malformed_json_and_unknown_ids(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """A body that is not JSON is a 400; an unknown id is a 404 for every method."""
    crm = sims.old_crm.url
    for method in ("POST", "PUT", "PATCH"):
        path = "/api/contacts" if method == "POST" else "/api/contacts/1001"
        await problem(await http.request(method, crm + path, data=b"{not json"), 400)
    await problem(await http.post(crm + "/api/contacts"), 400)
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        kwargs: dict[str, Any] = {} if method in ("GET", "DELETE") else {"json": {}}
        await problem(await http.request(method, crm + "/api/contacts/424242", **kwargs), 404)
    await problem(await http.get(sims.new_crm.url + "/v2/contacts/1001"), 404)
    await problem(await http.get(crm + "/api/nothing-here"), 404)
    not_allowed = await problem(await http.delete(crm + "/api/contacts"), 405)
    assert not_allowed["title"] == "Method Not Allowed"


async def test_tickets_and_comments_in_both_schemas(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """Tickets reference contacts by each platform's own id; comments change the ticket's etag."""
    old = sims.old_ticketing.url + "/api/tickets"
    ticket = await body(await http.post(old, json={"contact_id": 1001, "subject": "Hi"}), 201)
    assert (ticket["status"], ticket["priority"], ticket["comments"]) == ("open", "normal", [])
    comment = await body(
        await http.post(
            f"{old}/{ticket['id']}/comments", json={"author": "customer", "body": "Help"}
        ),
        201,
    )
    assert isinstance(comment["id"], int)
    listed = await body(await http.get(f"{old}/{ticket['id']}/comments"), 200)
    assert listed == {"items": [comment], "total": 1}
    after = await body(await http.get(f"{old}/{ticket['id']}"), 200)
    assert after["comments"] == [comment] and after["etag"] != ticket["etag"]
    closed = await body(await http.patch(f"{old}/{ticket['id']}", json={"status": "closed"}), 200)
    assert closed["comments"] == [comment] and closed["created_at"] == ticket["created_at"]
    await problem(await http.post(f"{old}/999999/comments", json={"author": "agent"}), 404)
    await problem(await http.post(f"{old}/{ticket['id']}/comments", json={"author": "bot"}), 422)

    new = sims.new_ticketing.url + "/v2/tickets"
    contact = new_contact_id(sims, 1001)
    created = await body(
        await http.post(new, json={"contact": contact, "title": "Hi", "priority": "HIGH"}), 201
    )
    assert created["id"].startswith("TK-") and created["state"] == "OPEN"
    note = await body(
        await http.post(
            f"{new}/{created['id']}/comments", json={"author": "agent", "text": "On it"}
        ),
        201,
    )
    assert note["id"].startswith("CM-") and note["created_at"].endswith("Z")
    assert await body(await http.get(f"{new}/{created['id']}/comments"), 200) == {
        "data": [note],
        "meta": {"total": 1},
    }
    assert sims.new_ticketing.ticket(created["id"]) == await body(
        await http.get(f"{new}/{created['id']}"), 200
    )


async def test_list_filters_and_paging(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """customer/status (old) and customer/state (new) filter; limit and offset page; total counts."""
    old = sims.old_crm.url + "/api/contacts"
    new = sims.new_crm.url + "/v2/contacts"
    everyone = await body(await http.get(old, params={"limit": "500"}), 200)
    assert everyone["total"] == CUSTOMERS and len(everyone["items"]) == CUSTOMERS
    assert len((await body(await http.get(old), 200))["items"]) == CUSTOMERS  # default 50

    pages = []
    for offset in range(0, CUSTOMERS, 7):
        page = await body(await http.get(old, params={"limit": "7", "offset": str(offset)}), 200)
        assert page["total"] == CUSTOMERS
        pages.extend(page["items"])
    assert pages == everyone["items"]

    one = await body(await http.get(old, params={"customer": "C-1005"}), 200)
    assert [c["id"] for c in one["items"]] == [1005] and one["total"] == 1
    closed = await body(await http.get(old, params={"status": "closed", "limit": "2"}), 200)
    expected = [c["id"] for c in sims.old_crm.contacts() if c["status"] == "closed"]
    assert closed["total"] == len(expected) > 2
    assert [c["id"] for c in closed["items"]] == expected[:2]

    resolved = await body(await http.get(new, params={"state": "RESOLVED", "limit": "500"}), 200)
    assert set(resolved) == {"data", "meta"}
    assert resolved["meta"]["total"] == len(expected)
    assert {c["customer"] for c in resolved["data"]} == {
        c["customer"] for c in sims.old_crm.contacts() if c["status"] == "closed"
    }
    # The new platform does not know `status=`: an untranslated query is silently unfiltered.
    untranslated = await body(await http.get(new, params={"status": "closed"}), 200)
    assert untranslated["meta"]["total"] == CUSTOMERS
    await problem(await http.get(new, params={"state": "closed"}), 400)
    await problem(await http.get(old, params={"limit": "x"}), 400)
    await problem(await http.get(old, params={"offset": "-1"}), 400)

    tickets = await body(
        await http.get(sims.old_ticketing.url + "/api/tickets", params={"contact_id": "1003"}), 200
    )
    assert {t["contact_id"] for t in tickets["items"]} <= {1003}
    assert tickets["total"] == sum(t["contact_id"] == 1003 for t in sims.old_ticketing.tickets())
    new_tickets = await body(
        await http.get(
            sims.new_ticketing.url + "/v2/tickets",
            params={"contact": new_contact_id(sims, 1003)},
        ),
        200,
    )
    assert new_tickets["meta"]["total"] == tickets["total"]


async def test_list_limit_is_capped_at_500(http: aiohttp.ClientSession) -> None:
    """A limit above 500 answers 500 records, not an error."""
    async with run_simulators(ports=0, customers=520) as sims:
        answer = await body(
            await http.get(sims.old_crm.url + "/api/contacts", params={"limit": "9999"}), 200
        )
    assert answer["total"] == 520 and len(answer["items"]) == 500


async def test_running_platforms_hold_the_seed(sims: Simulators) -> None:
    """The stores hold the seeded records, with the id map and discrepancies from the same seed."""
    assert len(sims.old_crm.contacts()) == len(sims.new_crm.contacts()) == CUSTOMERS
    assert sims.old_crm.store is sims.old_ticketing.store
    kinds = {kind for kind, _, _ in sims.id_map}
    assert kinds == {"contact", "ticket", "comment"}
    for kind, old_id, new_id in sims.id_map:
        if kind == "contact":
            assert sims.old_crm.contact(old_id) is not None
            assert sims.new_crm.contact(new_id) is not None
        elif kind == "ticket":
            assert sims.old_ticketing.ticket(old_id) is not None
            assert sims.new_ticketing.ticket(new_id) is not None
    assert {d.kind for d in sims.discrepancies} == {"balance", "postcode", "missing_comment"}
    for d in sims.discrepancies:
        if d.kind == "balance":
            new = sims.new_crm.contact(d.new_id)
            assert new is not None and new["balance"] == d.new_value


# --- idempotency ------------------------------------------------------------------------------


async def test_idempotency_key_replays_and_refuses(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """Same key + same payload replays without a second write; another payload is a 422."""
    url = sims.new_crm.url + "/v2/contacts"
    payload = {"customer": "C-7777", "name": "Rosalind Franklin"}
    headers = {"Idempotency-Key": "k-1"}
    first = await http.post(url, json=payload, headers=headers)
    created = await body(first, 201)
    second = await http.post(url, json=payload, headers=headers)
    assert await body(second, 201) == created
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(sims.new_crm.contacts()) == CUSTOMERS + 1

    other = await problem(
        await http.post(url, json={**payload, "name": "R."}, headers=headers), 422
    )
    assert other["field"] == "Idempotency-Key"
    # The same key on another path is another payload too.
    await problem(await http.patch(f"{url}/{created['id']}", json=payload, headers=headers), 422)

    target = f"{url}/{created['id']}"
    for _ in range(2):
        gone = await http.delete(target, headers={"Idempotency-Key": "k-del"})
        assert gone.status == 204
    await problem(await http.delete(target, headers={"Idempotency-Key": "k-del-2"}), 404)
    # Keys are per upstream: the old CRM has never seen k-1.
    old = await http.post(
        sims.old_crm.url + "/api/contacts",
        json={"customer": "C-7777", "full_name": "Rosalind Franklin"},
        headers=headers,
    )
    assert old.status == 201 and "Idempotent-Replayed" not in old.headers


async def test_idempotency_key_in_flight_is_409(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """While the first request with a key is still running, a second one with it gets 409."""
    url = sims.old_crm.url + "/api/contacts"
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"customer": "C-1", '
        await release.wait()
        yield b'"full_name": "Slow Sam"}'

    seq = sims.old_crm.last_seq
    first = asyncio.get_running_loop().create_task(
        http.post(url, data=slow_body(), headers={"Idempotency-Key": "slow"})
    )
    async with asyncio.timeout(WAIT):
        await sims.old_crm.wait_for_request(lambda seen: seen.method == "POST", since=seq)
    busy = await http.post(url, json={"customer": "C-1"}, headers={"Idempotency-Key": "slow"})
    await problem(busy, 409)
    release.set()
    created = await body(await first, 201)
    assert created["full_name"] == "Slow Sam"


# --- faults -----------------------------------------------------------------------------------


async def refused(app: SimApp) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", app.port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def condition(app: SimApp) -> tuple[bool, str]:
    return app.is_up, app.faults.mode


async def test_down_refuses_connections_and_comes_back_on_the_same_port(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """Down closes the listening socket and open keep-alive connections; up reopens the port."""
    app = sims.old_crm
    url = app.url + "/api/contacts/1001"
    port = app.port
    assert (await http.get(url)).status == 200  # leaves a pooled keep-alive connection
    await app.go_down()
    assert condition(app) == (False, "down")
    assert await refused(app)
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(url)
    assert (await http.get(sims.new_crm.url + "/_sim/health")).status == 200
    await app.come_up()
    assert app.port == port
    assert condition(app) == (True, "ok")
    await body(await http.get(url), 200)


async def test_down_for_a_while_over_http(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """`down_for_ms` answers first, goes down, and comes back by itself."""
    app = sims.new_ticketing
    await problem(await http.post(app.url + "/_sim/faults", json={"mode": "down"}), 422)
    answer = await body(
        await http.post(app.url + "/_sim/faults", json={"mode": "down", "down_for_ms": 300}), 200
    )
    assert answer == {"mode": "down", "down_for_ms": 300}
    async with asyncio.timeout(WAIT):
        await app.wait_until_down()
    assert await refused(app)
    async with asyncio.timeout(WAIT):
        await app.wait_until_up()
    assert await body(await http.get(app.url + "/_sim/faults"), 200) == {"mode": "ok"}
    assert app.errors == []


async def test_set_faults_down_then_ok_from_python(sims: Simulators) -> None:
    """The synchronous API carries out down and up in order, in the background."""
    app = sims.new_crm
    app.set_faults("down")
    async with asyncio.timeout(WAIT):
        await app.wait_until_down()
    assert await refused(app)
    app.set_faults("slow", delay_ms=10)
    async with asyncio.timeout(WAIT):
        await app.wait_until_up()
    assert app.faults.mode == "slow" and not await refused(app)


async def test_slow_delays_the_answer(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """A slow upstream makes the client's timeout fire; `/_sim` stays fast."""
    app = sims.old_crm
    app.set_faults("slow", delay_ms=10_000)
    with pytest.raises(asyncio.TimeoutError):
        await http.get(app.url + "/api/contacts/1001", timeout=aiohttp.ClientTimeout(total=0.2))
    assert (await http.get(app.url + "/_sim/health")).status == 200
    app.set_faults("slow", delay_ms=150)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await body(await http.get(app.url + "/api/contacts/1001"), 200)
    assert loop.time() - started >= 0.15


async def test_flaky_fails_the_expected_requests(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """error_rate 0.5 without a seed fails every second request in scope with a 500 problem."""
    app = sims.old_crm
    await body(
        await http.post(app.url + "/_sim/faults", json={"mode": "flaky", "error_rate": 0.5}), 200
    )
    statuses = []
    for _ in range(6):
        response = await http.get(app.url + "/api/contacts/1001")
        if response.status == 500:
            await problem(response, 500)
        statuses.append(response.status)
    assert statuses == [200, 500] * 3
    app.set_faults("flaky", error_rate=1, status=503, methods=["PATCH"])
    await problem(await http.patch(app.url + "/api/contacts/1001", json={"balance": 1}), 503)
    assert (await http.get(app.url + "/api/contacts/1001")).status == 200
    record = sims.old_crm.contact(1001)
    assert record is not None and record["balance"] != 1.0
    assert record == sims.old_crm.contact("1001")


async def test_reset_drops_the_connection(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """Reset answers nothing; with commit the write still happened."""
    app = sims.old_crm
    app.set_faults("reset")
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(app.url + "/api/contacts/1001")
    app.set_faults("reset", commit=True, methods=["PATCH"])
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.patch(
            app.url + "/api/contacts/1001",
            json={"full_name": "Lost Answer"},
            headers={"Idempotency-Key": "retry-me"},
        )
    record = app.contact(1001)
    assert record is not None and record["full_name"] == "Lost Answer"
    app.set_faults("ok")
    replayed = await http.patch(
        app.url + "/api/contacts/1001",
        json={"full_name": "Lost Answer"},
        headers={"Idempotency-Key": "retry-me"},
    )
    assert (await body(replayed, 200)) == record
    assert replayed.headers["Idempotent-Replayed"] == "true"


async def test_garbage_is_not_json(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """Garbage claims to be JSON and is not."""
    sims.new_crm.set_faults("garbage")
    response = await http.get(sims.new_crm.url + "/v2/contacts")
    assert response.status == 200 and response.content_type == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(await response.read())


async def test_wrong_field_changes_every_returned_record(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """One top-level field of each record in the answer is replaced; the store is untouched."""
    app = sims.old_crm
    app.set_faults("wrong_field", field="email", value="x@y")
    one = await body(await http.get(app.url + "/api/contacts/1001"), 200)
    assert one["email"] == "x@y"
    listed = await body(await http.get(app.url + "/api/contacts", params={"limit": "5"}), 200)
    assert [c["email"] for c in listed["items"]] == ["x@y"] * 5
    assert listed["total"] == CUSTOMERS
    stored = app.contact(1001)
    assert stored is not None and stored["email"] != "x@y"


async def test_status_fails_writes_only(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """Status mode answers every write with that status and does not write; reads still work."""
    app = sims.new_crm
    app.set_faults("status", status=422)
    answer = await problem(
        await http.post(app.url + "/v2/contacts", json={"customer": "C-1", "name": "N"}), 422
    )
    assert "new-crm" in answer["detail"]
    assert len(app.contacts()) == CUSTOMERS
    await body(await http.get(app.url + f"/v2/contacts/{new_contact_id(sims, 1001)}"), 200)


async def test_fault_scope_and_control_api(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """Faults keep to their methods and path prefixes, never touch `/_sim`, and validate."""
    app = sims.old_ticketing
    settings = {"mode": "status", "status": 503, "methods": ["GET"], "paths": ["/api/tickets"]}
    await body(await http.post(app.url + "/_sim/faults", json=settings), 200)
    assert await body(await http.get(app.url + "/_sim/faults"), 200) == settings
    await problem(await http.get(app.url + "/api/tickets/5001"), 503)
    assert (await http.get(app.url + "/api/attachments/blob", params={"size": "3"})).status == 200
    assert (await http.get(app.url + "/_sim/health")).status == 200
    assert (await http.get(app.url + "/_sim/requests")).status == 200
    bad = await problem(await http.post(app.url + "/_sim/faults", json={"mode": "x"}), 422)
    assert "mode" in bad["detail"]
    await problem(await http.post(app.url + "/_sim/faults", data=b"nope"), 400)
    with pytest.raises(ValueError, match="error_rate"):
        app.set_faults("flaky")
    assert app.faults.mode == "status"


# --- request log, credentials -----------------------------------------------------------------


async def test_requests_are_recorded_with_the_interesting_headers(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """Method, path with query, chosen headers and X-Test-*; `/_sim` itself is not recorded."""
    app = sims.old_crm
    await http.get(
        app.url + "/api/contacts?customer=C-1001",
        headers={
            "x-request-id": "r-1",
            "X-Cutover-Mirror": "shadow",
            "X-Test-Case": "abc",
            "X-Forwarded-For": "10.0.0.1",
            "User-Agent": "tests",
        },
    )
    await http.delete(app.url + "/api/contacts/1002", headers={"Idempotency-Key": "d"})
    seen = app.requests()
    assert [(s.method, s.path) for s in seen] == [
        ("GET", "/api/contacts?customer=C-1001"),
        ("DELETE", "/api/contacts/1002"),
    ]
    assert seen[0].headers == {
        "X-Request-ID": "r-1",
        "X-Cutover-Mirror": "shadow",
        "X-Test-Case": "abc",
        "X-Forwarded-For": "10.0.0.1",
    }
    assert seen[0].header("x-test-case") == "abc"
    assert seen[1].headers["Idempotency-Key"] == "d"
    assert seen[1].seq == seen[0].seq + 1
    over_http = await body(await http.get(app.url + "/_sim/requests"), 200)
    assert [r["path"] for r in over_http] == [s.path for s in seen]
    later = await body(
        await http.get(app.url + "/_sim/requests", params={"since": str(seen[0].seq)}), 200
    )
    assert [r["seq"] for r in later] == [seen[1].seq]
    assert (await http.delete(app.url + "/_sim/requests")).status == 204
    assert app.requests() == []
    await http.get(app.url + "/api/contacts/1001")
    assert app.requests()[0].seq == seen[1].seq + 1
    app.clear_requests()
    assert app.requests() == [] and sims.new_crm.requests() == []


async def test_wait_for_request_resolves_on_arrival(
    sims: Simulators, http: aiohttp.ClientSession
) -> None:
    """A waiter registered before the request arrives is woken by it, and only by a match."""
    app = sims.new_crm
    since = app.last_seq
    waiter = asyncio.get_running_loop().create_task(
        app.wait_for_request(lambda seen: seen.method == "PATCH", since=since)
    )
    await http.get(app.url + f"/v2/contacts/{new_contact_id(sims, 1001)}")
    assert not waiter.done()
    await http.patch(
        app.url + f"/v2/contacts/{new_contact_id(sims, 1001)}",
        json={"segment": "business"},
        headers={"X-Cutover-Mirror": "dual-write"},
    )
    async with asyncio.timeout(WAIT):
        seen = await waiter
    assert seen.headers["X-Cutover-Mirror"] == "dual-write"


async def test_credentials_are_required_when_configured(http: aiohttp.ClientSession) -> None:
    """A configured Authorization value is required (401 otherwise); `/_sim` stays open."""
    async with run_simulators(
        ports=0, customers=3, credentials={"old": "Bearer old-secret", "new-crm": "Basic bmV3"}
    ) as sims:
        url = sims.old_crm.url + "/api/contacts/1001"
        denied = await problem(await http.get(url), 401)
        assert denied["status"] == 401
        await problem(await http.get(url, headers={"Authorization": "Bearer wrong"}), 401)
        await body(await http.get(url, headers={"Authorization": "Bearer old-secret"}), 200)
        assert sims.old_crm.requests()[-1].headers["Authorization"] == "Bearer old-secret"
        tickets = sims.old_ticketing.url + "/api/tickets"
        await problem(await http.get(tickets), 401)
        await problem(await http.get(sims.new_crm.url + "/v2/contacts"), 401)
        await body(await http.get(sims.new_ticketing.url + "/v2/tickets"), 200)
        assert (await http.get(sims.old_crm.url + "/_sim/health")).status == 200
    with pytest.raises(ValueError, match="credentials"):
        async with run_simulators(ports=0, customers=1, credentials={"middle": "x"}):
            pass


# --- streaming --------------------------------------------------------------------------------

BIG = 50 * 1024 * 1024 + 123


async def test_big_blob_streams_down(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """GET blob?size=N sends N pattern bytes with Content-Length, in chunks."""
    url = sims.old_ticketing.url + "/api/attachments/blob"
    async with http.get(url, params={"size": str(BIG)}) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(BIG)
        digest = hashlib.sha256()
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG
    assert digest.hexdigest() == pattern_sha256(BIG)
    async with http.head(url, params={"size": "1000"}) as head:
        assert head.headers["Content-Length"] == "1000"
        assert await head.read() == b""
    async with http.get(sims.new_ticketing.url + "/v2/attachments/blob?size=300") as small:
        assert await small.read() == bytes(range(256)) + bytes(range(44))


async def test_big_upload_streams_up(sims: Simulators, http: aiohttp.ClientSession) -> None:
    """POST attachments hashes a 50 MB body as it arrives and answers its size and sha256."""

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in pattern_chunks(BIG, 1 << 20):
            yield chunk

    url = sims.new_ticketing.url + "/v2/attachments"
    meta = await body(await http.post(url, data=chunks()), 201)
    assert meta["size"] == BIG and meta["sha256"] == pattern_sha256(BIG)
    assert meta["id"].startswith("AT-")
    assert await body(await http.get(f"{url}/{meta['id']}"), 200) == meta
    old = await body(await http.post(sims.old_ticketing.url + "/api/attachments", data=b""), 201)
    assert old == {"id": 1, "size": 0, "sha256": hashlib.sha256().hexdigest()}


# --- the process entry point ------------------------------------------------------------------


def test_platform_ports_parse() -> None:
    """--ports takes four ports, or 0 for free ones."""
    assert PlatformPorts.parse("9001,9002,9101,9102") == PlatformPorts()
    assert PlatformPorts.parse("0") == PlatformPorts(0, 0, 0, 0)
    with pytest.raises(ValueError, match="four ports"):
        PlatformPorts.parse("1,2")


async def test_module_runs_until_sigterm(http: aiohttp.ClientSession) -> None:
    """`python -m proxy.demo.platforms` prints one URL per app and exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.demo.platforms",
        "--ports",
        "0",
        "--customers",
        "5",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            lines = [(await process.stdout.readline()).decode().split() for _ in range(4)]
        assert [name for name, _ in lines] == [
            "old-crm",
            "old-ticketing",
            "new-crm",
            "new-ticketing",
        ]
        urls = dict(lines)
        await body(await http.get(urls["new-crm"] + "/_sim/health"), 200)
        await body(await http.get(urls["old-crm"] + "/api/contacts/1005"), 200)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await process.wait()
    assert code == 0
