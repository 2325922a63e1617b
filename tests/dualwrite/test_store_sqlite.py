"""The SQLite store: the contract, plus what only a file can show (durability, a full disk)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.dualwrite.sqlite_store import SqliteStore
from proxy.dualwrite.store import StoreError, open_store
from tests.dualwrite.store_contract import StoreContract, entry, ready_all
from tests.processes import wait_for


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteStore]:
        store = SqliteStore(tmp_path / "state" / "cutover.db")
        await store.open()
        yield store
        await store.close()


async def test_entries_survive_a_reopen(tmp_path: Path):
    path = tmp_path / "cutover.db"
    store = SqliteStore(path)
    await store.open()
    salt = await store.instance_salt()
    await store.commit(await store.journal(entry(1)), entry(1), None)
    await store.journal(entry(2))
    await store.close()
    again = SqliteStore(path)
    await again.open()
    try:
        assert [e.request_id for e in await ready_all(again)] == ["r1"]
        assert [e.request_id for e in await again.intents(time.time() + 1)] == ["r2"]
        assert await again.instance_salt() == salt
    finally:
        await again.close()


async def test_an_unopenable_path_is_a_store_error(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    store = SqliteStore(tmp_path / "file" / "cutover.db")
    with pytest.raises((StoreError, OSError)):
        await store.open()


async def test_a_failing_job_fails_alone(tmp_path: Path):
    store = SqliteStore(tmp_path / "c.db")
    await store.open()
    try:
        with pytest.raises(StoreError):
            await store.discard("not-an-intent")
        await store.commit(await store.journal(entry(1)), entry(1), None)
        assert len(await ready_all(store)) == 1
    finally:
        await store.close()


def test_store_urls(tmp_path: Path):
    relative = open_store("sqlite:///state/x.db", tmp_path)
    assert isinstance(relative, SqliteStore)
    assert relative.path == tmp_path / "state" / "x.db"
    absolute = open_store("sqlite:////var/lib/cutover/x.db", tmp_path)
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == Path("/var/lib/cutover/x.db")


async def test_two_processes_sharing_the_file_never_both_send(tmp_path: Path):
    """Two store objects on one file stand for two worker processes: one lease holder at a time,
    and the other takes over once the holder releases (or its lease runs out)."""
    first, second = SqliteStore(tmp_path / "c.db"), SqliteStore(tmp_path / "c.db")
    await first.open()
    await second.open()
    try:
        assert await first.claim("w0", 30) == [0]
        assert await second.claim("w1", 30) == []
        assert await first.claim("w0", 30) == [0]  # renewing keeps it
        await first.release("w0")
        assert await second.claim("w1", 30) == [0]
        assert await first.claim("w0", 0.05) == []
        await second.release("w1")
        assert await first.claim("w0", 0.01) == [0]

        async def taken_over() -> bool:
            return await second.claim("w1", 30) == [0]

        await wait_for(taken_over, timeout=2, what="the short lease to run out")
    finally:
        await first.close()
        await second.close()
