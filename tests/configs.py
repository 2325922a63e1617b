"""Building routes.yaml documents in tests: a valid base, changed per test."""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson

from proxy.config import RouteTable, parse_config

REPO = Path(__file__).resolve().parent.parent


def scratch_dir() -> str:
    """A state folder outside the repository (in-process tests never write it), removed when
    the test run ends so that runs do not pile folders up in /tmp."""
    path = tempfile.mkdtemp(prefix="cutover-test-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def base_doc(
    old: str = "http://127.0.0.1:9001",
    new: str = "http://127.0.0.1:9101",
    old_ticketing: str = "http://127.0.0.1:9002",
    new_ticketing: str = "http://127.0.0.1:9102",
) -> dict[str, Any]:
    state = scratch_dir()
    return {
        "version": 1,
        "migration": "crm-2026",
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "store": f"sqlite:///{state}/cutover.db",
        "state_dir": state,
        "diff_log": {"dir": f"{state}/diffs"},
        "platforms": {
            "old": {"crm": {"url": old}, "ticketing": {"url": old_ticketing}},
            "new": {"crm": {"url": new}, "ticketing": {"url": new_ticketing}},
        },
        "channels": ["phone", "email", "chat", "whatsapp", "web"],
        "identify": {
            "channel": {"header": "X-Channel", "default": "web"},
            "customer": {"header": "X-Customer-Id"},
        },
        "cohorts": [
            {"name": "pilot", "customers": ["C-1001", "C-1002"]},
            {"name": "business", "header": {"X-Segment": "business"}},
            {"name": "everyone"},
        ],
        "routes": [
            {
                "name": "contacts",
                "api": "crm",
                "path": "/api/contacts",
                "weights": {"default": 0, "chat": {"default": 10, "pilot": 100}},
            },
            {
                "name": "tickets",
                "api": "ticketing",
                "path": "/api/tickets",
                "weights": {"default": 0},
            },
        ],
    }


def dump(doc: dict[str, Any]) -> bytes:
    """JSON is YAML 1.2: the loader reads it like any routes.yaml."""
    return orjson.dumps(doc)


def load(doc: dict[str, Any], env: dict[str, str] | None = None) -> RouteTable:
    return parse_config(dump(doc), source="test.yaml", env=env or {})


def with_changes(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.update(changes)
    return out


def demo_doc(sims: Any) -> dict[str, Any]:
    """The repository's routes.yaml as a document, pointed at simulators on free ports."""
    from ruamel.yaml import YAML

    doc: dict[str, Any] = orjson.loads(orjson.dumps(YAML(typ="safe").load(REPO / "routes.yaml")))
    for side, api, app in sims.upstreams():
        doc["platforms"][side][api]["url"] = app.url
    doc["listen"] = "127.0.0.1:0"
    doc["admin"] = {"listen": "127.0.0.1:0"}
    # a store of its own: in-process tests must never write into the repository
    state = scratch_dir()
    doc["store"] = f"sqlite:///{state}/cutover.db"
    doc["state_dir"] = state
    doc["diff_log"] = {"dir": f"{state}/diffs"}
    return doc
