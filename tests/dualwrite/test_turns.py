"""Writes to one record take turns (proxy.dualwrite.journal.RecordTurns): in order, and no lock is
left behind by a write that finished, failed or was cancelled while it waited."""

from __future__ import annotations

import asyncio

from proxy.dualwrite.journal import RecordTurns


async def test_one_record_one_write_at_a_time_in_order_others_at_once():
    turns = RecordTurns()
    order: list[str] = []

    async def write(key: str, name: str, hold: asyncio.Event | None = None) -> None:
        await turns.take(key)
        order.append(name)
        if hold is not None:
            await hold.wait()
        turns.give(key)

    hold = asyncio.Event()
    first = asyncio.ensure_future(write("contact:old:1", "first", hold))  # noqa: TID251
    await asyncio.sleep(0)
    second = asyncio.ensure_future(write("contact:old:1", "second"))  # noqa: TID251
    other = asyncio.ensure_future(write("contact:old:2", "other"))  # noqa: TID251
    await other
    assert order == ["first", "other"]  # the other record did not wait; the second did
    hold.set()
    await asyncio.gather(first, second)
    assert order == ["first", "other", "second"]
    assert len(turns) == 0


async def test_a_write_cancelled_while_it_waits_leaves_no_lock_behind():
    turns = RecordTurns()
    await turns.take("k")
    waiting = asyncio.ensure_future(turns.take("k"))  # noqa: TID251
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert len(turns) == 1  # the holder's
    turns.give("k")
    assert len(turns) == 0
    await turns.take("k")  # and the key can be taken again at once
    turns.give("k")
    assert len(turns) == 0
