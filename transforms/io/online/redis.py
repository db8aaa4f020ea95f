"""Production online store in Redis, byte-compatible with Feast's Redis online store.

Key: Feast entity key v3 + project. Hash fields: murmur3 of `view:feature` -> Feast Value bytes,
`_ts:view` -> protobuf Timestamp (window end). Our bookkeeping field `_win:view` holds
"window_end_ms:pane_index:window_start_ms:created_ms" (created: when the pane was written; Feast's
Redis layout keeps no created time); Feast ignores fields it does not ask for.
A batch is one Lua script call (an atomic compare-and-set per row), one round trip.

Beside the entity keys, the hash `feature_pipelines:<project>` maps each view written to its
feature names (set once per writer and view), so that a reader tells "not in this store / written
with another spec" (StoreNotFoundError) from "no features for this entity yet" (None).

URL forms (`--online_store`, checked by config.RedisConfig); a query parameter we do not know is an
error, not ignored:

    redis://host:6379/0                               no auth
    redis://:password@host:6379/0                     requirepass (the default user)
    redis://user:password@host:6379/0                 ACL user
    rediss://host:6380/0?ssl_ca_certs=/etc/ca.pem     TLS, server verified against a private CA
        &ssl_cert_reqs=required|optional|none         (default required; none skips verification)
        &ssl_check_hostname=false                     (default true when verifying)
        &ssl_certfile=/c.pem&ssl_keyfile=/c.key       (client certificate, for mutual TLS)

Percent-encode `@ : / ? #` in user names and passwords (`p@ss` -> `p%40ss`).
"""

from __future__ import annotations

import ssl
import struct
import time
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from transforms.io.online.base import (
    OnlineRecord,
    OnlineStore,
    StoredRecord,
    StoreError,
    StoreNotFoundError,
    WriteResult,
    check_complete,
    with_retries,
)
from transforms.io.online.config import RedisConfig
from transforms.io.online.feast_codec import (
    decode_value,
    encode_timestamp,
    entity_key_encoder,
    feature_field,
    value_encoder,
)
from transforms.records import FeatureRow, ViewLayout
from transforms.spec import FeatureSpecFile

T = TypeVar("T")

REGISTRY_PREFIX = "feature_pipelines:"

# One call per batch, one argument: the rows packed by _BatchPacker.pack (struct.unpack, built into
# Redis's Lua, reads them back; "I4c0" is a 4-byte length and that many bytes).
#   B  number of views; per view: I4c0 name, i8 ttl ms (0: none), I2 n features, n x I4c0 field hash
#   per row (KEYS[i] its entity key): B view (1-based), i8 window end ms, i8 pane index,
#     I4c0 "window_end_ms:pane_index:window_start_ms:created_ms" (the _win value), I4c0 the _ts
#     value, n x I4c0 feature values
# Returns one character a row: 1 written, 0 the stored window/pane is newer, 2 the same pane (a
# replay - or our own earlier attempt at this batch, if the reply was lost).
_UPSERT = """
local blob = ARGV[1]
local nviews, pos = struct.unpack('<B', blob, 1)
local views = {}
for v = 1, nviews do
  local name, ttl, n
  name, ttl, n, pos = struct.unpack('<I4c0i8I2', blob, pos)
  -- HSET arguments after the key, reused for every row of the view: win, ts, then field/value
  -- pairs; the values are filled in per row.
  local hset = {'_win:' .. name, false, '_ts:' .. name, false}
  for j = 1, n do
    hset[3 + 2 * j], pos = struct.unpack('<I4c0', blob, pos)
    hset[4 + 2 * j] = false
  end
  views[v] = {winf = hset[1], ttl = ttl, n = n, hset = hset,
              fmt = '<Bi8i8I4c0I4c0' .. string.rep('I4c0', n)}
end
local results = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local view = views[string.byte(blob, pos)]
  local n, hset = view.n, view.hset
  local row = {struct.unpack(view.fmt, blob, pos)}
  pos = row[n + 6]
  local ne, np = row[2], row[3]
  local status = '1'
  local cur = redis.call('HGET', key, view.winf)
  if cur then
    local e, p = string.match(cur, '^(%d+):(%d+)')
    e = tonumber(e); p = tonumber(p)
    if ne < e or (ne == e and np < p) then status = '0' elseif ne == e and np == p then status = '2' end
  end
  if status == '1' then
    hset[2] = row[4]; hset[4] = row[5]
    for j = 1, n do hset[4 + 2 * j] = row[5 + j] end
    -- The key is shared by every view of the entity: never shorten another view's expiry, and
    -- leave a key that a view without ttl made persistent as it is (PTTL: -2 new, -1 no expiry).
    local ttl, pttl = view.ttl, 0
    if ttl > 0 then pttl = redis.call('PTTL', key) end
    redis.call('HSET', key, unpack(hset))
    if ttl > 0 and (pttl == -2 or (pttl >= 0 and pttl < ttl)) then redis.call('PEXPIRE', key, ttl) end
  end
  results[i] = status
end
return table.concat(results)
"""

RETRIABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
# AuthorizationError is recent in redis-py (we accept redis>=5).
_AUTH_ERRORS = tuple(getattr(redis.exceptions, name)
                     for name in ("AuthenticationError", "AuthorizationError")
                     if hasattr(redis.exceptions, name))


def _is_permanent(err: BaseException) -> bool:
    """Errors no retry fixes: redis-py files a wrong password and a failed TLS certificate check
    under ConnectionError, but waiting will not make them succeed."""
    if not isinstance(err, RETRIABLE):
        return True
    if isinstance(err, _AUTH_ERRORS):
        return True
    return isinstance(err.__cause__ or err.__context__, ssl.SSLCertVerificationError)


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: Union[str, RedisConfig], spec: FeatureSpecFile,
                 views: Optional[dict[str, ViewLayout]] = None, read_only: bool = False):
        super().__init__(spec, views)
        self.read_only = read_only
        config = url if isinstance(url, RedisConfig) else RedisConfig.from_url(url)
        url = config.url
        self.url = config.redacted
        try:
            # One retry policy, ours (bounded, logged, counted). redis-py may reconnect once,
            # without waiting, for a pooled connection the server closed while idle; its own
            # default has changed between releases (none, 3, now 10 retries) and would multiply ours.
            # Connecting is one round trip plus a TLS handshake: 5 s keeps a black-holed host's
            # whole budget (6 attempts) under a minute.
            self._client = redis.Redis.from_url(
                url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30,
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as err:
            raise StoreError(f"--online_store: invalid Redis URL {self.url!r}: {err}") from None
        self._upsert = self._client.register_script(_UPSERT)
        self._project = spec.project.encode("utf-8")
        self._packer = _BatchPacker(self.layout, self._project)
        self._registry = f"{REGISTRY_PREFIX}{spec.project}"
        self._registered: set[str] = set()  # views this writer has put in the registry
        self._checked: set[str] = set()  # views this reader found in the registry

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.url!r}, project={self.project!r})"

    def _key(self, layout: ViewLayout, entity: Any) -> bytes:
        return self._packer.view(layout.name).key(entity)

    def _retrying(self, call: Callable[[], T]) -> T:
        """`call` under with_retries; every Redis error comes out as a StoreError naming the
        (redacted) URL."""
        return with_retries(call, (redis.RedisError,), f"Redis {self.url}", give_up=_is_permanent,
                            on_retry=self._retried)

    def ping(self) -> None:
        self._retrying(self._client.ping)

    def write(self, rows: Sequence[FeatureRow]) -> WriteResult:
        if not rows:
            return WriteResult(0, 0)
        attempts = 0

        def _write() -> WriteResult:
            nonlocal attempts
            attempts += 1
            return self._write_once(rows, retried=attempts > 1)

        return self._retrying(_write)

    def _fields(self, view: str) -> tuple[bytes, ...]:
        """The view's hash fields (murmur3 of view:feature), computed once per store."""
        return self._packer.view(view).fields

    def _register(self, views: set[str]) -> None:
        """Put views this writer has not registered yet in the project's registry hash."""
        new = views - self._registered
        if new:
            self._client.hset(self._registry, mapping={
                view: ",".join(self.layout(view).feature_names) for view in sorted(new)})
            self._registered |= new

    def _write_once(self, rows: Sequence[FeatureRow], retried: bool = False) -> WriteResult:
        self._register({row.view for row in rows})
        # One script call per batch (an atomic compare-and-set per row), unless it spans more than
        # MAX_VIEWS views.
        results = b"".join(self._upsert(keys=keys, args=[blob])
                           for keys, blob in self._packer.pack(rows, int(time.time() * 1000)))
        # After a lost reply, rows our earlier attempt applied come back as "same pane": count
        # them as written, so rows_written does not depend on where a connection dropped.
        written = results.count(b"1") + (results.count(b"2") if retried else 0)
        return WriteResult(written, len(results) - written)

    def _check_view(self, view: str) -> None:
        """A reader's check, once per view: the registry names the view with the spec's features."""
        if not self.read_only or view in self._checked:
            return
        registered = self._retrying(lambda: self._client.hgetall(self._registry))
        views = {k.decode(): v.decode() for k, v in registered.items()}
        where = f"Redis {self.url}"
        if view not in views:
            raise StoreNotFoundError(
                f"--online_store: {where} has no view {view!r} of project {self.project!r}: written with "
                f"another spec? (views of {self.project!r} in it: {', '.join(sorted(views)) or 'none'})")
        check_complete(self.layout(view), views[view].split(","), where)
        self._checked.add(view)

    def read_stored(self, view: str, entities: Sequence[Any]) -> list[Optional[StoredRecord]]:
        layout = self.layout(view)
        self._check_view(view)
        names = layout.feature_names
        fields = [*self._fields(view), f"_win:{view}".encode()]
        keys = [self._key(layout, entity) for entity in entities]

        def _read() -> list:
            # HMGET per key, pipelined: one round trip per batch (what Feast's reader sends too).
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, fields)
            return pipe.execute()

        out: list[Optional[StoredRecord]] = []
        for values in self._retrying(_read):
            win = values[-1]
            if win is None:
                out.append(None)
                continue
            if self.read_only and None in values:
                check_complete(layout, [n for n, v in zip(names, values) if v is not None], f"Redis {self.url}")
            end, pane, start, *created = (int(x) for x in win.split(b":"))
            features = {name: decode_value(v) for name, v in zip(names, values)}
            out.append(StoredRecord(OnlineRecord(start, end, pane, features), created[0] if created else None))
        return out

    def close(self) -> None:
        self._client.close()


_U32 = struct.Struct("<I").pack
_I64 = struct.Struct("<q").pack
_U16 = struct.Struct("<H").pack
_ROW_HEAD = struct.Struct("<BqqI").pack  # view, window end, pane index, length of the _win value
MAX_VIEWS = 255  # per script call


class _ViewPacker:
    """What _UPSERT needs of one view, computed once per store: the entity key encoder, the
    hash fields (murmur3 of view:feature), the value encoders and the view's header in a batch."""

    def __init__(self, layout: ViewLayout, project: bytes):
        self.key = entity_key_encoder(layout.join_key, layout.key_dtype, project)
        self.fields = tuple(feature_field(layout.name, name) for name in layout.feature_names)
        self.encoders = tuple(value_encoder(kind) for kind in layout.value_types)
        name = layout.name.encode("utf-8")
        self.header = b"".join([_U32(len(name)), name, _I64((layout.ttl_seconds or 0) * 1000),
                                _U16(len(self.fields)), *(_U32(len(f)) + f for f in self.fields)])


class _BatchPacker:
    """Rows -> (entity keys, the one argument of _UPSERT) per call: see the layout above _UPSERT."""

    def __init__(self, layout: Callable[[str], ViewLayout], project: bytes):
        self._layout = layout
        self._project = project
        self._views: dict[str, _ViewPacker] = {}

    def view(self, name: str) -> _ViewPacker:
        packer = self._views.get(name)
        if packer is None:
            layout = self._layout(name)
            if len(layout.feature_names) > 65535:
                raise StoreError(f"view {name!r}: {len(layout.feature_names)} features, "
                                 "the Redis sink takes at most 65535 per view")
            packer = self._views[name] = _ViewPacker(layout, self._project)
        return packer

    def pack(self, rows: Sequence[FeatureRow], created_ms: int) -> list[tuple[list[bytes], bytes]]:
        """(entity keys, argument) per script call: one call, unless the rows span more than
        MAX_VIEWS views (a view's number in a batch is one byte)."""
        calls = []
        order: dict[str, int] = {}  # view -> its 1-based number in this call
        headers: list[bytes] = []
        keys: list[bytes] = []
        parts: list[bytes] = []
        append, u32 = parts.append, _U32
        created = f":{created_ms}"
        last_end, ts = None, b""  # rows of a batch mostly share window ends: encode each once
        for row in rows:
            name = row.view
            number = order.get(name)
            if number is None:
                if len(order) == MAX_VIEWS:
                    calls.append((keys, b"".join([bytes((len(order),)), *headers, *parts])))
                    order, headers, keys, parts = {}, [], [], []
                    append = parts.append
                view = self.view(name)
                number = order[name] = len(order) + 1
                headers.append(view.header)
            else:
                view = self._views[name]
            keys.append(view.key(row.entity))
            end = row.window_end_ms
            win = f"{end}:{row.pane_index}:{row.window_start_ms}{created}".encode()
            if end != last_end:
                last_end, ts = end, encode_timestamp(end)
            append(_ROW_HEAD(number, end, row.pane_index, len(win)) + win + u32(len(ts)) + ts)
            for encode, value in zip(view.encoders, row.features):
                data = encode(value)
                append(u32(len(data)) + data)
        calls.append((keys, b"".join([bytes((len(order),)), *headers, *parts])))
        return calls
