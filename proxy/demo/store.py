"""In-memory records of one platform, each kept next to its serialised form.

A read of one record is the hot path of the benchmarks, so the JSON bytes are built once per
write and a GET is a dict lookup. The bytes are the truth: copies handed to Python callers are
decoded from them, so a caller can never change a stored record by accident.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.demo.schema import Dialect, Record
from proxy.demo.seed import FIRST_COMMENT_ID, FIRST_CONTACT_ID, FIRST_TICKET_ID, new_style_id

MAX_ATTACHMENTS = 10_000


class Collection:
    """Records of one kind, keyed by their id as it appears in a URL path."""

    __slots__ = ("_blobs", "_records")

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._blobs: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return str(key) in self._records

    def blob(self, key: str) -> bytes | None:
        return self._blobs.get(key)

    def live(self, key: str) -> Record | None:
        """The stored dict itself, for the handlers; change it only through `save`."""
        return self._records.get(key)

    def live_records(self) -> Iterator[tuple[Record, bytes]]:
        for key, record in self._records.items():
            yield record, self._blobs[key]

    def save(self, record: Record) -> bytes:
        key = str(record["id"])
        blob = orjson.dumps(record)
        self._records[key] = record
        self._blobs[key] = blob
        return blob

    def delete(self, key: str) -> bool:
        self._blobs.pop(key, None)
        return self._records.pop(key, None) is not None

    def get(self, key: object) -> Record | None:
        """A copy of one record (key: its id, int or str)."""
        blob = self._blobs.get(str(key))
        return None if blob is None else dict(orjson.loads(blob))

    def all(self) -> list[Record]:
        """Copies of every record, in listing order."""
        return [dict(orjson.loads(blob)) for blob in self._blobs.values()]


class PlatformStore:
    """Contacts, tickets and attachment metadata of one platform, shared by its CRM and ticketing.

    Tickets live on the ticketing upstream but name contacts that live on the CRM upstream, the
    way one vendor's two APIs share a database.
    """

    def __init__(self, dialect: Dialect, seed: int) -> None:
        self.dialect = dialect
        self.contacts = Collection()
        self.tickets = Collection()
        self.attachments: OrderedDict[str, Record] = OrderedDict()
        self._seed = seed
        self._next_int = {
            "contact": FIRST_CONTACT_ID,
            "ticket": FIRST_TICKET_ID,
            "comment": FIRST_COMMENT_ID,
            "attachment": 1,
        }
        self._counter = 0
        self._taken: set[str] = set()

    def load(self, contacts: list[Record], tickets: list[Record]) -> None:
        """Store seed records (copied), giving each an etag and moving the id counters past them."""
        for template, collection, kind in (
            *((c, self.contacts, "contact") for c in contacts),
            *((t, self.tickets, "ticket") for t in tickets),
        ):
            record: Record = orjson.loads(orjson.dumps(template))
            self.stamp(record, None, keep_time=True)
            collection.save(record)
            self._claim(kind, record["id"])
            for comment in record.get("comments", ()):
                self._claim("comment", comment["id"])

    def _claim(self, kind: str, ident: Any) -> None:
        if isinstance(ident, int):
            self._next_int[kind] = max(self._next_int[kind], ident + 1)
        else:
            self._taken.add(str(ident))

    def new_id(self, kind: str) -> int | str:
        """A fresh id in the platform's own format; never one used before, even if deleted."""
        prefix = self.dialect.id_prefixes.get(kind)
        if prefix is None:
            ident = self._next_int[kind]
            self._next_int[kind] = ident + 1
            return ident
        self._counter += 1
        return new_style_id(prefix, self._seed, f"live/{kind}", self._counter, self._taken)

    def now(self) -> str:
        return self.dialect.render_time(datetime.now(UTC))

    def stamp(self, record: Record, previous_etag: str | None, *, keep_time: bool = False) -> None:
        """Move `updated_at` and `etag` on, as every write does (etag stays the last key)."""
        record.pop("etag", None)
        if not keep_time:
            record["updated_at"] = self.now()
        record["etag"] = self.dialect.etag(orjson.dumps(record), previous_etag)

    def remember_attachment(self, meta: Record) -> None:
        self.attachments[str(meta["id"])] = meta
        while len(self.attachments) > MAX_ATTACHMENTS:
            self.attachments.popitem(last=False)
