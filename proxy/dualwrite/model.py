"""The values the outbox and the id map hold. Plain frozen data, serialisable to both stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import orjson

from proxy.config.spec import Side

EntryState = Literal["intent", "ready", "dead"]


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A record named by one of its ids: the side whose id the client used, and that id (text)."""

    resource: str
    side: Side
    id: str


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One write to replay on the secondary, in old-contract terms as the client sent it."""

    route: str
    method: str
    path: str  # the client's path (old contract, with the id the client used)
    query: str
    body: bytes
    content_type: str
    target: Side  # the secondary: where this entry must land
    order_key: str  # the record, by the id it was born with; "" until a create's outcome is known
    record: RecordRef | None  # the record written to; None for a create
    request_id: str
    customer: str | None  # already hashed
    created: float
    idempotency_key: str  # for the secondary; derived from the entry, stable across retries
    primary_key: str  # the Idempotency-Key the primary was sent
    id: str = ""  # the store's id; "" before it is stored
    state: EntryState = "intent"
    primary_id: str | None = None  # for a create: the id the primary gave the record (JSON text)
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    dead_reason: str | None = None

    @property
    def is_create(self) -> bool:
        return self.record is None

    def with_(self, **changes: Any) -> OutboxEntry:
        return replace(self, **changes)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["body"] = self.body.decode("latin-1")
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> OutboxEntry:
        data = orjson.loads(raw)
        data["body"] = data["body"].encode("latin-1")
        record = data.get("record")
        data["record"] = RecordRef(**record) if record else None
        return cls(**data)


@dataclass(frozen=True, slots=True)
class IdEntry:
    """One record's ids on both platforms. Ids are kept as JSON text, so `1001` stays an integer
    and `"CT-7K2M9Q"` a string when written back into a body."""

    resource: str
    old: str | None  # JSON text, e.g. "1001" or "\"CT-1\""
    new: str | None
    origin: Side  # the side the record was born on
    deleted: bool = False

    def id_on(self, side: Side) -> str | None:
        return self.old if side == "old" else self.new

    def value_on(self, side: Side) -> Any:
        text = self.id_on(side)
        return None if text is None else orjson.loads(text)

    @property
    def both(self) -> bool:
        return self.old is not None and self.new is not None

    @property
    def only_on(self) -> Side | None:
        """The side holding the record when it exists on one platform only."""
        if self.both:
            return None
        return "old" if self.old is not None else "new"

    @property
    def order_key(self) -> str:
        born = self.old if self.origin == "old" else self.new
        return order_key(self.resource, self.origin, key_text(born))


def key_text(json_text: str | None) -> str:
    """The lookup form of an id: `1001` and `"1001"` both look up as 1001 (paths carry text)."""
    if json_text is None:
        return ""
    value = orjson.loads(json_text)
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def id_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def order_key(resource: str, side: str, ident: str) -> str:
    return f"{resource}:{side}:{ident}"


@dataclass(frozen=True, slots=True)
class OutboxStats:
    ready: int = 0
    intents: int = 0
    dead: int = 0
    oldest_age_s: float | None = None
    by_target: dict[str, int] = field(default_factory=dict)
