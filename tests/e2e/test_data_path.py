"""The data path through a real `cutover run` process, against the demo platforms on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.demo.platforms import Simulators, pattern_sha256
from tests.conftest import doc_for
from tests.processes import wait_for

pytestmark = pytest.mark.e2e


async def test_forwards_to_the_primary_with_clean_headers(sims: Simulators, cutover, http):
    """Hop-by-hop and forged X-Cutover-* headers are dropped, X-Forwarded-* set, X-Request-ID
    kept, the platform's credentials replace the client's, X-Cutover-Platform is answered."""
    doc = doc_for(sims)
    doc["platforms"]["old"]["crm"]["headers"] = {"Authorization": "Bearer ${OLD_CRM_TOKEN}"}
    proxy = await cutover(doc, env={"OLD_CRM_TOKEN": "old-secret"})
    headers = {
        "X-Customer-Id": "C-1010",
        "X-Channel": "phone",
        "Authorization": "Bearer client-token",
        "Connection": "keep-alive, X-Test-Drop",
        "X-Test-Drop": "1",
        "X-Test-Keep": "2",
        "X-Cutover-Mirror": "forged",
        "X-Forwarded-For": "6.6.6.6",
        "X-Request-ID": "req-abc-1",
    }
    async with http.get(f"{proxy.url}/api/contacts/1010", headers=headers) as response:
        assert response.status == 200
        assert response.headers["X-Cutover-Platform"] == "old"
        assert response.headers["X-Request-ID"] == "req-abc-1"
        assert (await response.json())["customer"] == "C-1010"
    seen = sims.old_crm.requests()[-1]
    assert seen.path == "/api/contacts/1010"
    assert seen.header("Authorization") == "Bearer old-secret"
    assert seen.header("X-Test-Drop") is None
    assert seen.header("X-Test-Keep") == "2"
    assert seen.header("X-Cutover-Mirror") is None
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == f"127.0.0.1:{proxy.port}"
    assert seen.header("X-Request-ID") == "req-abc-1"

    async with http.get(
        f"{proxy.url}/api/contacts/1010", headers={"X-Customer-Id": "C-1010"}
    ) as response:
        created = response.headers["X-Request-ID"]
    assert len(created) >= 16
    assert sims.old_crm.requests()[-1].header("X-Request-ID") == created


async def test_forwarding_headers_of_a_trusted_proxy_are_extended_not_replaced(
    sims: Simulators, cutover, http
):
    """server.trusted_proxies: a load balancer's X-Forwarded-* are kept and its own address
    added; an untrusted peer's are replaced (the test above)."""
    doc = doc_for(sims)
    doc["server"] = {"trusted_proxies": ["127.0.0.0/8"]}
    proxy = await cutover(doc)
    headers = {
        "X-Customer-Id": "C-1010",
        "X-Forwarded-For": "203.0.113.7, 10.1.2.3",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "crm.example.com",
    }
    async with http.get(f"{proxy.url}/api/contacts/1010", headers=headers) as response:
        assert response.status == 200
    seen = sims.old_crm.requests()[-1]
    assert seen.header("X-Forwarded-For") == "203.0.113.7, 10.1.2.3, 127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("X-Forwarded-Host") == "crm.example.com"


async def test_response_hop_by_hop_headers_are_removed(cutover, http, tmp_path):
    """What the upstream's Connection header names never reaches the client."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            text="ok",
            headers={
                "Connection": "X-Secret",
                "X-Secret": "s",
                "X-Kept": "k",
                "Keep-Alive": "timeout=5",
                "X-Cutover-Platform": "lie",
            },
        )

    app = web.Application()
    app.router.add_route("*", "/{t:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        from tests.configs import base_doc

        doc = base_doc(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}")
        proxy = await cutover(doc)
        async with http.get(f"{proxy.url}/api/contacts") as response:
            assert response.status == 200
            assert "X-Secret" not in response.headers
            assert "Keep-Alive" not in response.headers
            assert response.headers["X-Kept"] == "k"
            assert response.headers["X-Cutover-Platform"] == "old"
    finally:
        await runner.cleanup()


async def test_new_platform_serves_under_its_own_path(sims: Simulators, cutover, http):
    """A pilot customer on chat goes to new, at the route's contract.new_path."""
    proxy = await cutover(doc_for(sims))
    async with http.get(
        f"{proxy.url}/api/contacts?customer=C-1001",
        headers={"X-Customer-Id": "C-1001", "X-Channel": "chat"},
    ) as response:
        assert response.status == 200
        assert response.headers["X-Cutover-Platform"] == "new"
        body = await response.json()
    assert body["data"][0]["customer"] == "C-1001"
    assert sims.new_crm.requests()[-1].path == "/v2/contacts?customer=C-1001"


async def test_a_50mb_body_streams_both_ways_without_being_held(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    size = 50 * 1024 * 1024
    before = proxy.rss_peak_kib()
    digest = hashlib.sha256()
    received = 0
    async with http.get(f"{proxy.url}/api/attachments/blob?size={size}") as response:
        assert response.status == 200
        assert response.headers["X-Cutover-Platform"] == "old"
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)

    async def upload() -> AsyncIterator[bytes]:
        chunk = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(50):
            yield chunk

    async with http.post(
        f"{proxy.url}/api/attachments",
        data=upload(),
        headers={"Content-Type": "application/octet-stream"},
    ) as response:
        assert response.status == 201
        body = await response.json()
    assert body["size"] == size
    assert body["sha256"] == pattern_sha256(size)
    grown_mib = (proxy.rss_peak_kib() - before) / 1024
    assert grown_mib < 25, f"cutover's peak memory grew by {grown_mib:.0f} MiB for 50 MB bodies"


async def test_upstream_down_is_a_502_problem_naming_route_and_platform(
    sims: Simulators, cutover, http
):
    proxy = await cutover(doc_for(sims))
    await sims.old_crm.go_down()
    async with http.get(
        f"{proxy.url}/api/contacts/1001", headers={"X-Customer-Id": "C-1009"}
    ) as response:
        assert response.status == 502
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["X-Cutover-Platform"] == "old"
        problem = await response.json()
    assert problem["route"] == "contacts"
    assert problem["platform"] == "old"
    assert problem["status"] == 502
    assert "Traceback" not in orjson.dumps(problem).decode()
    await sims.old_crm.come_up()
    async with http.get(f"{proxy.url}/api/contacts/1001") as response:
        assert response.status == 200


async def test_upstream_reset_is_a_502(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    sims.old_crm.set_faults("reset")
    async with http.get(f"{proxy.url}/api/contacts/1001") as response:
        assert response.status == 502
        assert (await response.json())["type"].endswith("upstream-unreachable")


async def test_slow_upstream_is_a_504_within_the_timeout(sims: Simulators, cutover, http):
    doc = doc_for(sims)
    doc["platforms"]["old"]["crm"]["timeout"] = "500ms"
    proxy = await cutover(doc)
    sims.old_crm.set_faults("slow", delay_ms=5000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(f"{proxy.url}/api/contacts/1001") as response:
        assert response.status == 504
        problem = await response.json()
    assert loop.time() - started < 3.0
    assert problem["platform"] == "old"
    assert problem["route"] == "contacts"


async def test_rollback_sends_everyone_to_old(sims: Simulators, cutover, http):
    doc = doc_for(sims)
    doc["routes"][0]["weights"] = {"default": 100}
    doc["rollback"] = True
    proxy = await cutover(doc)
    for i in range(50):
        async with http.get(
            f"{proxy.url}/api/contacts?customer=C-{1001 + i}",
            headers={"X-Customer-Id": f"C-{1001 + i}", "X-Channel": "chat"},
        ) as response:
            assert response.headers["X-Cutover-Platform"] == "old"


async def test_weights_observed_on_2000_customers(sims: Simulators, cutover, http):
    """At 30 % for chat, about 30 % of 2 000 distinct chat customers are answered by new."""
    doc = doc_for(sims)
    doc["routes"][0]["weights"] = {"default": 0, "chat": 30}
    proxy = await cutover(doc)
    counts = {"old": 0, "new": 0}

    async def one(i: int) -> None:
        headers = {"X-Customer-Id": f"Z-{i}", "X-Channel": "chat"}
        async with http.get(f"{proxy.url}/api/contacts?limit=1", headers=headers) as response:
            assert response.status == 200
            counts[response.headers["X-Cutover-Platform"]] += 1

    for start in range(0, 2000, 100):
        await asyncio.gather(*(one(i) for i in range(start, start + 100)))
    share = counts["new"] / 2000 * 100
    assert 26 <= share <= 34, counts
    # and sticky: the same customers land on the same side again
    async with http.get(
        f"{proxy.url}/api/contacts?limit=1", headers={"X-Customer-Id": "Z-7", "X-Channel": "chat"}
    ) as first:
        side = first.headers["X-Cutover-Platform"]
    for _ in range(5):
        async with http.get(
            f"{proxy.url}/api/contacts?limit=1",
            headers={"X-Customer-Id": "Z-7", "X-Channel": "chat"},
        ) as again:
            assert again.headers["X-Cutover-Platform"] == side


async def test_no_route_is_a_404_problem(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    async with http.get(f"{proxy.url}/admin/secrets") as response:
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/problem+json"
    assert all(not app.requests() for app in sims)


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/contacts/../../admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/contacts/%2e%2e/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/contacts%2F..%2Fadmin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://evil.example/api/contacts HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api//contacts HTTP/1.1\r\nHost: x\r\n\r\n",
        b"BREW /api/contacts HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/contacts HTTP/1.1\r\nHost: x\r\nX-Customer-Id: " + b"C" * 300 + b"\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /api/contacts HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/contacts HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /api/contacts HTTP/1.1\r\nHost: x\r\nX-Customer-Id: C-1\r\n C-2\r\n\r\n",
        b"GET /api/contacts HTTP/1.1\r\nHost: x\r\nX-Cust\x01omer: C-1\r\n\r\n",
        b"GET /api/contacts\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/contacts%5c..%5cadmin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/contacts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"GET /api/contacts HTTP/1.1\nHost: x\n\n",
    ],
    ids=[
        "dotdot",
        "encoded-dots",
        "encoded-slash",
        "absolute-form",
        "empty-segment",
        "unknown-method",
        "long-customer",
        "garbage",
        "cl-and-te",
        "duplicate-cl",
        "obs-fold",
        "control-char-in-name",
        "control-char-in-path",
        "encoded-backslash",
        "te-not-chunked",
        "bare-lf",
    ],
)
async def test_malformed_requests_are_refused_and_never_forwarded(
    sims: Simulators, cutover, http, request_bytes
):
    proxy = await cutover(doc_for(sims))
    answer = await raw_exchange(proxy.port, request_bytes)
    status = int(answer.split(b" ", 2)[1])
    assert status == 400, answer[:200]
    assert all(not app.requests() for app in sims)
    async with http.get(f"{proxy.url}/api/contacts/1001") as response:  # still serving
        assert response.status == 200


async def test_access_log_line_per_request_with_hashed_customer(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    async with http.get(
        f"{proxy.url}/api/contacts/1001",
        headers={"X-Customer-Id": "C-1001", "X-Channel": "chat", "X-Request-ID": "log-1"},
    ) as response:
        assert response.status == 404  # the new platform does not know old id 1001 (no id map yet)

    def line():
        return next((e for e in proxy.log_events() if e.get("request_id") == "log-1"), None)

    event = await wait_for(line, what="the access log line")
    assert event["event"] == "request"
    assert event["route"] == "contacts"
    assert event["channel"] == "chat"
    assert event["cohort"] == "pilot"
    assert event["platform"] == "new"
    assert event["status"] == 404
    assert isinstance(event["ms"], float)
    assert event["customer"].startswith("sha256:")
    assert "C-1001" not in proxy.logs()


async def test_sigterm_finishes_in_flight_requests_then_exits_0(sims: Simulators, cutover, http):
    proxy = await cutover(doc_for(sims))
    sims.old_crm.set_faults("slow", delay_ms=700)
    since = sims.old_crm.last_seq

    async def fetch(i: int) -> int:
        async with http.get(f"{proxy.url}/api/contacts/{1001 + i}") as response:
            await response.read()
            return int(response.status)

    requests = asyncio.gather(*(fetch(i) for i in range(8)))
    await wait_for(
        lambda: len(sims.old_crm.requests(since)) >= 8, what="8 requests at the upstream"
    )
    proxy.signal(signal.SIGTERM)
    assert await requests == [200] * 8
    assert await proxy.wait_exit() == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{proxy.url}/api/contacts/1001"):
            pass
