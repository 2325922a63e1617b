"""The fleet store: the outbox and the id map in one Redis shared by every cutover instance.

Key layout, everything under one prefix P (default ``cutover:``; the URL's db is the namespace):

    P meta                  hash: partitions (checked at open), salt, intent_seq
    P intent                hash: intent id ("i42") -> entry JSON
    P intent:created        zset: intent id by `created` (for `intents(older_than)`)
    P out:{n}               stream per partition: fields d (entry JSON), t (target)
                            consumer group "cutover": its PEL holds what the lease holder
                            read and has not completed
    P retry                 hash: entry id -> {"a": attempts, "n": next_at, "e": last_error,
                            "r": dead_reason}, kept for ready and dead entries
    P dead                  hash: entry id -> "target\\nentry JSON" (out of the stream)
    P dead:order            zset: dead entry ids by commit time (ms), oldest first
    P okey:last             hash: order key -> `created` of its newest committed write (kept
                            forever, like SQLite's okeys table: recovery compares against it)
    P count:target          hash: target -> ready entries (kept by the same scripts that
                            add and remove stream entries, so `stats()` needs no scan)
    P lease:{n}             string: owner, PX ttl ("shed\\n<owner>" while a shed lease runs out)
    P owners                zset: owner by heartbeat expiry (ms), for fair shares
    P map:rec:{resource}    hash: birth key ("old:1001") -> record JSON
    P map:old:{resource}    hash: old id (lookup text) -> birth key
    P map:new:{resource}    hash: new id (lookup text) -> birth key

Entry ids are ``"{partition}-{stream id}"`` ("3-1700000000000-0"), intent ids ``"i{n}"``.
Every multi-key change is one Lua script (atomic, and with a ``#!lua`` shebang refused up
front when Redis is out of memory, so none is half-applied). The client never retries a
command by itself: a retried script whose first reply was lost would run twice.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from proxy.config.spec import Side
from proxy.dualwrite.model import IdEntry, OutboxEntry, OutboxStats, key_text
from proxy.dualwrite.store import Store, StoreError, partition_of

DEFAULT_PREFIX = "cutover:"
DEFAULT_TIMEOUT = 5.0  # seconds, per socket operation and per wait for a pooled connection
DEFAULT_MAX_CONNECTIONS = 32
GROUP = "cutover"
SCAN_PAGE = 1000
BATCH = 500  # ids or records per script call: bounds how long one call holds Redis

T = TypeVar("T")
_STREAM_ID = re.compile(r"\d+-\d+")

# Helpers shared by the scripts below (prepended after each script's shebang line).
_LUA_COMMON = """
local function field(row, name)
  local f = row[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return false
end

-- Remove a ready entry from its stream and its group's PEL; the row, or false if absent.
local function take(stream, counts, group, sid)
  local rows = redis.call('XRANGE', stream, sid, sid)
  if #rows == 0 then return false end
  redis.pcall('XACK', stream, group, sid)
  redis.call('XDEL', stream, sid)
  redis.call('HINCRBY', counts, field(rows[1], 't'), -1)
  return rows[1]
end

-- Upsert a record by birth key; index keys are "=" .. lookup text, or "" when absent.
local function map_put(rec, oidx, nidx, birth, ok, nk, value)
  local prev = redis.call('HGET', rec, birth)
  if prev then
    local p = cjson.decode(prev)
    if p.ok ~= '' and p.ok ~= ok and redis.call('HGET', oidx, p.ok:sub(2)) == birth then
      redis.call('HDEL', oidx, p.ok:sub(2))
    end
    if p.nk ~= '' and p.nk ~= nk and redis.call('HGET', nidx, p.nk:sub(2)) == birth then
      redis.call('HDEL', nidx, p.nk:sub(2))
    end
  end
  redis.call('HSET', rec, birth, value)
  if ok ~= '' then redis.call('HSET', oidx, ok:sub(2), birth) end
  if nk ~= '' then redis.call('HSET', nidx, nk:sub(2), birth) end
end

local function id_after(a, b)
  local am, as = a:match('^(%d+)-(%d+)$')
  local bm, bs = b:match('^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
"""

# KEYS meta, intent, intent:created; ARGV data, created
_JOURNAL = """
local id = 'i' .. redis.call('HINCRBY', KEYS[1], 'intent_seq', 1)
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], id)
return id
"""

# KEYS stream, intent, intent:created, count:target, okey:last [, map rec, old, new]
# ARGV intent id, data, target, order key, created [, birth, ok, nk, record]
# Returns false when the intent is gone (committed or discarded elsewhere): two instances
# recovering one intent must not both enqueue it. XADD precedes every other write: if it fails
# (a key of the wrong type) nothing has changed yet.
_COMMIT = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return false end
local sid = redis.call('XADD', KEYS[1], '*', 'd', ARGV[2], 't', ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
local last = redis.call('HGET', KEYS[5], ARGV[4])
if not last or tonumber(last) < tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
end
if #KEYS > 5 then map_put(KEYS[6], KEYS[7], KEYS[8], ARGV[6], ARGV[7], ARGV[8], ARGV[9]) end
return sid
"""

# KEYS (rec, old, new) per record; ARGV (birth, ok, nk, record) per record
_MAP_PUT = """
for i = 0, #KEYS / 3 - 1 do
  map_put(KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3],
          ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4])
end
return #KEYS / 3
"""

# KEYS index, rec; ARGV lookup text
_MAP_LOOKUP = """
local birth = redis.call('HGET', KEYS[1], ARGV[1])
if not birth then return false end
return redis.call('HGET', KEYS[2], birth)
"""

# KEYS stream, retry, lease; ARGV start, count, group, id prefix ("3-")
# Returns (stream id, data, retry state or nil) triples. The entries newly read are also
# delivered through the consumer group to the lease holder, so the group's PEL shows what the
# holder has read and not completed (and a takeover moves it to the next holder).
_READY = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local out = {}
for _, row in ipairs(rows) do
  out[#out + 1] = row[1]
  out[#out + 1] = field(row, 'd')
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[4] .. row[1])
end
local owner = redis.call('GET', KEYS[3])
if #rows > 0 and owner and not owner:find('\\n', 1, true) then
  local last = false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, delivered
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then delivered = g[j + 1] end
    end
    if name == ARGV[3] then last = delivered end
  end
  if not last then
    redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[3], '0')
    last = '0-0'
  end
  local fresh = 0
  for _, row in ipairs(rows) do
    if id_after(row[1], last) then fresh = fresh + 1 end
  end
  if fresh > 0 then
    redis.call('XREADGROUP', 'GROUP', ARGV[3], owner, 'COUNT', fresh, 'STREAMS', KEYS[1], '>')
  end
end
return out
"""

# KEYS stream, count:target, retry; ARGV group, stream id, entry id
_COMPLETE = """
local row = take(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
if row then return 1 end
return 0
"""

# KEYS stream, retry; ARGV stream id, entry id, retry state
# Only for an entry still there, so a late reschedule leaves no orphan state behind.
_RESCHEDULE = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS stream, count:target, retry, dead, dead:order; ARGV group, stream id, entry id, state, score
_DEAD_LETTER = """
local row = take(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if not row then return 0 end
redis.call('HSET', KEYS[4], ARGV[3], field(row, 't') .. '\\n' .. field(row, 'd'))
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return 1
"""

# KEYS dead, dead:order, retry, count:target, stream 0..n-1; ARGV (entry id, partition) pairs
_REVIVE = """
local revived = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local value = redis.call('HGET', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  if value then
    local cut = value:find('\\n', 1, true)
    local target = value:sub(1, cut - 1)
    redis.call('XADD', KEYS[5 + tonumber(ARGV[i + 1])], '*', 'd', value:sub(cut + 1), 't', target)
    redis.call('HINCRBY', KEYS[4], target, 1)
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
    revived = revived + 1
  end
end
return revived
"""

# KEYS intent, intent:created, dead, dead:order, retry, count:target, stream 0..n-1
# ARGV group, then (entry id, partition or "i", stream id) triples
_DROP = """
local dropped = 0
for i = 2, #ARGV, 3 do
  local id, p, sid = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if p == 'i' then
    dropped = dropped + redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  else
    if take(KEYS[7 + tonumber(p)], KEYS[6], ARGV[1], sid) then
      dropped = dropped + 1
    else
      dropped = dropped + redis.call('HDEL', KEYS[3], id)
    end
    redis.call('ZREM', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
  end
end
return dropped
"""

# KEYS owners, lease 0..n-1, stream 0..n-1; ARGV owner, ttl ms, group
# Fair share: at most ceil(partitions / live owners) each. An owner over its share stops
# renewing the extra leases and marks them "shed\n<owner>" until the ttl it was promised runs
# out, so its in-flight sends finish before another owner may start on those partitions.
_CLAIM = """
local owner, ttl, group = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local n = (#KEYS - 1) / 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, owner)
local fair = math.ceil(n / redis.call('ZCARD', KEYS[1]))
local held = {}
for p = 0, n - 1 do
  if redis.call('GET', KEYS[2 + p]) == owner then held[#held + 1] = p end
end
while #held > fair do
  local lease = KEYS[2 + table.remove(held)]
  redis.call('SET', lease, 'shed\\n' .. owner, 'KEEPTTL')
  if redis.call('PTTL', lease) < 0 then redis.call('PEXPIRE', lease, ttl) end
end
for _, p in ipairs(held) do redis.call('PEXPIRE', KEYS[2 + p], ttl) end
for p = 0, n - 1 do
  if #held >= fair then break end
  if redis.call('SET', KEYS[2 + p], owner, 'NX', 'PX', ttl) then
    held[#held + 1] = p
    local stream = KEYS[2 + n + p]
    redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    -- what the previous holder read and never completed is now this owner's
    local cursor, rounds = '0-0', 0
    repeat
      cursor = redis.call('XAUTOCLAIM', stream, group, owner, 0, cursor, 'COUNT', 500, 'JUSTID')[1]
      rounds = rounds + 1
    until cursor == '0-0' or rounds >= 20
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
      local name, pending
      for j = 1, #c, 2 do
        if c[j] == 'name' then name = c[j + 1] end
        if c[j] == 'pending' then pending = c[j + 1] end
      end
      if name ~= owner and pending == 0 then
        redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
      end
    end
  end
end
table.sort(held)
return held
"""

# KEYS owners, lease 0..n-1; ARGV owner
_RELEASE = """
for i = 2, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder == ARGV[1] or holder == 'shed\\n' .. ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"""


@dataclass(frozen=True, slots=True)
class _Keys:
    prefix: str
    partitions: int

    @property
    def meta(self) -> str:
        return f"{self.prefix}meta"

    @property
    def intent(self) -> str:
        return f"{self.prefix}intent"

    @property
    def intent_created(self) -> str:
        return f"{self.prefix}intent:created"

    @property
    def retry(self) -> str:
        return f"{self.prefix}retry"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead"

    @property
    def dead_order(self) -> str:
        return f"{self.prefix}dead:order"

    @property
    def counts(self) -> str:
        return f"{self.prefix}count:target"

    @property
    def last_commit(self) -> str:
        return f"{self.prefix}okey:last"

    @property
    def owners(self) -> str:
        return f"{self.prefix}owners"

    def stream(self, partition: int) -> str:
        return f"{self.prefix}out:{partition}"

    def streams(self) -> list[str]:
        return [self.stream(p) for p in range(self.partitions)]

    def lease(self, partition: int) -> str:
        return f"{self.prefix}lease:{partition}"

    def map(self, kind: str, resource: str) -> str:
        return f"{self.prefix}map:{kind}:{resource}"


class RedisStore(Store):
    """Partitioned streams read under leases, so each partition's order holds fleet-wide."""

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 8,
        prefix: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.url = url
        self.partitions = partitions
        self.prefix = DEFAULT_PREFIX if prefix is None else prefix
        self.timeout = timeout
        self._keys = _Keys(self.prefix, partitions)
        self._redis: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._salt: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._redis is not None:
            return
        try:
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=DEFAULT_MAX_CONNECTIONS,
                timeout=self.timeout,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
                client_name="cutover-store",
            )
        except ValueError as exc:  # a malformed URL
            raise StoreError(f"bad redis URL {self._where()}: {exc}") from exc
        client = Redis.from_pool(pool)
        try:
            with _mapped(f"open {self._where()}"):
                await self._prepare(client)
        except BaseException:
            await client.aclose()
            raise
        self._redis = client

    async def _prepare(self, client: Redis) -> None:
        await client.ping()
        keys = self._keys
        await client.hsetnx(keys.meta, "partitions", str(self.partitions))
        await client.hsetnx(keys.meta, "salt", os.urandom(8).hex())
        stored, salt = _maybe(await client.hmget(keys.meta, ["partitions", "salt"]))
        if stored != str(self.partitions):
            # partition_of would put one record's writes in two streams: its order would break
            raise StoreError(
                f"the store at {self._where()} has {stored} partitions, not {self.partitions}"
            )
        assert salt is not None  # set just above with HSETNX
        self._salt = salt
        for stream in keys.streams():
            try:
                await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._scripts = {
            name: client.register_script(_script(body, writes=name != "map_lookup"))
            for name, body in {
                "journal": _JOURNAL,
                "commit": _COMMIT,
                "map_put": _MAP_PUT,
                "map_lookup": _MAP_LOOKUP,
                "ready": _READY,
                "complete": _COMPLETE,
                "reschedule": _RESCHEDULE,
                "dead_letter": _DEAD_LETTER,
                "revive": _REVIVE,
                "drop": _DROP,
                "claim": _CLAIM,
                "release": _RELEASE,
            }.items()
        }

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            with _mapped("close"):
                await client.aclose()

    async def instance_salt(self) -> str:
        self._client()
        assert self._salt is not None
        return self._salt

    def _client(self) -> Redis:
        if self._redis is None:
            raise StoreError("the store is not open")
        return self._redis

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._client()
        try:
            with _mapped(script):
                return await self._scripts[script](keys=keys, args=args)
        except StoreError as exc:
            if not isinstance(exc.__cause__, RedisConnectionError):
                raise
            # Redis went away (restarted, failed over): every idle connection in the pool is
            # as dead as this one, and would fail the next caller the same way; drop them all
            await client.connection_pool.disconnect(inuse_connections=False)
            if script not in _READ_ONLY:
                raise  # the script may have run before the connection broke: never twice
        with _mapped(script):  # a lookup changes nothing: once more, on a fresh connection
            return await self._scripts[script](keys=keys, args=args)

    def _where(self) -> str:
        # the URL without its password: it ends up in logs and error messages
        return re.sub(r"//[^@/]*@", "//", self.url)

    # --- outbox ----------------------------------------------------------------------------

    async def journal(self, entry: OutboxEntry) -> str:
        keys = self._keys
        data = entry.with_(state="intent", id="").to_json()
        return str(
            await self._run(
                "journal",
                [keys.meta, keys.intent, keys.intent_created],
                [data, repr(entry.created)],
            )
        )

    async def commit(self, intent_id: str, entry: OutboxEntry, record: IdEntry | None) -> str:
        _intent_number(intent_id)
        keys = self._keys
        partition = partition_of(entry.order_key, self.partitions)
        ready = entry.with_(
            state="ready", id="", attempts=0, next_at=0.0, last_error=None, dead_reason=None
        )
        script_keys = [
            keys.stream(partition), keys.intent, keys.intent_created, keys.counts, keys.last_commit,
        ]  # fmt: skip
        args: list[Any] = [
            intent_id, ready.to_json(), entry.target, entry.order_key, repr(entry.created),
        ]  # fmt: skip
        if record is not None:
            script_keys.extend(_map_keys(keys, record))
            args.extend(_map_args(record))
        sid = await self._run("commit", script_keys, args)
        if sid is None:
            raise StoreError(f"intent {intent_id} is gone (committed or discarded already)")
        return f"{partition}-{sid}"

    async def last_commit(self, order_key: str) -> float | None:
        client = self._client()
        with _mapped("last_commit"):
            last = await client.hget(self._keys.last_commit, order_key)
        return None if last is None else float(last)

    async def discard(self, intent_id: str) -> None:
        _intent_number(intent_id)
        keys = self._keys
        client = self._client()
        with _mapped("discard"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.intent, intent_id)
                pipe.zrem(keys.intent_created, intent_id)
                await pipe.execute()

    async def intents(self, older_than: float) -> list[OutboxEntry]:
        client = self._client()
        with _mapped("intents"):
            ids = _texts(
                await client.zrangebyscore(self._keys.intent_created, "-inf", f"({older_than!r}")
            )
        return await self._intents_by_id(ids)

    async def _intents_by_id(self, ids: Sequence[str]) -> list[OutboxEntry]:
        client = self._client()
        out: list[OutboxEntry] = []
        for chunk in _chunks(ids, BATCH):
            with _mapped("intents"):
                values = _maybe(await client.hmget(self._keys.intent, chunk))
            # an intent committed or discarded between the two reads is simply gone
            out.extend(
                OutboxEntry.from_json(v).with_(id=i, state="intent")
                for i, v in zip(chunk, values, strict=True)
                if v is not None
            )
        return out

    async def claim(self, owner: str, ttl: float) -> list[int]:
        if not owner or "\n" in owner:
            raise StoreError(f"not a lease owner name: {owner!r}")
        keys = self._keys
        leases = [keys.lease(p) for p in range(self.partitions)]
        held = await self._run(
            "claim",
            [keys.owners, *leases, *keys.streams()],
            [owner, max(1, int(ttl * 1000)), GROUP],
        )
        return [int(p) for p in held]

    async def release(self, owner: str) -> None:
        keys = self._keys
        leases = [keys.lease(p) for p in range(self.partitions)]
        await self._run("release", [keys.owners, *leases], [owner])

    async def ready(self, partition: int, after: str | None, limit: int) -> list[OutboxEntry]:
        """A plain XRANGE from `after` (the group only keeps the books): whatever the previous
        holder read and never completed is still in the stream, so a new holder sees it."""
        if not 0 <= partition < self.partitions:
            raise StoreError(f"no partition {partition} (the store has {self.partitions})")
        start = "-"
        if after:
            after_partition, sid = _entry_id(after, self.partitions)
            if after_partition != partition:
                raise StoreError(f"entry {after!r} is not in partition {partition}")
            start = f"({sid}"
        if limit < 1:
            return []
        keys = self._keys
        flat = await self._run(
            "ready",
            [keys.stream(partition), keys.retry, keys.lease(partition)],
            [start, limit, GROUP, f"{partition}-"],
        )
        return [
            _ready_entry(partition, sid, data, state)
            for sid, data, state in zip(flat[0::3], flat[1::3], flat[2::3], strict=True)
        ]

    async def complete(self, entry: OutboxEntry) -> None:
        partition, sid = _entry_id(entry.id, self.partitions)
        keys = self._keys
        await self._run(
            "complete", [keys.stream(partition), keys.counts, keys.retry], [GROUP, sid, entry.id]
        )

    async def reschedule(self, entry: OutboxEntry) -> None:
        partition, sid = _entry_id(entry.id, self.partitions)
        state = orjson.dumps({"a": entry.attempts, "n": entry.next_at, "e": entry.last_error})
        await self._run(
            "reschedule", [self._keys.stream(partition), self._keys.retry], [sid, entry.id, state]
        )

    async def dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        partition, sid = _entry_id(entry.id, self.partitions)
        keys = self._keys
        state = orjson.dumps(
            {"a": entry.attempts, "n": entry.next_at, "e": entry.last_error, "r": reason}
        )
        await self._run(
            "dead_letter",
            [keys.stream(partition), keys.counts, keys.retry, keys.dead, keys.dead_order],
            [GROUP, sid, entry.id, state, sid.split("-", 1)[0]],
        )

    async def revive(self, ids: Iterable[str] | None) -> int:
        """Dead letters go to the END of their partition (new ids): the writes that followed
        them have been applied already."""
        keys = self._keys
        script_keys = [keys.dead, keys.dead_order, keys.retry, keys.counts, *keys.streams()]
        revived = 0
        if ids is not None:
            wanted = [(i, _entry_id(i, self.partitions)[0]) for i in ids]
            for chunk in _chunks(wanted, BATCH):
                args = [x for i, p in chunk for x in (i, p)]
                revived += int(await self._run("revive", script_keys, args))
            return revived
        client = self._client()
        while True:
            with _mapped("revive"):
                batch = _texts(await client.zrange(keys.dead_order, 0, BATCH - 1))
            if not batch:
                return revived
            # the script removes every id it is given from dead:order, so this loop ends
            args = [x for i in batch for x in (i, _entry_id(i, self.partitions)[0])]
            revived += int(await self._run("revive", script_keys, args))

    async def drop(self, ids: Iterable[str]) -> int:
        """Any state: an intent ("i…"), a ready entry or a dead letter."""
        keys = self._keys
        triples: list[tuple[str, str, str]] = []
        for entry_id in ids:
            if entry_id.startswith("i"):
                _intent_number(entry_id)
                triples.append((entry_id, "i", ""))
            else:
                partition, sid = _entry_id(entry_id, self.partitions)
                triples.append((entry_id, str(partition), sid))
        script_keys = [
            keys.intent, keys.intent_created, keys.dead, keys.dead_order, keys.retry,
            keys.counts, *keys.streams(),
        ]  # fmt: skip
        dropped = 0
        for chunk in _chunks(triples, BATCH):
            args = [GROUP, *(x for triple in chunk for x in triple)]
            dropped += int(await self._run("drop", script_keys, args))
        return dropped

    async def entries(self, state: str, limit: int) -> list[OutboxEntry]:
        if limit < 1:
            return []
        client = self._client()
        keys = self._keys
        if state == "intent":
            with _mapped("entries"):
                ids = _texts(await client.zrange(keys.intent_created, 0, limit - 1))
            return await self._intents_by_id(ids)
        if state == "ready":
            # each partition's head, merged by commit time: oldest first across the fleet
            with _mapped("entries"):
                async with client.pipeline(transaction=False) as pipe:
                    for stream in keys.streams():
                        pipe.xrange(stream, count=limit)
                    heads = await pipe.execute()
            rows = sorted(
                (_stream_order(sid), p, sid, fields["d"])
                for p, head in enumerate(heads)
                for sid, fields in head
            )[:limit]
            ready_ids = [f"{p}-{sid}" for _, p, sid, _ in rows]
            with _mapped("entries"):
                states = _maybe(await client.hmget(keys.retry, ready_ids)) if ready_ids else []
            return [
                _ready_entry(p, sid, data, st)
                for (_, p, sid, data), st in zip(rows, states, strict=True)
            ]
        if state == "dead":
            with _mapped("entries"):
                dead_ids = _texts(await client.zrange(keys.dead_order, 0, limit - 1))
                if not dead_ids:
                    return []
                values = _maybe(await client.hmget(keys.dead, dead_ids))
                states = _maybe(await client.hmget(keys.retry, dead_ids))
            return [
                _dead_entry(i, value, st)
                for i, value, st in zip(dead_ids, values, states, strict=True)
                if value is not None
            ]
        raise StoreError(f"unknown entry state {state!r} (ready, intent or dead)")

    async def stats(self) -> OutboxStats:
        """Exact counts (XLEN, ZCARD, and target counters the scripts keep); the oldest age is
        the oldest of each partition's first entry and of the intents."""
        client = self._client()
        keys = self._keys
        with _mapped("stats"):
            async with client.pipeline(transaction=False) as pipe:
                for stream in keys.streams():
                    pipe.xlen(stream)
                for stream in keys.streams():
                    pipe.xrange(stream, count=1)
                pipe.zcard(keys.intent_created)
                pipe.zrange(keys.intent_created, 0, 0, withscores=True)
                pipe.zcard(keys.dead_order)
                pipe.hgetall(keys.counts)
                results = await pipe.execute()
        n = self.partitions
        lengths, heads = results[:n], results[n : 2 * n]
        intents, first_intent, dead, counts = results[2 * n :]
        created = [orjson.loads(fields["d"])["created"] for head in heads for _, fields in head]
        created.extend(score for _, score in first_intent)
        return OutboxStats(
            ready=sum(lengths),
            intents=intents,
            dead=dead,
            oldest_age_s=(time.time() - min(created)) if created else None,
            by_target={t: int(c) for t, c in counts.items() if int(c) > 0},
        )

    # --- id map ----------------------------------------------------------------------------

    async def map_lookup(self, resource: str, side: Side, key: str) -> IdEntry | None:
        keys = self._keys
        raw = await self._run(
            "map_lookup", [keys.map(side, resource), keys.map("rec", resource)], [key]
        )
        return None if raw is None else _id_entry(resource, raw)

    async def map_put(self, entries: Iterable[IdEntry]) -> int:
        keys = self._keys
        items = list(entries)
        for chunk in _chunks(items, BATCH):
            script_keys = [k for item in chunk for k in _map_keys(keys, item)]
            args = [a for item in chunk for a in _map_args(item)]
            await self._run("map_put", script_keys, args)
        return len(items)

    async def map_scan(self, resource: str) -> AsyncIterator[IdEntry]:
        """HSCAN pages: memory stays one page. SCAN may repeat an element only while the hash
        shrinks, and the record hash never shrinks (records are updated, not removed)."""
        client = self._client()
        name = self._keys.map("rec", resource)
        cursor = 0
        while True:
            with _mapped("map_scan"):
                cursor, page = await client.hscan(name, cursor, count=SCAN_PAGE)
            for raw in cast("dict[str, str]", page).values():
                yield _id_entry(resource, raw)
            if cursor == 0:
                return


# --- helpers ---------------------------------------------------------------------------------

_READ_ONLY = frozenset({"map_lookup"})
"""Scripts that change nothing, and so may be run again after a broken connection."""


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """The one place where Redis failures become StoreError (the caller answers 503)."""
    try:
        yield
    except StoreError:
        raise
    except (RedisError, OSError) as exc:
        kind = type(exc).__name__
        raise StoreError(f"redis {what} failed: {kind}: {exc}") from exc


def _script(body: str, *, writes: bool) -> str:
    # A shebang makes Redis 7 judge the script before it runs: refused whole when out of
    # memory, never half-applied. no-writes lets the lookup run on a read replica.
    return ("#!lua\n" if writes else "#!lua flags=no-writes\n") + _LUA_COMMON + body


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _texts(values: Any) -> list[str]:
    # the client decodes replies (decode_responses=True); its types can't know that
    return [str(v) for v in values]


def _maybe(values: Any) -> list[str | None]:
    return [None if v is None else str(v) for v in values]


def _intent_number(intent_id: str) -> int:
    if not (intent_id.startswith("i") and intent_id[1:].isdigit()):
        raise StoreError(f"not an intent id: {intent_id!r}")
    return int(intent_id[1:])


def _entry_id(entry_id: str, partitions: int) -> tuple[int, str]:
    """ "3-1700000000000-0" -> (3, "1700000000000-0")."""
    head, _, sid = entry_id.partition("-")
    if not head.isdigit() or not _STREAM_ID.fullmatch(sid):
        raise StoreError(f"not an outbox entry id: {entry_id!r}")
    partition = int(head)
    if partition >= partitions:
        raise StoreError(f"entry {entry_id!r} names partition {partition} of {partitions}")
    return partition, sid


def _stream_order(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq)


def _ready_entry(partition: int, sid: str, data: str, state: str | None) -> OutboxEntry:
    entry = OutboxEntry.from_json(data).with_(id=f"{partition}-{sid}", state="ready")
    if state is None:
        return entry
    retry = orjson.loads(state)
    return entry.with_(attempts=retry["a"], next_at=retry["n"], last_error=retry["e"])


def _dead_entry(entry_id: str, value: str, state: str | None) -> OutboxEntry:
    _, _, data = value.partition("\n")
    entry = OutboxEntry.from_json(data).with_(id=entry_id, state="dead")
    if state is None:
        return entry
    retry = orjson.loads(state)
    return entry.with_(
        attempts=retry["a"], next_at=retry["n"], last_error=retry["e"], dead_reason=retry.get("r")
    )


def _map_keys(keys: _Keys, item: IdEntry) -> list[str]:
    return [
        keys.map("rec", item.resource),
        keys.map("old", item.resource),
        keys.map("new", item.resource),
    ]


def _map_args(item: IdEntry) -> list[str]:
    born = item.id_on(item.origin)
    if born is None:
        raise StoreError(f"a {item.resource} record born on {item.origin} needs that id")
    old_key = "" if item.old is None else "=" + key_text(item.old)
    new_key = "" if item.new is None else "=" + key_text(item.new)
    record = orjson.dumps(
        {
            "old": item.old,
            "new": item.new,
            "origin": item.origin,
            "deleted": item.deleted,
            "ok": old_key,
            "nk": new_key,
        }
    ).decode()
    return [f"{item.origin}:{key_text(born)}", old_key, new_key, record]


def _id_entry(resource: str, raw: str) -> IdEntry:
    data = orjson.loads(raw)
    return IdEntry(
        resource=resource,
        old=data["old"],
        new=data["new"],
        origin=data["origin"],
        deleted=data["deleted"],
    )
