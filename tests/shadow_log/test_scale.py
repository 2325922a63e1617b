"""A 200 MB diff log is summarised in bounded memory (tracemalloc peak) and reasonable time."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import orjson

from shadow.logread import LogReader
from shadow.report import Summary
from tests.shadow_log import diff, record

TARGET = 200 * 1000 * 1000


def generate(directory: Path) -> int:
    """~200 MB over a rotated file and an active one; 7 000 distinct keys on one route."""
    directory.mkdir()
    note = "n" * 1500  # bodies make lines ~2 KB, like real CRM records
    written = 0
    n = 0
    files = [directory / "diffs-i1-20261123T100000.000000.jsonl", directory / "diffs-i1.jsonl"]
    for index, path in enumerate(files):
        with path.open("wb") as fh:
            chunk: list[bytes] = []
            while written < TARGET * (index + 1) // len(files):
                route = ("contacts", "tickets", "attachments")[n % 3]
                differences = [diff(f"$.comments[{n % 40}].body", "missing", old="***", new=None)]
                if route == "contacts":
                    differences.append(diff(f"$.attrs.k{n % 7000}"))  # beyond the 5 000 cap
                rec = record(
                    f"r{n}",
                    ts=f"2026-11-23T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
                    route=route,
                    channel=("chat", "email", "phone", "web")[n % 4],
                    latency_ms={"old": 5.0 + n % 50, "new": 9.0 + n % 70},
                    result="mismatch" if n % 5 else "match",
                    differences=differences if n % 5 else [],
                    noise=[diff("$.etag")],
                    bodies={"old": {"id": n, "note": note}, "new": {"id": n, "note": note}},
                )
                line = orjson.dumps(rec) + b"\n"
                chunk.append(line)
                written += len(line)
                n += 1
                if len(chunk) == 2000:
                    fh.write(b"".join(chunk))
                    chunk = []
            fh.write(b"".join(chunk))
    with files[-1].open("ab") as fh:
        fh.write(b'not json at all\n{"truncated": ')
    return n


def test_a_200mb_log_in_bounded_memory(tmp_path: Path) -> None:
    count = generate(tmp_path / "diffs")
    started = time.perf_counter()
    tracemalloc.start()
    try:
        reader = LogReader(tmp_path / "diffs")
        report = Summary().add_all(reader).report()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started

    assert reader.total_bytes > TARGET
    assert reader.bytes_read == reader.total_bytes
    assert reader.unreadable == 2
    assert report["totals"]["exchanges"] == count
    contacts = next(r for r in report["routes"] if r["route"] == "contacts")
    assert contacts["paths_total"] == 5000
    assert contacts["paths_untracked"]["differences"] > 0
    assert contacts["paths"][0]["path"] == "$.comments[*].body"
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert elapsed < 60, f"{elapsed:.1f}s"
