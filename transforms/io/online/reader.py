"""`FeatureReader`: online features by entity, in batches, for serving code and `get_features`.

    reader = FeatureReader("shop.yaml", "redis://localhost:6379/0")
    rows = reader.get("user_5m", ["u1", "u2"])   # one OnlineFeatures per entity, in order
    rows[0].features["clicks"], rows[0].event_timestamp

No Beam import (a call of `get_features` takes a fraction of a second). The store is opened
read-only: a SQLite file that does not exist is not created, and a store that does not hold the
view as the spec declares it (a wrong path, another spec) raises StoreNotFoundError rather than
answering all nulls.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, Iterable, NamedTuple, Optional, Sequence, Union

from transforms.io.online.base import OnlineStore, StoredRecord
from transforms.io.online.feast_codec import rfc3339
from transforms.io.online.registry import open_online_store
from transforms.records import ViewLayout
from transforms.spec import FeatureSpecFile, load_spec

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class OnlineFeatures(NamedTuple):
    """One entity's features as stored online; every time None when the entity has none."""

    view: str
    entity: Any
    features: dict[str, Any]
    event_timestamp: Optional[dt.datetime]  # the window's end (Feast's event time of the row)
    created_timestamp: Optional[dt.datetime]  # when the stored pane was written
    window_start: Optional[dt.datetime]
    window_end: Optional[dt.datetime]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: times as RFC 3339 strings in UTC with milliseconds."""
        return {"view": self.view, "entity": self.entity,
                "event_timestamp": _text(self.event_timestamp), "created_timestamp": _text(self.created_timestamp),
                "window_start": _text(self.window_start), "window_end": _text(self.window_end),
                "features": self.features}


def _text(value: Optional[dt.datetime]) -> Optional[str]:
    return None if value is None else rfc3339((value - _EPOCH) // dt.timedelta(milliseconds=1))


def _time(millis: Optional[int]) -> Optional[dt.datetime]:
    return None if millis is None else _EPOCH + dt.timedelta(milliseconds=millis)


class FeatureReader:
    """Reads the online store the pipelines write (SQLite or Redis, Feast's layouts).

    `get` answers a whole batch in a few round trips (Redis: pipelined HMGETs; SQLite: one query
    per 900 entities); large lists are read `batch_size` entities at a time. Use it as a context
    manager, or call `close()`.
    """

    def __init__(self, spec: Union[FeatureSpecFile, str, os.PathLike], url: str, batch_size: int = 2000):
        self.spec = spec if isinstance(spec, FeatureSpecFile) else load_spec(str(spec))
        self.batch_size = batch_size
        self._store: OnlineStore = open_online_store(url, self.spec, _read_layouts(self.spec), read_only=True)

    def layout(self, view: str) -> ViewLayout:
        """The view's join key, key type and features (SpecError for a view not in the spec)."""
        return self._store.layout(view)

    def get(self, view: str, entities: Iterable[Any]) -> list[OnlineFeatures]:
        """Features of `view` for each entity, in order; an unknown (or expired) entity gets
        None for every feature and time. Keys of an int64 entity may be given as digit strings."""
        layout = self.layout(view)
        keys = _keys(layout, list(entities))
        out: list[OnlineFeatures] = []
        for i in range(0, len(keys), self.batch_size):
            batch = keys[i:i + self.batch_size]
            out += (_row(view, layout, key, stored)
                    for key, stored in zip(batch, self._store.read_stored(view, batch)))
        return out

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_layouts(spec: FeatureSpecFile) -> dict[str, ViewLayout]:
    """The spec's layouts (records.layouts) without value types: a read decodes each Feast Value by
    its own tag, and the types would import the aggregations (numpy, pyarrow, sketches: ~0.2 s of
    a CLI call)."""
    def layout(name: str, entity: str, features: tuple[str, ...], ttl: Optional[int],
               period: Optional[int]) -> ViewLayout:
        key = spec.entities[entity]
        return ViewLayout(name, key.join_key, key.dtype, features, (), ttl, period)

    out = {v.name: layout(v.name, v.entity, tuple(f.name for f in v.features), v.ttl, v.period_seconds)
           for v in spec.feature_views}
    out.update({e.name: layout(e.name, e.entity, ("embedding",), e.ttl, None) for e in spec.embeddings})
    return out


def _keys(layout: ViewLayout, entities: Sequence[Any]) -> list[Any]:
    if layout.key_dtype != "int64":
        return [str(e) for e in entities]
    try:
        return [int(e) for e in entities]
    except (TypeError, ValueError):
        raise ValueError(f"{layout.join_key} is an int64 key (got {entities!r})") from None


def _row(view: str, layout: ViewLayout, entity: Any, stored: Optional[StoredRecord]) -> OnlineFeatures:
    if stored is None:
        return OnlineFeatures(view, entity, dict.fromkeys(layout.feature_names), None, None, None, None)
    record = stored.record
    end = _time(record.window_end_ms)
    return OnlineFeatures(view, entity, record.features, end, _time(stored.created_ms),
                          _time(record.window_start_ms), end)
