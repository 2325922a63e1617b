"""The two platforms' schemas, as tables, and the one validator that reads them.

The old and the new platform disagree on names, value spellings, id formats, envelopes and time
zones on purpose: that is what cutover's contract mapping and shadow comparison exist for. Keeping
each schema as data (not as two sets of handlers) makes the differences easy to read side by side.
No I/O here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Literal

Record = dict[str, Any]
Platform = Literal["old", "new"]
FieldKind = Literal["str", "int", "number", "object"]

OLD_TZ = timezone(timedelta(hours=1), "CET")
"""The old platform's servers render local time (a fixed +01:00, as its data centre does)."""

CHANNELS = ("phone", "email", "chat", "whatsapp", "web")
SEGMENTS = ("business", "consumer")
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def old_time(moment: datetime) -> str:
    """Old platform timestamps: local offset, seconds."""
    return moment.astimezone(OLD_TZ).replace(microsecond=0).isoformat()


def new_time(moment: datetime) -> str:
    """New platform timestamps: UTC with a Z, seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Field:
    """One writable field; `default` is what a create or a full replace leaves when it is absent."""

    name: str
    kind: FieldKind = "str"
    required: bool = False
    nullable: bool = True
    choices: frozenset[str] | None = None
    default: Any = None
    keys: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    lower: bool = False


@dataclass(frozen=True, slots=True)
class Resource:
    """A kind of record on one platform: where it lives, what a client may write, how to filter."""

    kind: Literal["contact", "ticket", "comment"]
    path: str
    fields: tuple[Field, ...]
    read_only: frozenset[str]
    filters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    reference: str | None = None
    """The field naming the contact a record belongs to (checked to exist on writes)."""

    def field_named(self, name: str) -> Field | None:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        return None


@dataclass(frozen=True, slots=True)
class Dialect:
    """Everything that differs between the old and the new platform's API."""

    platform: Platform
    contact: Resource
    ticket: Resource
    comment: Resource
    attachments_path: str
    items_key: str
    id_prefixes: Mapping[str, str]
    """Prefix of string ids by record kind; empty on the old platform, whose ids are integers."""

    def render_time(self, moment: datetime) -> str:
        return old_time(moment) if self.platform == "old" else new_time(moment)

    def envelope(self, items: list[bytes], total: int) -> bytes:
        """A list answer, built from records that are already serialised."""
        body = b",".join(items)
        if self.platform == "old":
            return b'{"items":[' + body + b'],"total":' + str(total).encode() + b"}"
        return b'{"data":[' + body + b'],"meta":{"total":' + str(total).encode() + b"}}"

    def etag(self, content: bytes, previous: str | None) -> str:
        """A new etag on every write: chained to the previous one, so equal content moves it too."""
        digest = hashlib.blake2b(content + (previous or "").encode(), digest_size=8).hexdigest()
        if self.platform == "old":
            return digest
        version = 1
        if previous is not None and previous.startswith("v"):
            head = previous[1:].split("-", 1)[0]
            version = int(head) + 1 if head.isdigit() else 1
        return f"v{version}-{digest[:8]}"


_OLD_ADDRESS = ("street", "city", "postcode")
_NEW_ADDRESS = ("street", "city", "postal_code")

OLD = Dialect(
    platform="old",
    contact=Resource(
        kind="contact",
        path="/api/contacts",
        fields=(
            Field("customer", required=True, nullable=False),
            Field("full_name", required=True, nullable=False),
            Field("email"),
            Field("phone"),
            Field("status", nullable=False, choices=frozenset({"open", "closed"}), default="open"),
            Field("balance", kind="number", nullable=False, default=0.0),
            Field("segment", choices=frozenset(SEGMENTS)),
            Field("channel", choices=frozenset(CHANNELS)),
            Field("address", kind="object", keys=_OLD_ADDRESS),
        ),
        read_only=frozenset({"id", "updated_at", "etag"}),
        filters=MappingProxyType({"customer": "customer", "status": "status"}),
    ),
    ticket=Resource(
        kind="ticket",
        path="/api/tickets",
        fields=(
            Field("contact_id", kind="int", required=True, nullable=False),
            Field("subject", required=True, nullable=False),
            Field("status", nullable=False, choices=frozenset({"open", "closed"}), default="open"),
            Field(
                "priority",
                nullable=False,
                choices=frozenset({"low", "normal", "high"}),
                default="normal",
            ),
        ),
        read_only=frozenset({"id", "comments", "created_at", "updated_at", "etag"}),
        filters=MappingProxyType({"contact_id": "contact_id", "status": "status"}),
        reference="contact_id",
    ),
    comment=Resource(
        kind="comment",
        path="/api/tickets/{id}/comments",
        fields=(
            Field(
                "author",
                required=True,
                nullable=False,
                choices=frozenset({"agent", "customer"}),
            ),
            Field("body", required=True, nullable=False),
        ),
        read_only=frozenset({"id", "created_at"}),
    ),
    attachments_path="/api/attachments",
    items_key="items",
    id_prefixes=MappingProxyType({}),
)

NEW = Dialect(
    platform="new",
    contact=Resource(
        kind="contact",
        path="/v2/contacts",
        fields=(
            Field("customer", required=True, nullable=False),
            Field("name", required=True, nullable=False),
            Field("email", lower=True),
            Field("phone_e164", pattern=E164),
            Field(
                "status",
                nullable=False,
                choices=frozenset({"OPEN", "RESOLVED"}),
                default="OPEN",
            ),
            Field("balance", kind="number", nullable=False, default=0.0),
            Field("segment", choices=frozenset(SEGMENTS)),
            Field("preferred_channel", choices=frozenset(CHANNELS)),
            Field("location", kind="object", keys=_NEW_ADDRESS),
        ),
        read_only=frozenset({"id", "updated_at", "etag"}),
        filters=MappingProxyType({"customer": "customer", "state": "status"}),
    ),
    ticket=Resource(
        kind="ticket",
        path="/v2/tickets",
        fields=(
            Field("contact", required=True, nullable=False),
            Field("title", required=True, nullable=False),
            Field(
                "state",
                nullable=False,
                choices=frozenset({"OPEN", "RESOLVED"}),
                default="OPEN",
            ),
            Field(
                "priority",
                nullable=False,
                choices=frozenset({"LOW", "NORMAL", "HIGH"}),
                default="NORMAL",
            ),
        ),
        read_only=frozenset({"id", "comments", "created_at", "updated_at", "etag"}),
        filters=MappingProxyType({"contact": "contact", "state": "state"}),
        reference="contact",
    ),
    comment=Resource(
        kind="comment",
        path="/v2/tickets/{id}/comments",
        fields=(
            Field(
                "author",
                required=True,
                nullable=False,
                choices=frozenset({"agent", "customer"}),
            ),
            Field("text", required=True, nullable=False),
        ),
        read_only=frozenset({"id", "created_at"}),
    ),
    attachments_path="/v2/attachments",
    items_key="data",
    id_prefixes=MappingProxyType(
        {"contact": "CT", "ticket": "TK", "comment": "CM", "attachment": "AT"}
    ),
)

DIALECTS: Mapping[Platform, Dialect] = MappingProxyType({"old": OLD, "new": NEW})


class Invalid(Exception):
    """A write the platform refuses (422); each error names its field."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors))
        self.errors = errors


def _check(spec: Field, value: Any, errors: list[tuple[str, str]]) -> Any:
    """The value as stored, or None after appending an error."""
    if value is None:
        if not spec.nullable:
            errors.append((spec.name, "must not be null"))
        return None
    if spec.kind == "str":
        if not isinstance(value, str):
            errors.append((spec.name, "expected a string"))
            return None
        if spec.required and not value.strip():
            errors.append((spec.name, "must not be empty"))
            return None
        if spec.choices is not None and value not in spec.choices:
            allowed = ", ".join(sorted(spec.choices))
            errors.append((spec.name, f"expected one of {allowed}"))
            return None
        if spec.pattern is not None and not spec.pattern.match(value):
            errors.append((spec.name, f"does not match {spec.pattern.pattern}"))
            return None
        return value.lower() if spec.lower else value
    if spec.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append((spec.name, "expected an integer"))
            return None
        return value
    if spec.kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append((spec.name, "expected a number"))
            return None
        return round(float(value), 2)
    if not isinstance(value, dict):
        errors.append((spec.name, "expected an object"))
        return None
    for key, item in value.items():
        if key not in spec.keys:
            errors.append((f"{spec.name}.{key}", "unknown field"))
        elif item is not None and not isinstance(item, str):
            errors.append((f"{spec.name}.{key}", "expected a string"))
    return value


def writable(resource: Resource, payload: object, base: Record | None = None) -> Record:
    """The client-writable part of a record after a write.

    With `base` None the payload is a create or a full replace (absent fields take their
    default); otherwise it is a JSON merge patch over `base`. Read-only fields in the payload are
    ignored, so a client may PUT back what it read; unknown fields are refused, so an
    untranslated request from the proxy fails loudly instead of being half-applied.
    """
    if not isinstance(payload, dict):
        raise Invalid([("$", "expected a JSON object")])
    errors: list[tuple[str, str]] = []
    if base is None:
        result: Record = {spec.name: spec.default for spec in resource.fields}
    else:
        result = {spec.name: base.get(spec.name, spec.default) for spec in resource.fields}
    for name, value in payload.items():
        if name in resource.read_only:
            continue
        spec = resource.field_named(name)
        if spec is None:
            errors.append((name, "unknown field"))
            continue
        checked = _check(spec, value, errors)
        if spec.kind == "object" and isinstance(checked, dict):
            previous = result.get(name) if base is not None else None
            merged = dict.fromkeys(spec.keys) if not isinstance(previous, dict) else previous
            checked = {key: checked.get(key, merged.get(key)) for key in spec.keys}
        result[name] = checked
    for spec in resource.fields:
        if spec.required and result.get(spec.name) is None and spec.name not in dict(errors):
            errors.append((spec.name, "required"))
    if errors:
        raise Invalid(errors)
    return result
