"""One contract for clients: requests old -> platform, answers platform -> old.

Clients speak the old platform's API. For the new platform a request's path prefix, query and
JSON body go through the route's `contract`, and ids (in the path and in `ids.refs` body fields)
are replaced by that platform's ids from the id map; answers come back the other way, with ids
translated to old ids wherever the map knows them, so a client sees one id per record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
import structlog

from proxy.config.spec import Side
from proxy.config.table import Route
from proxy.dualwrite.ids import IdMap, path_id, with_path_id
from proxy.dualwrite.model import IdEntry, key_text
from proxy.dualwrite.store import StoreError
from proxy.errors import RequestRejected
from shadow import jsonpath

log = structlog.get_logger("cutover.translate")


class IdMapUnavailable(RequestRejected, StoreError):
    """The id map cannot be read (its store is down), so the request cannot be placed or
    translated: a 503 before any platform sees it. A StoreError as well, so that the outbox
    worker treats it like any other store outage (retry later)."""

    status = 503
    kind = "id-map-unavailable"
    title = "Id map unavailable"


class Unresolved(Exception):
    """A body refers to a record whose id on the target platform is not known (yet)."""

    def __init__(self, resource: str, key: str, side: Side) -> None:
        super().__init__(f"no {side} id known for {resource} {key}")
        self.resource = resource
        self.key = key
        self.side = side


@dataclass(frozen=True, slots=True)
class Resolved:
    """The record a request path names, as far as the id map knows it."""

    record: IdEntry | None = None
    span: tuple[int, int] | None = None
    key: str | None = None  # the id as the client wrote it

    @property
    def affinity(self) -> Side | None:
        """The only platform holding the record, when it is on one only."""
        return self.record.only_on if self.record is not None else None


NOTHING = Resolved()


def target_for(route: Route, side: Side, path: str, query: str) -> str:
    """Path and query as the platform serves them (the new platform's contract may differ)."""
    if side == "new":
        if route.new_prefix != route.prefix:
            path = route.new_prefix + path[len(route.prefix) :]
        contract = route.contract
        if query and contract is not None and contract.translates_query:
            query = urlencode(contract.query_to_new(parse_qsl(query, keep_blank_values=True)))
    return f"{path}?{query}" if query else path


def records_of(doc: Any, route: Route) -> list[Any]:
    """The records of an old-contract document: list elements (of a top-level array or of the
    collection, even when there are none), or the document itself."""
    if isinstance(doc, list):
        return doc
    collection = route.rules.collection
    if collection is not None and isinstance(doc, dict):
        items = jsonpath.get_at(doc, collection)
        if isinstance(items, list):
            return items
    return [doc] if isinstance(doc, dict) else []


class Translator:
    def __init__(self, idmap: IdMap | None) -> None:
        self.idmap = idmap

    async def resolve(self, route: Route, path: str) -> Resolved:
        rule = route.ids
        if rule is None:
            return NOTHING
        span = rule.span(path)
        if span is None:
            return NOTHING
        key = path_id(path, span)
        record = await self._find(rule.resource, key)
        return Resolved(record, span, key)

    async def _find(self, resource: str, key: str) -> IdEntry | None:
        if self.idmap is None:
            return None
        try:
            return await self.idmap.find(resource, key)
        except IdMapUnavailable:
            raise
        except StoreError as exc:
            raise IdMapUnavailable(f"the id map cannot be read: {exc}") from exc

    async def path_on(
        self, route: Route, side: Side, path: str, query: str, resolved: Resolved
    ) -> str | None:
        """The request target on `side`; None when the record is known not to exist there.
        Ids in the path and in `ids.query` parameters become `side`'s ids where the map knows
        them (an unknown one is passed as it is: the platform answers for it)."""
        if self.looks_up_query(route, query):
            assert route.ids is not None
            query = await self._query_ids(route.ids.query, side, query)
        return self.path_now(route, side, path, query, resolved)

    def looks_up_query(self, route: Route, query: str) -> bool:
        """Whether `path_on` must ask the id map about query parameters (else `path_now`
        gives the same answer without a coroutine: the hot path takes that shortcut)."""
        rule = route.ids
        return bool(query) and rule is not None and bool(rule.query) and self.idmap is not None

    def path_now(
        self, route: Route, side: Side, path: str, query: str, resolved: Resolved
    ) -> str | None:
        """`path_on` for a query that needs no id map lookup."""
        if resolved.record is not None and resolved.span is not None:
            text = resolved.record.id_on(side)
            if text is None:
                return None
            path = with_path_id(path, resolved.span, key_text(text))
        return target_for(route, side, path, query)

    async def _query_ids(self, params: tuple[tuple[str, str], ...], side: Side, query: str) -> str:
        assert self.idmap is not None
        wanted = dict(params)
        pairs = parse_qsl(query, keep_blank_values=True)
        if not any(name in wanted for name, _ in pairs):
            return query
        out = []
        for name, value in pairs:
            resource = wanted.get(name)
            entry = await self._find(resource, value) if resource and value else None
            text = entry.id_on(side) if entry is not None else None
            out.append((name, key_text(text) if text is not None else value))
        return urlencode(out)

    def translates_request(self, route: Route, side: Side) -> bool:
        contract = route.contract
        has_refs = route.ids is not None and bool(route.ids.refs)
        return has_refs or (side == "new" and contract is not None and contract.translates_bodies)

    def translates_answer(self, route: Route, side: Side) -> bool:
        if side != "new":
            return False
        contract = route.contract
        return route.ids is not None or (contract is not None and contract.translates_bodies)

    async def request_doc(self, route: Route, side: Side, doc: Any) -> Any:
        """An old-contract request body for `side`: refs to its ids, then the contract.
        Edits `doc` in place (the caller parsed it). Raises Unresolved."""
        rule = route.ids
        if rule is not None and rule.refs and self.idmap is not None:
            for record in records_of(doc, route):
                for path, resource in rule.refs:
                    for container, key in jsonpath.slots(record, path):
                        value = container[key]  # type: ignore[index]
                        if value is None:
                            continue
                        entry = await self._find(resource, _text(value))
                        target = entry.value_on(side) if entry is not None else None
                        if target is None:
                            raise Unresolved(resource, _text(value), side)
                        container[key] = target  # type: ignore[index]
        contract = route.contract
        if side == "new" and contract is not None:
            doc = contract.body_to_new(doc, copy=False)
        return doc

    async def answer_doc(self, route: Route, side: Side, doc: Any) -> Any:
        """A platform's answer in old-contract terms, ids as old ids where known. In place."""
        if side != "new":
            return doc
        contract = route.contract
        if contract is not None:
            doc = contract.body_to_old(doc, copy=False)
        rule = route.ids
        if rule is None or self.idmap is None:
            return doc
        places = [(rule.response, rule.resource), *rule.refs]
        for record in records_of(doc, route):
            for path, resource in places:
                for container, key in jsonpath.slots(record, path):
                    value = container[key]  # type: ignore[index]
                    if value is None:
                        continue
                    try:
                        entry = await self.idmap.lookup(resource, "new", _text(value))
                    except StoreError as exc:
                        # the platform has answered (a write has happened): pass its own id
                        # rather than turn a success into an error
                        log.warning("id_not_translated", resource=resource, error=str(exc))
                        continue
                    if entry is not None and entry.old is not None:
                        container[key] = entry.value_on("old")  # type: ignore[index]
        return doc

    def id_in_answer(self, route: Route, doc: Any) -> Any:
        """The id an answer gives its record (`ids.response`), in the answering side's form."""
        rule = route.ids
        if rule is None or not isinstance(doc, dict):
            return None
        value = jsonpath.get_at(doc, rule.response)
        return None if value is jsonpath.MISSING else value


def _text(value: Any) -> str:
    """The lookup text of an id found in a body: strings as they are, numbers as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()
