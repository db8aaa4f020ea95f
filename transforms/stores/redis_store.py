"""Production online store in Redis, byte-compatible with Feast's Redis online store.

Key: Feast entity key v3 + project. Hash fields: murmur3 of `view:feature` -> Feast Value bytes,
`_ts:view` -> protobuf Timestamp (window end). Our bookkeeping field `_win:view` holds
"window_end_ms:pane_index:window_start_ms"; Feast ignores fields it does not ask for.
Each row is one Lua script call (atomic compare-and-set); a batch is one pipelined round trip.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import redis

from transforms.features import FeatureRow
from transforms.stores.feast_codec import (
    decode_value,
    encode_timestamp,
    encode_value,
    feature_field,
    serialize_entity_key,
)
from transforms.stores.online import (
    OnlineRecord,
    OnlineStore,
    StoreError,
    ViewLayout,
    WriteResult,
    redact_url,
    with_retries,
)
from transforms.spec import FeatureSpecFile

# KEYS[1] entity key. ARGV: win field, window end ms, pane index, win value, ttl ms, then
# field/value pairs. Returns 1 when written, 0 when the stored window/pane is newer or equal.
_UPSERT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local e, p = string.match(cur, '^(%d+):(%d+)')
  e = tonumber(e); p = tonumber(p)
  local ne = tonumber(ARGV[2]); local np = tonumber(ARGV[3])
  if ne < e or (ne == e and np <= p) then return 0 end
end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4], unpack(ARGV, 6))
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  -- The key is shared by every view of the entity: never shorten another view's expiry,
  -- and leave a key that a view without ttl made persistent as it is.
  local pttl = redis.call('PTTL', KEYS[1])
  if existed == 0 or (pttl >= 0 and pttl < ttl) then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return 1
"""

RETRIABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: str, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None):
        super().__init__(spec, views)
        self.url = redact_url(url)
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=30, socket_connect_timeout=10, health_check_interval=30
            )
        except ValueError as err:
            raise StoreError(f"--online_store: invalid Redis URL {self.url!r}: {err}") from None
        self._upsert = self._client.register_script(_UPSERT)
        self._project = spec.project.encode("utf-8")

    def _key(self, layout: ViewLayout, entity: Any) -> bytes:
        return serialize_entity_key([layout.join_key], [entity], [layout.key_dtype]) + self._project

    def ping(self) -> None:
        with_retries(self._client.ping, RETRIABLE, f"Redis {self.url}")

    def write(self, rows: Sequence[FeatureRow]) -> WriteResult:
        if not rows:
            return WriteResult(0, 0)
        return with_retries(lambda: self._write_once(rows), RETRIABLE, f"Redis {self.url}")

    def _write_once(self, rows: Sequence[FeatureRow]) -> WriteResult:
        pipe = self._client.pipeline(transaction=False)
        for row in rows:
            layout = self.layout(row.view)
            args: list[Any] = [
                f"_win:{row.view}",
                row.window_end_ms,
                row.pane_index,
                f"{row.window_end_ms}:{row.pane_index}:{row.window_start_ms}",
                (layout.ttl_seconds or 0) * 1000,
                f"_ts:{row.view}",
                encode_timestamp(row.window_end_ms),
            ]
            for name, kind, value in zip(layout.feature_names, layout.value_types, row.features):
                args.append(feature_field(row.view, name))
                args.append(encode_value(value, kind))
            self._upsert(keys=[self._key(layout, row.entity)], args=args, client=pipe)
        results = pipe.execute()
        written = sum(1 for r in results if r == 1)
        return WriteResult(written, len(results) - written)

    def read(self, view: str, entities: Sequence[Any]) -> list[Optional[OnlineRecord]]:
        layout = self.layout(view)
        fields = [feature_field(view, name) for name in layout.feature_names] + [f"_win:{view}"]

        def _read() -> list:
            pipe = self._client.pipeline(transaction=False)
            for entity in entities:
                pipe.hmget(self._key(layout, entity), fields)
            return pipe.execute()

        out: list[Optional[OnlineRecord]] = []
        for values in with_retries(_read, RETRIABLE, f"Redis {self.url}"):
            if values[-1] is None:
                out.append(None)
                continue
            end, pane, start = (int(x) for x in values[-1].split(b":"))
            features = {name: decode_value(v) for name, v in zip(layout.feature_names, values)}
            out.append(OnlineRecord(start, end, pane, features))
        return out

    def close(self) -> None:
        self._client.close()
