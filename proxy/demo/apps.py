"""The aiohttp applications of one simulated upstream: records, attachments and the `/_sim` API.

Order of work for a request (one middleware, then the route):
  1. `/_sim/*` skips everything below: the control API is never recorded, faulted or guarded.
  2. The request is recorded in the app's ring.
  3. Faults in force and in scope apply (delay, then the mode).
  4. Credentials are checked when the app requires them (401).
  5. Writes carrying an Idempotency-Key go through the key table (replay, 409, 422).
  6. The route handler; a `Problem` it raises becomes `application/problem+json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from itertools import islice
from typing import Any, Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from proxy.demo.faults import WRITE_METHODS, FaultError, Faults, FaultState
from proxy.demo.idempotency import Claim, IdempotencyKeys, StoredAnswer, fingerprint
from proxy.demo.requestlog import RequestLog, pick_headers
from proxy.demo.schema import Dialect, Invalid, Record, Resource, writable
from proxy.demo.store import Collection, PlatformStore

Api = Literal["crm", "ticketing"]
JSON_TYPE = "application/json"
PROBLEM_TYPE = "application/problem+json"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_BLOB = 1 << 40
STREAM_CHUNK = 1 << 16
_PATTERN = bytes(range(256)) * (STREAM_CHUNK // 256)
GARBAGE = b'{"items": [{"id": 1001, "full_name": <html><body>502 Bad Gateway</body></html>'
_REPLAYED_HEADERS = ("Location", "ETag")


def pattern_chunks(size: int, chunk: int = STREAM_CHUNK) -> Iterator[bytes]:
    """The `size` bytes that `GET .../attachments/blob?size=N` streams: 0..255 repeated."""
    if chunk % 256:
        raise ValueError("chunk must be a multiple of 256 to keep the pattern aligned")
    block = _PATTERN if chunk == STREAM_CHUNK else bytes(range(256)) * (chunk // 256)
    full, rest = divmod(size, chunk)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for part in pattern_chunks(size):
        digest.update(part)
    return digest.hexdigest()


class Problem(Exception):
    """An RFC 9457 problem answer raised from inside a handler."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra

    def response(self, instance: str | None = None) -> web.Response:
        return problem(self.status, self.detail, instance=instance, **self.extra)


def problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_TYPE, headers=headers
    )


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON_TYPE, headers=headers)


@dataclass(eq=False, slots=True)
class SimState:
    """Everything one upstream's handlers need; owned by its `SimApp`, reached via `SIM`."""

    name: str
    api: Api
    dialect: Dialect
    store: PlatformStore
    log: RequestLog
    faults: FaultState
    keys: IdempotencyKeys
    authorization: str | None
    apply_faults: Callable[[Faults], None]


SIM = web.AppKey("sim", SimState)


# --- reading requests -------------------------------------------------------------------------


async def _read_json(request: web.Request) -> object:
    body = await request.read()
    if not body:
        raise Problem(400, "a JSON body is required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None


def _int_param(request: web.Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, f"{name}: expected an integer", field=name) from None
    if value < 0:
        raise Problem(400, f"{name}: must not be negative", field=name)
    return value if maximum is None else min(value, maximum)


def _invalid(exc: Invalid) -> Problem:
    first = exc.errors[0][0]
    return Problem(
        422,
        f"validation failed: {exc}",
        field=first,
        errors=[{"field": name, "message": message} for name, message in exc.errors],
    )


# --- middleware and wrappers ------------------------------------------------------------------


def guarded(handler: Handler) -> Handler:
    """Turn a raised `Problem` into its answer, so the idempotency table can store it."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as exc:
            return exc.response(request.path)

    return run


def idempotent(handler: Handler) -> Handler:
    """Honour Idempotency-Key on a write route (see the module docstring of `idempotency`)."""

    async def run(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if key is None or request.method not in WRITE_METHODS:
            return await handler(request)
        keys = request.app[SIM].keys
        if keys.in_flight(key):
            return _conflict(request)
        if key in keys:
            print_ = fingerprint(request.method, request.path_qs, await request.read())
            claim, answer = keys.check(key, print_)
            if claim is Claim.IN_FLIGHT:
                return _conflict(request)
            if claim is Claim.MISMATCH:
                return problem(
                    422,
                    "Idempotency-Key was already used with another request",
                    instance=request.path,
                    field="Idempotency-Key",
                )
            if answer is not None:
                return _replay(answer)
        if not keys.reserve(key):
            return _conflict(request)
        try:
            body = await request.read()
            keys.bind(key, fingerprint(request.method, request.path_qs, body))
            response = await handler(request)
        except BaseException:
            keys.release(key)
            raise
        if (
            isinstance(response, web.Response)
            and response.status < 500
            and isinstance(response.body, bytes | None)
        ):
            keys.finish(key, _stored(response))
        else:
            keys.release(key)
        return response

    return run


def _conflict(request: web.Request) -> web.Response:
    return problem(
        409,
        "a request with this Idempotency-Key is still being processed",
        instance=request.path,
    )


def _stored(response: web.Response) -> StoredAnswer:
    assert isinstance(response.body, bytes | None)
    return StoredAnswer(
        status=response.status,
        body=response.body or b"",
        content_type=response.headers.get("Content-Type"),
        headers=tuple(
            (name, response.headers[name]) for name in _REPLAYED_HEADERS if name in response.headers
        ),
    )


def _replay(answer: StoredAnswer) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(answer.headers)
    if answer.content_type is not None:
        headers["Content-Type"] = answer.content_type
    headers["Idempotent-Replayed"] = "true"
    return web.Response(status=answer.status, body=answer.body, headers=headers)


@web.middleware
async def sim_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[SIM]
    path = request.path
    try:
        if path.startswith("/_sim/"):
            return await handler(request)
        state.log.record(request.method, request.path_qs, pick_headers(request.headers.items()))
        faults = state.faults.current
        if faults.mode != "ok" and faults.applies_to(request.method, path):
            return await _faulty(state, faults, request, handler)
        return await _authorised(state, request, handler)
    except Problem as exc:
        return exc.response(path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = exc.headers.get("Allow")
        return problem(
            exc.status,
            exc.reason,
            instance=path,
            headers={"Allow": allow} if allow is not None else None,
        )


async def _authorised(
    state: SimState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    if state.authorization is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), state.authorization.encode()):
            return problem(
                401,
                "missing or wrong Authorization",
                instance=request.path,
                headers={"WWW-Authenticate": f'Bearer realm="{state.name}"'},
            )
    return await handler(request)


async def _faulty(
    state: SimState, faults: Faults, request: web.Request, handler: Handler
) -> web.StreamResponse:
    if faults.delay_ms:
        await asyncio.sleep(faults.delay_ms / 1000)
    mode = faults.mode
    if mode == "slow" or (mode == "flaky" and not state.faults.should_fail()):
        return await _authorised(state, request, handler)
    if mode == "wrong_field":
        response = await _authorised(state, request, handler)
        return _wrong_field(response, faults)
    if faults.commit:
        await _authorised(state, request, handler)
    if mode in ("reset", "down"):
        # "down" here means a connection that was open before the site closed.
        _reset(request)
        return web.Response(status=500)
    if mode == "garbage":
        return web.Response(body=GARBAGE, content_type=JSON_TYPE)
    return problem(
        faults.status,
        f"simulated {mode} failure on {state.name}",
        instance=request.path,
    )


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST and no answer at all."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _wrong_field(response: web.StreamResponse, faults: Faults) -> web.StreamResponse:
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    if response.content_type != JSON_TYPE or not response.body:
        return response  # problems and non-JSON answers are not records
    data = orjson.loads(response.body)
    assert faults.field is not None
    targets: list[Any] = [data]
    if isinstance(data, dict):
        for key in ("items", "data"):
            if isinstance(data.get(key), list):
                targets = data[key]
    for record in targets:
        if isinstance(record, dict):
            record[faults.field] = faults.value
    response.body = orjson.dumps(data)
    return response


# --- records ----------------------------------------------------------------------------------


class RecordRoutes:
    """CRUD and list for one kind of record on one platform."""

    def __init__(self, store: PlatformStore, resource: Resource, collection: Collection) -> None:
        self.store = store
        self.resource = resource
        self.collection = collection

    def add_to(self, router: web.UrlDispatcher) -> None:
        base = self.resource.path
        router.add_get(base, guarded(self.list))
        router.add_post(base, idempotent(guarded(self.create)))
        router.add_get(base + "/{id}", guarded(self.get))
        router.add_put(base + "/{id}", idempotent(guarded(self.replace)))
        router.add_patch(base + "/{id}", idempotent(guarded(self.patch)))
        router.add_delete(base + "/{id}", idempotent(guarded(self.delete)))

    async def list(self, request: web.Request) -> web.StreamResponse:
        limit = _int_param(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        offset = _int_param(request, "offset", 0)
        wanted: list[tuple[str, object]] = []
        for param, name in self.resource.filters.items():
            raw = request.query.get(param)
            if raw is None:
                continue
            spec = self.resource.field_named(name)
            assert spec is not None
            value: object = raw
            if spec.kind == "int":
                try:
                    value = int(raw)
                except ValueError:
                    raise Problem(400, f"{param}: expected an integer", field=param) from None
            elif spec.choices is not None and raw not in spec.choices:
                allowed = ", ".join(sorted(spec.choices))
                raise Problem(400, f"{param}: expected one of {allowed}", field=param)
            wanted.append((name, value))
        dialect = self.store.dialect
        if not wanted:
            rows = self.collection.live_records()
            page = [blob for _, blob in islice(rows, offset, offset + limit)]
            return _json(dialect.envelope(page, len(self.collection)))
        matched = [
            blob
            for record, blob in self.collection.live_records()
            if all(record.get(name) == value for name, value in wanted)
        ]
        return _json(dialect.envelope(matched[offset : offset + limit], len(matched)))

    async def get(self, request: web.Request) -> web.StreamResponse:
        blob = self.collection.blob(request.match_info["id"])
        if blob is None:
            raise self._missing(request)
        return _json(blob)

    async def create(self, request: web.Request) -> web.StreamResponse:
        try:
            fields = writable(self.resource, await _read_json(request))
        except Invalid as exc:
            raise _invalid(exc) from None
        self._check_reference(fields)
        ident = self.store.new_id(self.resource.kind)
        blob = self._save(ident, fields, None)
        location = f"{self.resource.path}/{ident}"
        return _json(blob, 201, {"Location": location})

    async def replace(self, request: web.Request) -> web.StreamResponse:
        existing = self._existing(request)
        try:
            fields = writable(self.resource, await _read_json(request))
        except Invalid as exc:
            raise _invalid(exc) from None
        self._check_reference(fields)
        return _json(self._save(existing["id"], fields, existing))

    async def patch(self, request: web.Request) -> web.StreamResponse:
        existing = self._existing(request)
        payload = await _read_json(request)
        try:
            fields = writable(self.resource, payload, existing)
        except Invalid as exc:
            raise _invalid(exc) from None
        if isinstance(payload, dict) and self.resource.reference in payload:
            self._check_reference(fields)
        return _json(self._save(existing["id"], fields, existing))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        if not self.collection.delete(request.match_info["id"]):
            raise self._missing(request)
        return web.Response(status=204)

    def _missing(self, request: web.Request) -> Problem:
        return Problem(404, f"no {self.resource.kind} {request.match_info['id']}")

    def _existing(self, request: web.Request) -> Record:
        record = self.collection.live(request.match_info["id"])
        if record is None:
            raise self._missing(request)
        return record

    def _check_reference(self, fields: Record) -> None:
        ref = self.resource.reference
        if ref is not None and fields.get(ref) not in self.store.contacts:
            raise Problem(
                422,
                f"{ref}: no contact {fields.get(ref)}",
                field=ref,
                errors=[{"field": ref, "message": "no such contact"}],
            )

    def _save(self, ident: int | str, fields: Record, existing: Record | None) -> bytes:
        record: Record = {"id": ident, **fields}
        if self.resource.kind == "ticket":
            record["comments"] = existing["comments"] if existing else []
            record["created_at"] = existing["created_at"] if existing else self.store.now()
        record["updated_at"] = None
        self.store.stamp(record, existing["etag"] if existing else None)
        return self.collection.save(record)


class CommentRoutes:
    """Comments of a ticket: a list and an append, both changing the ticket's etag."""

    def __init__(self, store: PlatformStore) -> None:
        self.store = store
        self.resource = store.dialect.comment

    def add_to(self, router: web.UrlDispatcher) -> None:
        path = self.resource.path
        router.add_get(path, guarded(self.list))
        router.add_post(path, idempotent(guarded(self.create)))

    def _ticket(self, request: web.Request) -> Record:
        ticket = self.store.tickets.live(request.match_info["id"])
        if ticket is None:
            raise Problem(404, f"no ticket {request.match_info['id']}")
        return ticket

    async def list(self, request: web.Request) -> web.StreamResponse:
        comments = self._ticket(request)["comments"]
        items = [orjson.dumps(comment) for comment in comments]
        return _json(self.store.dialect.envelope(items, len(items)))

    async def create(self, request: web.Request) -> web.StreamResponse:
        ticket = self._ticket(request)
        try:
            fields = writable(self.resource, await _read_json(request))
        except Invalid as exc:
            raise _invalid(exc) from None
        now = self.store.now()
        comment: Record = {"id": self.store.new_id("comment"), **fields, "created_at": now}
        updated = {**ticket, "comments": [*ticket["comments"], comment]}
        self.store.stamp(updated, ticket["etag"])
        self.store.tickets.save(updated)
        return _json(orjson.dumps(comment), 201)


class AttachmentRoutes:
    """Large bodies both ways, never held whole in memory: for the proxy's streaming tests."""

    def __init__(self, store: PlatformStore) -> None:
        self.store = store
        self.path = store.dialect.attachments_path

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post(self.path, guarded(self.upload))
        router.add_get(self.path + "/blob", guarded(self.blob))
        router.add_get(self.path + "/{id}", guarded(self.get))

    async def upload(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(STREAM_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        ident = self.store.new_id("attachment")
        meta: Record = {"id": ident, "size": size, "sha256": digest.hexdigest()}
        self.store.remember_attachment(meta)
        return _json(orjson.dumps(meta), 201, {"Location": f"{self.path}/{ident}"})

    async def blob(self, request: web.Request) -> web.StreamResponse:
        size = _int_param(request, "size", 0)
        if size > MAX_BLOB:
            raise Problem(400, f"size: at most {MAX_BLOB}", field="size")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        if request.method != "HEAD":
            for chunk in pattern_chunks(size):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def get(self, request: web.Request) -> web.StreamResponse:
        meta = self.store.attachments.get(request.match_info["id"])
        if meta is None:
            raise Problem(404, f"no attachment {request.match_info['id']}")
        return _json(orjson.dumps(meta))


# --- the /_sim control API --------------------------------------------------------------------


async def _health(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM]
    return _json(orjson.dumps({"status": "ok", "name": state.name}))


async def _requests(request: web.Request) -> web.StreamResponse:
    since = _int_param(request, "since", 0)
    seen = request.app[SIM].log.since(since)
    return _json(orjson.dumps([item.to_json() for item in seen]))


async def _clear_requests(request: web.Request) -> web.StreamResponse:
    request.app[SIM].log.clear()
    return web.Response(status=204)


async def _get_faults(request: web.Request) -> web.StreamResponse:
    return _json(orjson.dumps(request.app[SIM].faults.current.to_json()))


async def _set_faults(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM]
    payload = await _read_json(request)
    if not isinstance(payload, dict):
        raise Problem(422, "expected a JSON object of fault settings")
    try:
        faults = Faults.parse(payload)
    except FaultError as exc:
        raise Problem(422, str(exc)) from None
    if faults.mode == "down" and faults.down_for_ms is None:
        raise Problem(
            422,
            "down over HTTP needs down_for_ms: nothing could bring the port back otherwise",
            field="down_for_ms",
        )
    if faults.mode != "down":
        state.apply_faults(faults)
        return _json(orjson.dumps(faults.to_json()))
    # Send the whole answer before the port (and this connection) goes away.
    response = _json(orjson.dumps(faults.to_json()))
    await response.prepare(request)
    await response.write_eof()
    state.apply_faults(faults)
    return response


def build_app(state: SimState) -> web.Application:
    """One upstream: the records its API serves, plus `/_sim`."""
    app = web.Application(middlewares=[sim_middleware])
    app[SIM] = state
    router = app.router
    router.add_get("/_sim/health", _health)
    router.add_get("/_sim/requests", guarded(_requests))
    router.add_delete("/_sim/requests", _clear_requests)
    router.add_get("/_sim/faults", _get_faults)
    router.add_post("/_sim/faults", guarded(_set_faults))
    store = state.store
    if state.api == "crm":
        RecordRoutes(store, store.dialect.contact, store.contacts).add_to(router)
    else:
        RecordRoutes(store, store.dialect.ticket, store.tickets).add_to(router)
        CommentRoutes(store).add_to(router)
        AttachmentRoutes(store).add_to(router)
    return app
