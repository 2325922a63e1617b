"""Where a route's records keep their ids, and the id map with a cache in front of the store.

A path id is looked up on both sides (old first): clients hold old ids for records the map
knows, and new ids for records created on the new platform that have no old id yet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from proxy.config.spec import IdsSpec, Side
from proxy.dualwrite.model import IdEntry, key_text
from proxy.dualwrite.store import Store
from shadow import jsonpath
from shadow.jsonpath import Path

DEFAULT_CACHE = 100_000


@dataclass(frozen=True, slots=True)
class IdRule:
    """`ids:` of a route, compiled: the path template's prefix, the id's place in answers, refs."""

    resource: str
    prefix: str  # the template up to {id}: "/api/contacts/"
    response: Path
    refs: tuple[tuple[Path, str], ...]  # (old-contract body path, resource)
    query: tuple[tuple[str, str], ...] = ()  # (query parameter, resource)

    @classmethod
    def compile(cls, spec: IdsSpec) -> IdRule:
        prefix = spec.path.split("{id}", 1)[0]
        return cls(
            resource=spec.resource,
            prefix=prefix,
            response=jsonpath.parse(spec.response),
            refs=tuple((jsonpath.parse(p), r) for p, r in spec.refs.items()),
            query=tuple(spec.query.items()),
        )

    def span(self, path: str) -> tuple[int, int] | None:
        """Where the record id is in a request path (`/api/contacts/42/notes` -> 42), if any."""
        if not path.startswith(self.prefix):
            return None
        start = len(self.prefix)
        end = path.find("/", start)
        end = len(path) if end < 0 else end
        return (start, end) if end > start else None


def path_id(path: str, span: tuple[int, int]) -> str:
    return unquote(path[span[0] : span[1]])


def with_path_id(path: str, span: tuple[int, int], key: str) -> str:
    return path[: span[0]] + quote(key, safe="-_.~:@") + path[span[1] :]


class IdMap:
    """The store's id map with an LRU cache of records (by both of their keys)."""

    def __init__(self, store: Store, capacity: int = DEFAULT_CACHE) -> None:
        self.store = store
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, Side, str], IdEntry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def remember(self, entry: IdEntry) -> None:
        sides: tuple[Side, Side] = ("old", "new")
        for side in sides:
            text = entry.id_on(side)
            if text is not None:
                key = (entry.resource, side, key_text(text))
                self._cache[key] = entry
                self._cache.move_to_end(key)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    async def lookup(self, resource: str, side: Side, key: str) -> IdEntry | None:
        cached = self._cache.get((resource, side, key))
        if cached is not None:
            self.hits += 1
            self._cache.move_to_end((resource, side, key))
            return cached
        self.misses += 1
        found = await self.store.map_lookup(resource, side, key)
        if found is not None:
            self.remember(found)
        return found

    async def find(self, resource: str, key: str) -> IdEntry | None:
        """The record with this id on either side; old ids win a (rare) clash."""
        return await self.lookup(resource, "old", key) or await self.lookup(resource, "new", key)

    async def put(self, entries: Iterable[IdEntry]) -> int:
        items = list(entries)
        count = await self.store.map_put(items)
        for item in items:
            self.remember(item)
        return count

    def forget(self, entry: IdEntry) -> None:
        sides: tuple[Side, Side] = ("old", "new")
        for side in sides:
            text = entry.id_on(side)
            if text is not None:
                self._cache.pop((entry.resource, side, key_text(text)), None)
