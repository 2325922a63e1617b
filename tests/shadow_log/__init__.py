"""Diff log tests: the writer, the reader and its filters, the summary and `cutover diff`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def record(request_id: str = "r1", **fields: Any) -> dict[str, Any]:
    """A diff record in the documented shape; `fields` replace the defaults."""
    base: dict[str, Any] = {
        "ts": "2026-11-23T10:00:00.000Z",
        "kind": "shadow",
        "request_id": request_id,
        "route": "contacts",
        "channel": "chat",
        "cohort": "pilot",
        "customer": "sha256:0000000000000000",
        "method": "GET",
        "path": "/api/contacts/42",
        "query": "customer=***",
        "primary": "old",
        "status": {"old": 200, "new": 200},
        "latency_ms": {"old": 10.0, "new": 20.0},
        "result": "match",
        "match": True,
        "mode": "json",
        "differences": [],
        "noise": [],
        "error": None,
    }
    base.update(fields)
    if "result" in fields and "match" not in fields:
        base["match"] = fields["result"] == "match"
    return base


def diff(path: str, kind: str = "changed", old: Any = "a", new: Any = "b") -> dict[str, Any]:
    return {"path": path, "kind": kind, "old": old, "new": new}


def write_log(path: Path, records: list[dict[str, Any]], extra: bytes = b"") -> Path:
    """Records as JSON lines (as the writer writes them), then `extra` raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        for rec in records:
            fh.write(orjson.dumps(rec) + b"\n")
        fh.write(extra)
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
