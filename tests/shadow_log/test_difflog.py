"""DiffLogWriter: batches off the loop, rotates and prunes, survives bad disks, never blocks."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from shadow.difflog import ROTATED_PATTERN, DiffLogWriter
from shadow.logread import LogReader, list_log_files
from tests.shadow_log import read_lines, record

WAIT = 10.0  # generous bound for joins and flushes; none of them should come close


@pytest.fixture
def writers() -> Iterator[list[DiffLogWriter]]:
    """Writers made by a test; closed at the end even when the test failed."""
    made: list[DiffLogWriter] = []
    yield made
    for writer in made:
        writer.close(1.0)


def make(writers: list[DiffLogWriter], directory: Path, **kwargs: Any) -> DiffLogWriter:
    options: dict[str, Any] = {"instance": "i1", "max_size": 10_000_000, "keep": 5}
    options.update(kwargs)
    writer = DiffLogWriter(directory, **options)
    writers.append(writer)
    return writer


def sized(n: int, size: int = 200) -> dict[str, Any]:
    """A record whose line is exactly `size` bytes long (newline included)."""
    rec = {"request_id": f"r{n:06d}", "pad": ""}
    rec["pad"] = "x" * (size - len(orjson.dumps(rec)) - 1)
    assert len(orjson.dumps(rec)) + 1 == size
    return rec


def test_records_reach_the_active_file_in_order(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """Submitted records are written one per line, in order, and counted."""
    writer = make(writers, tmp_path / "diffs")
    writer.start()
    for n in range(500):
        assert writer.submit(record(f"r{n}"))
    assert writer.close(WAIT)
    lines = read_lines(tmp_path / "diffs" / "diffs-i1.jsonl")
    assert [line["request_id"] for line in lines] == [f"r{n}" for n in range(500)]
    assert (writer.written, writer.dropped, writer.errors, writer.queued) == (500, 0, 0, 0)


def test_the_timer_writes_without_flush_or_close(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """A lone record is picked up by the flush timer (~0.5 s), not only at close."""
    picked = threading.Event()
    writer = make(writers, tmp_path)
    writer._before_write = picked.set
    writer.start()
    writer.submit(record())
    assert picked.wait(WAIT)


def test_rotation_keeps_the_newest_files(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """Files never exceed max_size; rotated names carry the UTC time; only `keep` are kept."""
    writer = make(writers, tmp_path, max_size=2000, keep=3)  # 10 records of 200 bytes per file
    writer.start()
    for n in range(205):
        assert writer.submit(sized(n))
    assert writer.close(WAIT)

    rotated = sorted(p.name for p in tmp_path.iterdir() if ROTATED_PATTERN.fullmatch(p.name))
    assert len(rotated) == 3
    assert writer.rotations == 20
    for name in rotated:
        match = ROTATED_PATTERN.fullmatch(name)
        assert match is not None and match["instance"] == "i1"
        assert (tmp_path / name).stat().st_size == 2000
    active = tmp_path / "diffs-i1.jsonl"
    assert active.stat().st_size == 5 * 200
    # what is left is the newest records, contiguous, oldest file first
    kept = [rec["request_id"] for name in rotated for rec in read_lines(tmp_path / name)]
    kept += [rec["request_id"] for rec in read_lines(active)]
    assert kept == [f"r{n:06d}" for n in range(170, 205)]


def test_instances_share_a_directory(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """Pruning touches only the instance's own files, even when one id prefixes another."""
    a = make(writers, tmp_path, instance="a", max_size=1000, keep=1)
    ab = make(writers, tmp_path, instance="a-b", max_size=1000, keep=2)
    a.start()
    ab.start()
    for n in range(40):
        a.submit(sized(n))
        ab.submit(sized(n))
    assert a.close(WAIT) and ab.close(WAIT)
    names = sorted(p.name for p in tmp_path.iterdir())
    owners = [m["instance"] for name in names if (m := ROTATED_PATTERN.fullmatch(name))]
    assert sorted(owners) == ["a", "a-b", "a-b"]
    assert "diffs-a.jsonl" in names and "diffs-a-b.jsonl" in names


def test_an_oversized_record_gets_a_file_of_its_own(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """A record larger than max_size is still written whole (rather than lost)."""
    writer = make(writers, tmp_path, max_size=1000, keep=5)
    writer.start()
    writer.submit(sized(0))
    writer.submit(sized(1, 5000))
    writer.submit(sized(2))
    assert writer.close(WAIT)
    reader = LogReader(tmp_path)
    sizes = [f.size for f in reader.files]
    assert sizes == [200, 5000, 200]
    assert writer.written == 3


def test_concurrent_submits_from_threads(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """Many threads submitting at once: every record lands exactly once, lines stay whole."""
    writer = make(writers, tmp_path, max_size=200_000, keep=1000, queue_size=100_000)
    writer.start()
    go = threading.Event()

    def submit_many(thread: int) -> None:
        go.wait(WAIT)
        for n in range(2000):
            assert writer.submit({"request_id": f"t{thread}-{n}", "n": n})

    threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(WAIT)
    assert writer.close(WAIT)

    ids = [rec["request_id"] for f in list_log_files(tmp_path) for rec in read_lines(f.path)]
    assert len(ids) == len(set(ids)) == 16_000
    assert writer.written == 16_000 and writer.rotations > 0
    # each thread's records keep their order
    per_thread = [[i for i in ids if i.startswith(f"t{t}-")] for t in range(8)]
    assert all(seq == [f"t{t}-{n}" for n in range(2000)] for t, seq in enumerate(per_thread))


async def test_submits_from_tasks_on_the_loop(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """Tasks on the event loop submit without awaiting anything; all records are written."""
    writer = make(writers, tmp_path)
    writer.start()

    async def producer(task: int) -> int:
        accepted = 0
        for n in range(500):
            accepted += writer.submit({"request_id": f"a{task}-{n}"})
            if n % 50 == 0:
                await asyncio.sleep(0)  # let the other producers interleave
        return accepted

    accepted = await asyncio.gather(*(producer(t) for t in range(20)))
    assert sum(accepted) == 10_000
    assert await asyncio.to_thread(writer.close, WAIT)
    assert writer.written == 10_000


def test_an_unwritable_path_is_counted_and_recovers(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """A directory that cannot exist (a file is in the way): records dropped, errors counted,
    one log line per ~10 s; once the obstacle goes, writing resumes on its own."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with capture_logs() as logs:
        writer = make(writers, blocker / "diffs")
        writer.start()
        for batch in range(3):
            for n in range(4):
                assert writer.submit(record(f"lost-{batch}-{n}"))
            assert writer.flush(WAIT)
        assert writer.running
        assert (writer.written, writer.dropped, writer.errors) == (0, 12, 3)
        failures = [e for e in logs if e["event"] == "diff_log_write_failed"]
        assert len(failures) == 1  # rate-limited
        assert failures[0]["errno"] == "ENOTDIR"
        assert failures[0]["log_level"] == "warning"

        blocker.unlink()
        for n in range(5):
            writer.submit(record(f"kept-{n}"))
        assert writer.flush(WAIT)
        assert writer.written == 5
        assert writer.close(WAIT)
    lines = read_lines(blocker / "diffs" / "diffs-i1.jsonl")
    assert [line["request_id"] for line in lines] == [f"kept-{n}" for n in range(5)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full for ENOSPC")
def test_a_full_disk_is_counted_and_recovers(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """ENOSPC (the active file is /dev/full) drops the batch; a writable file brings writes back."""
    active = tmp_path / "diffs-i1.jsonl"
    active.symlink_to("/dev/full")
    with capture_logs() as logs:
        writer = make(writers, tmp_path)
        writer.start()
        writer.submit(record("lost"))
        assert writer.flush(WAIT)
        assert (writer.written, writer.dropped, writer.errors) == (0, 1, 1)
        assert [e["errno"] for e in logs if e["event"] == "diff_log_write_failed"] == ["ENOSPC"]
        active.unlink()
        writer.submit(record("kept"))
        assert writer.flush(WAIT)
        assert writer.close(WAIT)
    assert [r["request_id"] for r in read_lines(active)] == ["kept"]
    assert (writer.written, writer.dropped, writer.errors) == (1, 1, 1)


def test_a_file_removed_underneath_is_recreated(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """Someone deletes the active file: the next batch goes to a new file, not to the void."""
    writer = make(writers, tmp_path)
    writer.start()
    writer.submit(record("before"))
    assert writer.flush(WAIT)
    (tmp_path / "diffs-i1.jsonl").unlink()
    writer.submit(record("after"))
    assert writer.flush(WAIT)
    assert writer.close(WAIT)
    assert [r["request_id"] for r in read_lines(tmp_path / "diffs-i1.jsonl")] == ["after"]
    assert writer.errors == 0


def test_a_cut_line_is_ended_before_appending(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """A line cut short by a crash stays one unreadable line; the next record is intact."""
    active = tmp_path / "diffs-i1.jsonl"
    active.write_bytes(orjson.dumps(record("old")) + b"\n" + b'{"ts":"2026-11-23T10:0')
    writer = make(writers, tmp_path)
    writer.start()
    writer.submit(record("new"))
    assert writer.close(WAIT)
    reader = LogReader(tmp_path)
    assert [r["request_id"] for r in reader] == ["old", "new"]
    assert reader.unreadable == 1


def test_close_drains_the_queue(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """Everything queued when close is called is written within the timeout."""
    writer = make(writers, tmp_path, queue_size=50_000)
    for n in range(20_000):  # queued before the thread even runs
        assert writer.submit({"request_id": f"r{n}"})
    writer.start()
    assert writer.close(WAIT)
    assert writer.written == 20_000 and writer.dropped == 0 and writer.queued == 0
    assert len(read_lines(tmp_path / "diffs-i1.jsonl")) == 20_000
    assert not writer.submit(record("late"))
    assert writer.dropped == 1


def test_a_full_queue_refuses_and_counts(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """Beyond queue_size, submit says no and counts a drop; what was accepted is still written."""
    writer = make(writers, tmp_path, queue_size=10)
    results = [writer.submit({"request_id": f"r{n}"}) for n in range(15)]
    assert results == [True] * 10 + [False] * 5
    assert (writer.queued, writer.dropped) == (10, 5)
    writer.start()
    assert writer.close(WAIT)
    assert writer.written == 10


def test_an_unserialisable_record_is_dropped_alone(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """A record orjson cannot write (a cycle) is dropped and counted; the others are written."""
    cyclic: dict[str, Any] = {"request_id": "cycle"}
    cyclic["self"] = cyclic
    writer = make(writers, tmp_path)
    writer.submit(record("a"))
    assert not writer.submit(cyclic)  # refused at once: records are serialised by submit
    writer.submit(record("b", extra={1, 2}, where=tmp_path))  # sets and paths become JSON
    writer.start()
    assert writer.close(WAIT)
    lines = read_lines(tmp_path / "diffs-i1.jsonl")
    assert [line["request_id"] for line in lines] == ["a", "b"]
    assert lines[1]["extra"] == [1, 2] and lines[1]["where"] == str(tmp_path)
    assert (writer.written, writer.dropped) == (2, 1)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_submit_stays_fast_while_the_writer_is_stuck(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """The active file is a FIFO nobody reads: the writer thread blocks opening it, and
    submit keeps returning at once (accepting up to queue_size, then refusing)."""
    active = tmp_path / "diffs-i1.jsonl"
    os.mkfifo(active)
    picked = threading.Event()
    writer = make(writers, tmp_path, queue_size=100, flush_interval=0.01)
    writer._before_write = picked.set
    writer.start()
    writer.submit({"request_id": "first"})
    assert picked.wait(WAIT)  # the thread has the first batch and is on its way to blocking

    started = time.perf_counter()
    results = [writer.submit({"request_id": f"r{n}"}) for n in range(5000)]
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"5000 submits took {elapsed:.3f}s"
    assert sum(results) == 100 and writer.dropped == 4900
    assert writer.written == 0 and writer.running

    reader_fd = os.open(active, os.O_RDONLY | os.O_NONBLOCK)  # unblocks the writer's open
    try:
        assert writer.close(WAIT)
        data = b""
        while chunk := os.read(reader_fd, 1 << 16):
            data += chunk
    finally:
        os.close(reader_fd)
    ids = [orjson.loads(line)["request_id"] for line in data.splitlines()]
    assert ids == ["first"] + [f"r{n}" for n in range(100)]
    assert writer.written == 101


def test_close_gives_up_on_a_stuck_writer(tmp_path: Path, writers: list[DiffLogWriter]) -> None:
    """A writer blocked in I/O: close returns False after its timeout instead of hanging."""
    release = threading.Event()
    picked = threading.Event()

    def stuck() -> None:
        picked.set()
        release.wait(WAIT)

    writer = make(writers, tmp_path, flush_interval=0.01)
    writer._before_write = stuck
    writer.start()
    writer.submit(record("one"))
    assert picked.wait(WAIT)
    writer.submit(record("two"))
    started = time.perf_counter()
    assert writer.close(0.1) is False
    assert time.perf_counter() - started < 2.0
    release.set()
    assert writer._thread is not None
    writer._thread.join(WAIT)
    assert writer.written == 1 and writer.dropped == 1  # "two" was past the deadline


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="instance id"):
        DiffLogWriter(tmp_path, instance="../x", max_size=10, keep=1)
    with pytest.raises(ValueError):
        DiffLogWriter(tmp_path, instance="x", max_size=0, keep=1)


def test_an_unexpected_error_costs_one_batch_not_the_thread(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """Whatever goes wrong in a batch, the thread lives on and the next batch is written."""
    failures = iter([RuntimeError("bug")])

    def fail_once() -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    writer = make(writers, tmp_path)
    writer._before_write = fail_once
    writer.start()
    writer.submit(record("lost"))
    assert writer.flush(WAIT)
    writer.submit(record("kept"))
    assert writer.flush(WAIT)
    assert writer.running
    assert writer.close(WAIT)
    assert (writer.written, writer.dropped, writer.errors) == (1, 1, 1)
    assert [r["request_id"] for r in read_lines(tmp_path / "diffs-i1.jsonl")] == ["kept"]


def test_a_record_is_written_as_it_was_when_submitted(
    tmp_path: Path, writers: list[DiffLogWriter]
) -> None:
    """submit serialises (the writer thread only writes bytes, so it hardly holds the GIL the
    event loop needs): a record changed afterwards is written as it was."""
    writer = make(writers, tmp_path)
    changing = record("then")
    assert writer.submit(changing)
    changing["request_id"] = "later"
    writer.start()
    assert writer.close(WAIT)
    assert [line["request_id"] for line in read_lines(tmp_path / "diffs-i1.jsonl")] == ["then"]
