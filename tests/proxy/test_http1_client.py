"""The connections to the platforms (proxy.http1.client) against scripted raw servers: reuse,
the pool's bound, every wait's timeout, and each way a platform can fail mapped to its error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from multidict import CIMultiDict

from proxy.errors import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
)
from proxy.http1.client import Pool
from tests.processes import free_port, wait_for

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Platform"], Awaitable[None]]


@dataclass
class Platform:
    """A raw server that runs `script` on each connection and keeps what it was sent."""

    script: Script
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    port: int = 0

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        lines = head.decode().lower().split("\r\n")
        length = next((int(line[15:]) for line in lines if line.startswith("content-length:")), 0)
        if any(line == "transfer-encoding: chunked" for line in lines):
            parts = []
            while True:
                size = int((await reader.readline()).strip(), 16)
                if size == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(size))
                await reader.readline()
            body = b"".join(parts)
        else:
            body = await reader.readexactly(length)
        self.bodies.append(body)
        return head


@pytest.fixture
async def platform() -> AsyncIterator[Callable[[Script], Awaitable[Platform]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> Platform:
        plat = Platform(script)

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            plat.connections += 1
            try:
                await plat.script(reader, writer, plat)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        servers.append(server)
        plat.port = server.sockets[0].getsockname()[1]
        return plat

    yield start
    for server in servers:
        server.close()


def pool_for(plat: Platform, **kw: float) -> Pool:
    limit = int(kw.pop("limit", 4))
    return Pool(
        "new-crm",
        f"http://127.0.0.1:{plat.port}",
        limit=limit,
        timeout=kw.pop("timeout", 2.0),
        connect_timeout=kw.pop("connect_timeout", 2.0),
        **kw,
    )


async def keep_alive(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, plat: Platform
) -> None:
    while True:
        await plat.read_request(reader)
        writer.write(OK)
        await writer.drain()


async def get(
    pool: Pool,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    async with pool.request(method, "/x", CIMultiDict(headers or {}), body) as answer:
        assert answer.status == 200
        return await answer.read()


async def test_connections_are_kept_alive_and_reused(platform):
    plat = await platform(keep_alive)
    pool = pool_for(plat)
    for _ in range(3):
        assert await get(pool) == b"hello"
    assert plat.connections == 1
    assert plat.heads[0].startswith(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:")
    pool.close()


async def test_the_pool_is_bounded_and_a_waiter_times_out(platform):
    plat = await platform(keep_alive)
    pool = pool_for(plat, limit=1, timeout=0.3)
    async with pool.request("GET", "/x", CIMultiDict()) as held:
        assert held.status == 200
        with pytest.raises(UpstreamTimeout, match="busy"):
            await get(pool)  # the one connection is held above
        waiting = asyncio.get_running_loop().create_task(get(pool))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    assert await waiting == b"hello", "the released connection went to the waiter"
    assert plat.connections == 1
    assert pool.open == 1
    pool.close()


async def test_refused_connections_are_upstream_refused():
    pool = Pool("new-crm", f"http://127.0.0.1:{free_port()}", limit=2, timeout=1, connect_timeout=1)
    with pytest.raises(UpstreamRefused):
        await get(pool)
    assert pool.open == 0, "a failed connect gives its slot back"


async def test_no_answer_within_the_timeout_is_upstream_timeout(platform):
    async def silent(reader, writer, plat):
        await plat.read_request(reader)
        await asyncio.sleep(10)

    plat = await platform(silent)
    pool = pool_for(plat, timeout=0.2)
    with pytest.raises(UpstreamTimeout, match="no answer within"):
        await get(pool)
    assert pool.open == 0


async def test_a_body_that_stops_coming_is_upstream_timeout(platform):
    async def stalls(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(10)

    plat = await platform(stalls)
    pool = pool_for(plat, timeout=0.2)
    with pytest.raises(UpstreamTimeout, match="no body data"):
        await get(pool)


async def test_a_reset_mid_body_is_upstream_connect_error(platform):
    async def resets(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.transport.abort()

    plat = await platform(resets)
    pool = pool_for(plat)
    with pytest.raises(UpstreamConnectError, match="mid-body"):
        await get(pool)


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["not-http", "two-lengths", "obs-fold", "unasked-101", "head-too-large"],
)
async def test_invalid_answers_are_upstream_protocol_errors(platform, answer):
    async def bad(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(1)

    plat = await platform(bad)
    pool = pool_for(plat)
    with pytest.raises(UpstreamProtocolError):
        await get(pool)
    assert pool.open == 0


async def test_an_idle_connection_the_platform_closed_leaves_the_pool(platform):
    async def one_answer_then_close(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(OK)  # keep-alive by default, then closed anyway

    plat = await platform(one_answer_then_close)
    pool = pool_for(plat, limit=1)
    assert await get(pool) == b"hello"
    await wait_for(lambda: not pool.idle, what="the closed connection to leave the pool")
    assert pool.open == 0
    assert await get(pool) == b"hello"
    assert plat.connections == 2


async def drops_the_second_request_on_its_first_connection(reader, writer, plat):
    """The race a pool cannot see coming: the platform closes a kept-alive connection just
    as the next request goes out on it."""
    await plat.read_request(reader)
    writer.write(OK)
    await writer.drain()
    if plat.connections == 1:
        await plat.read_request(reader)
        writer.transport.abort()
        return
    await keep_alive(reader, writer, plat)


async def test_a_read_on_a_dead_pooled_connection_is_sent_again_once(platform):
    plat = await platform(drops_the_second_request_on_its_first_connection)
    pool = pool_for(plat, limit=1)
    assert await get(pool) == b"hello"
    assert await get(pool) == b"hello"
    assert plat.connections == 2
    assert len(plat.heads) == 3


async def test_a_write_on_a_dead_pooled_connection_is_sent_again_only_with_a_key(platform):
    plat = await platform(drops_the_second_request_on_its_first_connection)
    pool = pool_for(plat, limit=1)
    assert await get(pool, "POST", b"{}") == b"hello"
    with pytest.raises(UpstreamConnectError):
        await get(pool, "POST", b"{}")
    assert len(plat.bodies) == 2, "sent once, never again: it may have been applied"

    plat = await platform(drops_the_second_request_on_its_first_connection)
    pool = pool_for(plat, limit=1)
    assert await get(pool, "POST", b"{}") == b"hello"
    assert await get(pool, "POST", b"{}", {"Idempotency-Key": "k1"}) == b"hello"
    assert len(plat.bodies) == 3


async def test_head_answers_end_at_the_head_and_the_connection_is_reused(platform):
    async def head_then_get(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await keep_alive(reader, writer, plat)

    plat = await platform(head_then_get)
    pool = pool_for(plat)
    async with pool.request("HEAD", "/x", CIMultiDict()) as answer:
        assert answer.content_length == 1000
        assert await answer.read() == b""
    assert await get(pool) == b"hello"
    assert plat.connections == 1


async def test_answers_of_every_framing_follow_each_other_on_one_connection(platform):
    """The connection's parser is kept from one answer to the next; after each kind of
    ending (chunked, a length, no body, a HEAD, a 1xx first) the next answer reads whole."""
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # the answer to a HEAD
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfive",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nsixth",
    ]

    async def in_order(reader, writer, plat):
        for answer in answers:
            await plat.read_request(reader)
            writer.write(answer)
            await writer.drain()
        await keep_alive(reader, writer, plat)

    plat = await platform(in_order)
    pool = pool_for(plat, limit=1)
    seen = []
    for method in ("GET", "GET", "DELETE", "HEAD", "GET", "GET", "POST", "GET"):
        async with pool.request(method, "/x", CIMultiDict()) as answer:
            seen.append((answer.status, await answer.read()))
    assert seen == [
        (200, b"one"),
        (200, b"two"),
        (204, b""),
        (200, b""),
        (200, b"five"),
        (304, b""),
        (201, b"sixth"),
        (200, b"hello"),
    ]
    assert plat.connections == 1


async def test_informational_answers_are_skipped(platform):
    async def continue_first(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        await keep_alive(reader, writer, plat)

    plat = await platform(continue_first)
    assert await get(pool_for(plat)) == b"hello"


async def test_bodies_framed_by_the_end_of_the_connection_and_chunked(platform):
    async def close_delimited(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    plat = await platform(close_delimited)
    pool = pool_for(plat)
    async with pool.request("GET", "/x", CIMultiDict()) as answer:
        assert answer.content_length is None
        assert await answer.read() == b"until the end"
        assert not answer.keep_alive

    async def chunked(reader, writer, plat):
        await plat.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await keep_alive(reader, writer, plat)

    plat = await platform(chunked)
    pool = pool_for(plat)
    async with pool.request("GET", "/x", CIMultiDict()) as answer:
        assert [chunk async for chunk in answer.chunks()] in ([b"abc", b"de"], [b"abcde"])
    assert await get(pool) == b"hello"
    assert plat.connections == 1


async def test_streamed_request_bodies_are_framed(platform):
    plat = await platform(keep_alive)
    pool = pool_for(plat)

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one,", b"two,", b"three"):
            yield part

    async with pool.request("PUT", "/x", CIMultiDict(), parts()) as answer:
        assert answer.status == 200
    async with pool.request("PUT", "/x", CIMultiDict(), parts(), 13) as answer:
        assert answer.status == 200
    assert b"transfer-encoding: chunked" in plat.heads[0].lower()
    assert b"content-length: 13" in plat.heads[1].lower()
    assert plat.bodies == [b"one,two,three", b"one,two,three"]
    assert plat.connections == 1


async def test_a_header_with_a_line_break_is_not_sent(platform):
    plat = await platform(keep_alive)
    pool = pool_for(plat)
    with pytest.raises(UpstreamProtocolError, match="not sent"):
        await get(pool, headers={"X-Evil": "a\r\nX-Injected: 1"})
    assert plat.connections == 0


async def test_a_pool_swapped_out_by_a_reload_still_serves_what_was_routed_to_it(platform):
    """Closing keeps nothing, but fails nothing: requests that picked the pool before a reload
    replaced it are still sent, and their connections are closed afterwards."""
    plat = await platform(keep_alive)
    pool = pool_for(plat)
    assert await get(pool) == b"hello"
    pool.close()
    assert pool.idle == []
    assert await get(pool) == b"hello"
    assert pool.open == 0
    assert plat.connections == 2
