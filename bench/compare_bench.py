"""Comparisons per second for a ~5 KB CRM contact under the routes.yaml example rules.

    .venv/bin/python bench/compare_bench.py [seconds]

The old and new answers differ the way the demo platforms do: the new side has its own field
names, value spellings, envelope, UTC timestamps, E.164 phones and etags, and one real change,
so every comparison parses both bodies, translates the new one, ignores, normalizes and diffs.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from proxy.config.spec import CompareSpec, ContractSpec
from shadow.compare import Observation, compare
from shadow.contract import compile_contract
from shadow.rules import compile_rules

CONTRACT = compile_contract(
    ContractSpec.model_validate(
        {
            "new_path": "/v2/contacts",
            "collection": {"old": "$.items", "new": "$.data"},
            "envelope": {"$.total": "$.meta.total"},
            "fields": {
                "$.full_name": "$.name",
                "$.phone": "$.phone_e164",
                "$.address": "$.location",
                "$.address.postcode": "$.location.postal_code",
                "$.channel": "$.preferred_channel",
                "$.comments[*].body": "$.comments[*].text",
            },
            "values": {"$.status": {"open": "OPEN", "closed": "RESOLVED"}},
            "defaults": {"$.segment": "consumer"},
            "new_defaults": {"$.origin": "cutover"},
        }
    )
)
RULES = compile_rules(
    CompareSpec.model_validate(
        {
            "headers": ["Content-Type"],
            "ignore": ["$.updated_at", "$.etag", "$.comments[*].created_at"],
            "normalize": {
                "$.phone": "e164:44",
                "$.email": ["trim", "lower"],
                "$.tags": "sort",
                "$.created_at": "iso8601",
            },
            "tolerance": {"$.balance": 0.01},
            "redact": ["$.email", "$.phone"],
            "list_keys": {"$.comments": "id"},
        }
    ),
    CONTRACT,
)


def old_contact() -> dict[str, Any]:
    return {
        "id": 1042,
        "customer": "C-1042",
        "full_name": "Ann Smith",
        "email": "Ann.Smith@Example.com ",
        "phone": "(020) 7946 0018",
        "status": "open",
        "balance": 125.5,
        "segment": "business",
        "channel": "chat",
        "tags": ["vip", "billing", "renewal", "newsletter"],
        "address": {"street": "1 Main Street", "city": "London", "postcode": "N1 9GU"},
        "created_at": "2025-03-01T09:30:00+01:00",
        "updated_at": "2026-11-23T10:00:00+01:00",
        "etag": "9f2c1a0b7d3e4f55",
        "comments": [
            {
                "id": 7000 + i,
                "author": "agent" if i % 2 else "customer",
                "body": f"Comment {i}: the customer asked about invoice {40000 + i} and "
                "whether the renewal discount still applies to the business plan.",
                "created_at": f"2026-11-{10 + i:02d}T08:15:00+01:00",
            }
            for i in range(24)
        ],
    }


def new_answer(old: dict[str, Any]) -> dict[str, Any]:
    new: dict[str, Any] = CONTRACT.body_to_new(old)
    new["email"] = "ann.smith@example.com"
    new["phone_e164"] = "+442079460018"
    new["created_at"] = "2025-03-01T08:30:00Z"
    new["updated_at"] = "2026-11-23T09:00:00Z"
    new["etag"] = "v7-1a2b3c4d"
    new["balance"] = 125.504
    new["tags"] = sorted(new["tags"])
    new["comments"].reverse()
    for comment in new["comments"]:
        comment["created_at"] = comment["created_at"].replace("+01:00", "Z")
    new["comments"][3]["text"] = "edited on the new platform"  # the one real difference
    return new


def observe(doc: Any) -> Observation:
    body = orjson.dumps(doc)
    return Observation(
        status=200,
        headers={"content-type": "application/json"},
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_size=len(body),
        content_type="application/json",
    )


def rate(run: Callable[[], object], seconds: float) -> float:
    for _ in range(200):
        run()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            run()
        done += 100
    return done / elapsed


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    old = old_contact()
    old_obs, new_obs = observe(old), observe(new_answer(copy.deepcopy(old)))
    result = compare(old_obs, new_obs, RULES)
    assert [d.path for d in result.differences] == ["$.comments[20].body"], result.differences
    matching = observe(CONTRACT.body_to_new(copy.deepcopy(old)))
    assert compare(old_obs, matching, RULES).match

    print(f"document: old {old_obs.body_size} bytes, new {new_obs.body_size} bytes")
    plain = compile_rules(CompareSpec())
    figures = {
        "mapped + 1 difference": rate(lambda: compare(old_obs, new_obs, RULES), seconds),
        "mapped, matching": rate(lambda: compare(old_obs, matching, RULES), seconds),
        "byte-identical (no contract)": rate(lambda: compare(old_obs, old_obs, plain), seconds / 3),
    }
    for name, per_second in figures.items():
        print(f"{name:30s} {per_second:10,.0f} comparisons/s  ({1e6 / per_second:7.1f} us each)")


if __name__ == "__main__":
    main()
