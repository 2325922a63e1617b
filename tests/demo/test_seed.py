"""Seed data: deterministic, varied, and the same logical records on both platforms."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime

import pytest

from proxy.demo.schema import CHANNELS
from proxy.demo.seed import Discrepancy, SeedData, generate

NEW_ID = re.compile(r"^(CT|TK|CM)-[A-Z2-7]{6}$")


def e164(human: str) -> str:
    """How a QA engineer would read the old platform's free-text phone."""
    text = human.replace("(0)", "").strip()
    digits = re.sub(r"\D", "", text)
    if text.startswith("+"):
        return "+" + digits
    if digits.startswith("0044"):
        return "+" + digits[2:]
    return "+44" + digits[1:]


def same_instant(old: str, new: str) -> bool:
    return datetime.fromisoformat(old) == datetime.fromisoformat(new)


@pytest.fixture(scope="module")
def data() -> SeedData:
    return generate(42, 300)


def test_same_seed_same_data_other_seed_other_data(data: SeedData) -> None:
    """A seed fully determines the data; another seed draws other customers."""
    assert generate(42, 300) == data
    other = generate(7, 300)
    assert other.old_contacts != data.old_contacts
    assert [c["customer"] for c in other.old_contacts] == [c["customer"] for c in data.old_contacts]


def test_customers_are_numbered_and_varied(data: SeedData) -> None:
    """C-1001 onwards, across all channels and segments, some closed, phones in many formats."""
    contacts = data.old_contacts
    assert [c["customer"] for c in contacts] == [f"C-{1001 + i}" for i in range(300)]
    assert [c["id"] for c in contacts] == list(range(1001, 1301))
    assert set(Counter(c["channel"] for c in contacts)) == set(CHANNELS)
    assert {c["segment"] for c in contacts} == {"business", "consumer"}
    closed = sum(c["status"] == "closed" for c in contacts)
    assert 10 < closed < 100
    phones = [c["phone"] for c in contacts if c["phone"]]
    shapes = {re.sub(r"\d", "9", phone) for phone in phones}
    assert len(shapes) >= 8
    assert any(p.startswith("(0") for p in phones)
    assert any(p.startswith("+44 ") for p in phones)
    assert any("-" in p for p in phones)
    assert any(c["email"] and c["email"] != c["email"].lower() for c in contacts)
    with_tickets = {t["contact_id"] for t in data.old_tickets}
    assert 100 < len(with_tickets) < 250
    per_contact = Counter(t["contact_id"] for t in data.old_tickets)
    assert set(per_contact.values()) <= {1, 2, 3}
    assert {len(t["comments"]) for t in data.old_tickets} == {0, 1, 2, 3}


def test_new_ids_are_opaque_and_unique(data: SeedData) -> None:
    """New ids look like CT-XXXXXX, never repeat, and differ per seed."""
    new_ids = [new for _, _, new in data.id_map]
    assert all(NEW_ID.match(ident) for ident in new_ids)
    assert len(set(new_ids)) == len(new_ids)
    assert generate(43, 5).id_map[0][2] != generate(42, 5).id_map[0][2]


def test_seeded_discrepancies(data: SeedData) -> None:
    """3 % balances, 2 % postcodes, two missing comments; none when switched off."""
    kinds = Counter(d.kind for d in data.discrepancies)
    assert kinds == {"balance": 9, "postcode": 6, "missing_comment": 2}
    for d in data.discrepancies:
        if d.kind == "balance":
            assert isinstance(d.old_value, float) and isinstance(d.new_value, float)
            assert 0.01 <= round(abs(d.new_value - d.old_value), 2) <= 2.0
    contacts = [(d.kind, d.old_id) for d in data.discrepancies if d.resource == "contact"]
    assert len({old for _, old in contacts}) == len(contacts)
    clean = generate(42, 300, discrepancies=False)
    assert clean.discrepancies == []
    assert clean.old_contacts == data.old_contacts
    assert generate(42, 0).discrepancies == []


def test_both_platforms_hold_the_same_logical_records(data: SeedData) -> None:
    """Through the id map, every seeded record agrees except for the listed discrepancies."""
    old_contacts = {c["id"]: c for c in data.old_contacts}
    new_contacts = {c["id"]: c for c in data.new_contacts}
    old_tickets = {t["id"]: t for t in data.old_tickets}
    new_tickets = {t["id"]: t for t in data.new_tickets}
    to_new = {(kind, old): new for kind, old, new in data.id_map}
    expected: dict[tuple[str, int], Discrepancy] = {
        (d.field, d.old_id): d for d in data.discrepancies
    }
    assert len(old_contacts) == len(new_contacts) == 300
    assert len(old_tickets) == len(new_tickets)
    found: set[tuple[str, int]] = set()
    for old_id, old in old_contacts.items():
        new = new_contacts[to_new["contact", old_id]]
        assert new["customer"] == old["customer"]
        assert new["name"] == old["full_name"]
        assert new["email"] == (old["email"].lower() if old["email"] else None)
        assert new["phone_e164"] == (e164(old["phone"]) if old["phone"] else None)
        assert new["status"] == {"open": "OPEN", "closed": "RESOLVED"}[old["status"]]
        assert (new["segment"], new["preferred_channel"]) == (old["segment"], old["channel"])
        assert new["location"]["street"] == old["address"]["street"]
        assert new["location"]["city"] == old["address"]["city"]
        assert same_instant(old["updated_at"], new["updated_at"])
        assert old["updated_at"].endswith("+01:00") and new["updated_at"].endswith("Z")
        for field, old_value, new_value in (
            ("balance", old["balance"], new["balance"]),
            ("address.postcode", old["address"]["postcode"], new["location"]["postal_code"]),
        ):
            if old_value != new_value:
                d = expected[field, old_id]
                assert (d.old_value, d.new_value, d.new_id) == (old_value, new_value, new["id"])
                found.add((field, old_id))
    for old_id, old in old_tickets.items():
        new = new_tickets[to_new["ticket", old_id]]
        assert new["contact"] == to_new["contact", old["contact_id"]]
        assert (new["title"], new["priority"]) == (old["subject"], old["priority"].upper())
        assert new["state"] == {"open": "OPEN", "closed": "RESOLVED"}[old["status"]]
        assert same_instant(old["created_at"], new["created_at"])
        new_comments = {c["id"]: c for c in new["comments"]}
        for comment in old["comments"]:
            new_id = to_new.get(("comment", comment["id"]))
            if new_id is None:
                d = expected["comments", old_id]
                assert d.old_value == comment["id"] and d.new_id == new["id"]
                found.add(("comments", old_id))
                continue
            mirrored = new_comments[new_id]
            assert (mirrored["author"], mirrored["text"]) == (comment["author"], comment["body"])
            assert same_instant(comment["created_at"], mirrored["created_at"])
    assert found == set(expected)
