"""Deterministic seed data: the same customers on both platforms, as if bulk-migrated earlier.

One logical data set is drawn from a seeded RNG and rendered twice, once per platform schema, so
the two platforms agree record for record except for (a) schema differences and (b) a short,
listed set of deliberate discrepancies on the new platform (a migration is never perfect, and the
demo's shadow comparison should have something real to find). No I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from proxy.demo.schema import CHANNELS, Record, new_time, old_time

DEFAULT_SEED = 42
DEFAULT_CUSTOMERS = 300
FIRST_CONTACT_ID = 1001
FIRST_TICKET_ID = 5001
FIRST_COMMENT_ID = 1
DEMO_NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
"""Seeded timestamps lie before this moment; writes made while running use the real clock."""

BALANCE_SHARE = 0.03
POSTCODE_SHARE = 0.02
MISSING_COMMENTS = 2

IdPair = tuple[str, int, str]
DiscrepancyKind = Literal["balance", "postcode", "missing_comment"]


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """A difference seeded on purpose on the new platform.

    `field` is the path in the old schema (the contract clients speak). For `missing_comment`,
    `old_value` is the old id of the comment the new platform lacks and `new_value` is None.
    """

    kind: DiscrepancyKind
    resource: Literal["contact", "ticket"]
    old_id: int
    new_id: str
    field: str
    old_value: object
    new_value: object


@dataclass(frozen=True, slots=True)
class SeedData:
    """Both platforms' records (in their own schemas), the id correspondence and the discrepancies.

    The record dicts are templates: each platform's store copies them.
    """

    old_contacts: list[Record] = field(default_factory=list)
    old_tickets: list[Record] = field(default_factory=list)
    new_contacts: list[Record] = field(default_factory=list)
    new_tickets: list[Record] = field(default_factory=list)
    id_map: list[IdPair] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _City:
    name: str
    area: str  # dialling code without the trunk 0
    local: Callable[[int], tuple[str, ...]]  # subscriber digits, grouped as people write them
    districts: tuple[str, ...]


# Ofcom's ranges reserved for drama: realistic numbers that reach nobody.
_CITIES = (
    _City("London", "20", lambda n: ("7946", f"0{n:03d}"), ("EC1A", "N1", "SE1", "SW1A", "W1D")),
    _City("Manchester", "161", lambda n: ("496", f"0{n:03d}"), ("M1", "M4", "M14", "M20")),
    _City("Leeds", "113", lambda n: ("496", f"0{n:03d}"), ("LS1", "LS6", "LS11")),
    _City("Bristol", "117", lambda n: ("496", f"0{n:03d}"), ("BS1", "BS6", "BS8")),
    _City("Edinburgh", "131", lambda n: ("496", f"0{n:03d}"), ("EH1", "EH3", "EH10")),
    _City("Cardiff", "29", lambda n: ("2018", f"0{n:03d}"), ("CF10", "CF11", "CF24")),
)
_MOBILE_AREA = "7700"
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"

_FIRST_NAMES = (
    "Ada", "Alan", "Grace", "Amara", "Bilal", "Chen", "Chloé", "Dafydd", "Priya", "Eilidh",
    "Femi", "Hannah", "Ibrahim", "Jakub", "Joanna", "Kwame", "Leila", "Liam", "Mei", "Mohammed",
    "Niamh", "Oliver", "Olumide", "Rhys", "Rosa", "Saoirse", "Sanjay", "Siobhán", "Tomasz",
    "Yusuf", "Zoë", "Ana", "Björn", "Catriona", "Dev", "Emeka", "Fatima", "Gareth", "Hiroshi",
    "Isla", "José", "Keira", "Lars", "Maya", "Noah", "Owen", "Parveen", "Ravi", "Sofia", "Tariq",
)  # fmt: skip
_LAST_NAMES = (
    "Lovelace", "Turing", "Hopper", "Okafor", "Khan", "Wei", "Dubois", "Jones", "Patel",
    "MacLeod", "Adeyemi", "Schmidt", "Hussain", "Nowak", "Kowalska", "Mensah", "Haddad",
    "O'Brien", "Zhang", "Ali", "Gallagher", "Smith", "Williams", "Evans", "Álvarez", "Murphy",
    "Sharma", "Ní Bhriain", "Wiśniewski", "Demir", "Müller", "Santos", "Lindqvist", "Campbell",
    "Chopra", "Eze", "Rahman", "Hughes", "Tanaka", "Stewart", "García", "Byrne", "Andersen",
    "Cohen", "Brown", "Price", "Begum", "Reddy", "Rossi", "Aziz",
)  # fmt: skip
_STREETS = (
    "High Street", "Station Road", "Church Lane", "Victoria Road", "Green Lane", "Manor Road",
    "Park Avenue", "Queen Street", "King Street", "Mill Lane", "Baker Street", "Market Place",
    "Albert Road", "The Crescent", "Orchard Close", "Riverside Walk", "Chapel Street",
)  # fmt: skip
_DOMAINS = ("example.com", "example.org", "example.net")
_SUBJECTS = (
    "Invoice shows the wrong amount", "Cannot log in to my account", "Parcel not delivered",
    "Request to close account", "Change of address", "Refund not received",
    "Charged twice for one order", "Broken item received", "Question about my contract",
    "Update payment details", "Upgrade my plan", "Complaint about a call",
    "Password reset e-mail never arrives", "Cancel direct debit", "Missing loyalty points",
    "Appointment needs rescheduling", "Wrong item in order", "Data protection request",
)  # fmt: skip
_BODIES = (
    "Hello, I still have not heard back about this.", "Thanks, that works now.",
    "Could you please call me back tomorrow morning?", "I have attached the receipt.",
    "We have escalated this to the billing team.", "The refund has been issued today.",
    "Sorry for the inconvenience, we are looking into it.", "Is there any update?",
    "Please confirm the new address on file.", "This is the third time I am writing.",
    "We sent a replacement by tracked delivery.", "Closing this as resolved, thanks.",
)  # fmt: skip


@dataclass(slots=True)
class _Phone:
    area: str
    groups: tuple[str, ...]
    style: int

    def national(self) -> str:
        return "0" + self.area

    def human(self) -> str:
        """Free text, the way agents and customers typed it into the old platform."""
        spaced = " ".join(self.groups)
        joined = "".join(self.groups)
        match self.style:
            case 0:
                return f"({self.national()}) {spaced}"
            case 1:
                return f"+44 {self.area} {spaced}"
            case 2:
                return f"{self.national()}-{'-'.join(self.groups)}"
            case 3:
                return f"{self.national()} {spaced}"
            case 4:
                return f"{self.national()}{joined}"
            case 5:
                return f"+44 (0){self.area} {spaced}"
            case _:
                return f"0044 {self.area} {spaced}"

    def e164(self) -> str:
        return "+44" + self.area + "".join(self.groups)


_PHONE_STYLES = 7


@dataclass(slots=True)
class _Comment:
    old_id: int
    new_id: str
    author: str
    body: str
    at: datetime


@dataclass(slots=True)
class _Ticket:
    old_id: int
    new_id: str
    subject: str
    closed: bool
    priority: str
    created: datetime
    updated: datetime
    comments: list[_Comment]


@dataclass(slots=True)
class _Contact:
    old_id: int
    new_id: str
    customer: str
    name: str
    email: str | None
    phone: _Phone | None
    closed: bool
    balance: float
    segment: str
    channel: str
    street: str
    city: str
    postcode: str
    updated: datetime
    tickets: list[_Ticket]


def new_style_id(prefix: str, seed: int, kind: str, number: int, taken: set[str]) -> str:
    """A new-platform id: opaque, stable for a seed, and not derivable from the old id by eye."""
    salt = 0
    while True:
        material = f"{seed}/{kind}/{number}/{salt}".encode()
        digest = hashlib.blake2b(material, digest_size=8).digest()
        candidate = f"{prefix}-{base64.b32encode(digest).decode()[:6]}"
        if candidate not in taken:
            taken.add(candidate)
            return candidate
        salt += 1


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded if ch.isalnum())


def _email(rng: random.Random, first: str, last: str) -> str:
    f, la = _ascii(first), _ascii(last)
    domain = rng.choice(_DOMAINS)
    match rng.randrange(4):
        case 0:
            return f"{f}.{la}@{domain}"
        case 1:
            return f"{f.lower()}.{la.lower()}@{domain}"
        case 2:
            return f"{f[0]}{la}@{domain.capitalize()}"
        case _:
            return f"{f.lower()}_{la.lower()}{rng.randrange(10, 99)}@{domain}"


def _postcode(rng: random.Random, city: _City) -> str:
    district = rng.choice(city.districts)
    letters = "".join(rng.choice(_INWARD_LETTERS) for _ in range(2))
    return f"{district} {rng.randrange(1, 10)}{letters}"


def _before(rng: random.Random, moment: datetime, max_days: int) -> datetime:
    return moment - timedelta(seconds=rng.randrange(3600, max_days * 86400))


def _draw(seed: int, customers: int) -> list[_Contact]:
    rng = random.Random(seed)  # noqa: S311 - seeded on purpose: the data must repeat
    taken: set[str] = set()
    contacts: list[_Contact] = []
    ticket_no = FIRST_TICKET_ID
    comment_no = FIRST_COMMENT_ID
    for index in range(customers):
        old_id = FIRST_CONTACT_ID + index
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        city = rng.choice(_CITIES)
        phone: _Phone | None = None
        if rng.random() >= 0.04:
            number = rng.randrange(1000)
            if rng.random() < 0.35:
                phone = _Phone(_MOBILE_AREA, (f"900{number:03d}",), rng.randrange(_PHONE_STYLES))
            else:
                phone = _Phone(city.area, city.local(number), rng.randrange(_PHONE_STYLES))
        email = _email(rng, first, last) if rng.random() >= 0.02 else None
        roll = rng.random()
        balance = 0.0 if roll < 0.4 else round(rng.uniform(0.5, 950.0), 2)
        if roll > 0.95:
            balance = -round(rng.uniform(1.0, 50.0), 2)
        contact = _Contact(
            old_id=old_id,
            new_id=new_style_id("CT", seed, "contact", old_id, taken),
            customer=f"C-{old_id}",
            name=f"{first} {last}",
            email=email,
            phone=phone,
            closed=rng.random() < 0.15,
            balance=balance,
            segment="business" if rng.random() < 0.3 else "consumer",
            channel=rng.choices(CHANNELS, weights=(30, 25, 20, 15, 10))[0],
            street=f"{rng.randrange(1, 240)} {rng.choice(_STREETS)}",
            city=city.name,
            postcode=_postcode(rng, city),
            updated=_before(rng, DEMO_NOW, 400),
            tickets=[],
        )
        if rng.random() < 0.55:
            for _ in range(rng.randint(1, 3)):
                created = _before(rng, DEMO_NOW, 200)
                moment = created
                comments: list[_Comment] = []
                for position in range(rng.randint(0, 3)):
                    moment += timedelta(minutes=rng.randrange(5, 3000))
                    comments.append(
                        _Comment(
                            old_id=comment_no,
                            new_id=new_style_id("CM", seed, "comment", comment_no, taken),
                            author="customer" if position % 2 == 0 else "agent",
                            body=rng.choice(_BODIES),
                            at=moment,
                        )
                    )
                    comment_no += 1
                contact.tickets.append(
                    _Ticket(
                        old_id=ticket_no,
                        new_id=new_style_id("TK", seed, "ticket", ticket_no, taken),
                        subject=rng.choice(_SUBJECTS),
                        closed=rng.random() < 0.4,
                        priority=rng.choices(("low", "normal", "high"), weights=(30, 55, 15))[0],
                        created=created,
                        updated=moment + timedelta(minutes=rng.randrange(1, 120)),
                        comments=comments,
                    )
                )
                ticket_no += 1
        contacts.append(contact)
    return contacts


def _old_contact(c: _Contact) -> Record:
    return {
        "id": c.old_id,
        "customer": c.customer,
        "full_name": c.name,
        "email": c.email,
        "phone": c.phone.human() if c.phone else None,
        "status": "closed" if c.closed else "open",
        "balance": c.balance,
        "segment": c.segment,
        "channel": c.channel,
        "address": {"street": c.street, "city": c.city, "postcode": c.postcode},
        "updated_at": old_time(c.updated),
    }


def _new_contact(c: _Contact) -> Record:
    return {
        "id": c.new_id,
        "customer": c.customer,
        "name": c.name,
        "email": c.email.lower() if c.email else None,
        "phone_e164": c.phone.e164() if c.phone else None,
        "status": "RESOLVED" if c.closed else "OPEN",
        "balance": c.balance,
        "segment": c.segment,
        "preferred_channel": c.channel,
        "location": {"street": c.street, "city": c.city, "postal_code": c.postcode},
        "updated_at": new_time(c.updated),
    }


def _old_ticket(c: _Contact, t: _Ticket) -> Record:
    return {
        "id": t.old_id,
        "contact_id": c.old_id,
        "subject": t.subject,
        "status": "closed" if t.closed else "open",
        "priority": t.priority,
        "comments": [
            {"id": m.old_id, "author": m.author, "body": m.body, "created_at": old_time(m.at)}
            for m in t.comments
        ],
        "created_at": old_time(t.created),
        "updated_at": old_time(t.updated),
    }


def _new_ticket(c: _Contact, t: _Ticket, skip: frozenset[int]) -> Record:
    return {
        "id": t.new_id,
        "contact": c.new_id,
        "title": t.subject,
        "state": "RESOLVED" if t.closed else "OPEN",
        "priority": t.priority.upper(),
        "comments": [
            {"id": m.new_id, "author": m.author, "text": m.body, "created_at": new_time(m.at)}
            for m in t.comments
            if m.old_id not in skip
        ],
        "created_at": new_time(t.created),
        "updated_at": new_time(t.updated),
    }


def _share(customers: int, share: float) -> int:
    return max(1, round(customers * share)) if customers else 0


def generate(
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
    *,
    discrepancies: bool = True,
) -> SeedData:
    """Both platforms' seed records for `customers` customers (C-1001 onwards)."""
    if customers < 0:
        raise ValueError("customers must not be negative")
    contacts = _draw(seed, customers)
    # A separate stream, so switching discrepancies off leaves every other value unchanged.
    rng = random.Random(f"{seed}/discrepancies")  # noqa: S311 - same reason
    found: list[Discrepancy] = []
    new_balance: dict[int, float] = {}
    new_postcode: dict[int, str] = {}
    skip: set[int] = set()
    if discrepancies and contacts:
        order = rng.sample(contacts, len(contacts))
        n_balance = min(_share(customers, BALANCE_SHARE), len(order))
        n_postcode = min(_share(customers, POSTCODE_SHARE), len(order) - n_balance)
        for c in order[:n_balance]:
            delta = rng.randint(1, 200) / 100 * rng.choice((-1, 1))
            new_balance[c.old_id] = round(c.balance + delta, 2)
            found.append(
                Discrepancy(
                    "balance",
                    "contact",
                    c.old_id,
                    c.new_id,
                    "balance",
                    c.balance,
                    new_balance[c.old_id],
                )
            )
        for c in order[n_balance : n_balance + n_postcode]:
            city = next(city for city in _CITIES if city.name == c.city)
            other = c.postcode
            while other == c.postcode:
                other = _postcode(rng, city)
            new_postcode[c.old_id] = other
            found.append(
                Discrepancy(
                    "postcode",
                    "contact",
                    c.old_id,
                    c.new_id,
                    "address.postcode",
                    c.postcode,
                    other,
                )
            )
        commented = [(c, t) for c in contacts for t in c.tickets if t.comments]
        for _, t in rng.sample(commented, min(MISSING_COMMENTS, len(commented))):
            missing = t.comments[-1]
            skip.add(missing.old_id)
            found.append(
                Discrepancy(
                    "missing_comment",
                    "ticket",
                    t.old_id,
                    t.new_id,
                    "comments",
                    missing.old_id,
                    None,
                )
            )
    data = SeedData(discrepancies=sorted(found, key=lambda d: (d.kind, d.old_id)))
    frozen_skip = frozenset(skip)
    for c in contacts:
        data.old_contacts.append(_old_contact(c))
        record = _new_contact(c)
        record["balance"] = new_balance.get(c.old_id, record["balance"])
        record["location"]["postal_code"] = new_postcode.get(c.old_id, c.postcode)
        data.new_contacts.append(record)
        data.id_map.append(("contact", c.old_id, c.new_id))
        for t in c.tickets:
            data.old_tickets.append(_old_ticket(c, t))
            data.new_tickets.append(_new_ticket(c, t, frozen_skip))
            data.id_map.append(("ticket", t.old_id, t.new_id))
            data.id_map.extend(
                ("comment", m.old_id, m.new_id) for m in t.comments if m.old_id not in frozen_skip
            )
    return data
