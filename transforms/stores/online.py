"""The online store interface: Feast-compatible layouts, atomic monotonic upserts, URL dispatch.

Per (entity, view) the store keeps one window: the one ending at the first period boundary after
the entity's latest event (`is_current_window`). A write replaces it only when its
(window end, pane index) is greater than the stored one, so replays and late panes of older
windows never overwrite fresher values.
"""

from __future__ import annotations

import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeVar

from transforms.features import FeatureRow
from transforms.spec import EmbeddingSpec, FeatureSpecFile, FeatureViewSpec, SpecError

T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot be used (bad URL, unreachable after retries); message is safe to print."""


@dataclass(frozen=True)
class ViewLayout:
    """What a store needs to know about one view (or embedding), derived from the spec."""

    name: str
    join_key: str
    key_dtype: str  # string | int64
    feature_names: tuple[str, ...]
    value_types: tuple[str, ...]  # int64 | double | string | float_list
    ttl_seconds: Optional[int]
    period_seconds: Optional[int]  # None: every window is current (sessions)

    @classmethod
    def from_view(cls, spec: FeatureSpecFile, view: FeatureViewSpec) -> "ViewLayout":
        entity = spec.entities[view.entity]
        return cls(
            name=view.name,
            join_key=entity.join_key,
            key_dtype=entity.dtype,
            feature_names=tuple(f.name for f in view.features),
            value_types=tuple(spec.value_type(f) for f in view.features),
            ttl_seconds=view.ttl,
            period_seconds=view.period_seconds,
        )

    @classmethod
    def from_embedding(cls, spec: FeatureSpecFile, embedding: EmbeddingSpec) -> "ViewLayout":
        entity = spec.entities[embedding.entity]
        return cls(
            name=embedding.name,
            join_key=entity.join_key,
            key_dtype=entity.dtype,
            feature_names=("embedding",),
            value_types=("float_list",),
            ttl_seconds=embedding.ttl,
            period_seconds=None,
        )


def layouts(spec: FeatureSpecFile) -> dict[str, ViewLayout]:
    """Every online "view" of the spec: feature views and embeddings (one feature `embedding`)."""
    out = {v.name: ViewLayout.from_view(spec, v) for v in spec.feature_views}
    out.update({e.name: ViewLayout.from_embedding(spec, e) for e in spec.embeddings})
    return out


def is_current_window(row: FeatureRow, layout: ViewLayout) -> bool:
    """True when the row's window ends at the first period boundary after its latest event.

    Sliding windows put each event in size/period windows; only the earliest-ending one is the
    entity's "current" value. Later windows holding only older events are offline-only.
    """
    if layout.period_seconds is None:
        return True
    return row.window_end_ms - layout.period_seconds * 1000 <= row.max_event_time_ms


class OnlineRecord(NamedTuple):
    window_start_ms: int
    window_end_ms: int
    pane_index: int
    features: dict[str, Any]


class WriteResult(NamedTuple):
    written: int
    stale: int  # refused because the store already held a newer (window end, pane index)


class OnlineStore:
    """Base class: `write` is atomic and monotonic per (entity, view); `read` returns None when
    the entity is unknown (or expired)."""

    def __init__(self, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None):
        self.project = spec.project
        self.views = views if views is not None else layouts(spec)

    def write(self, rows: Sequence[FeatureRow]) -> WriteResult:
        raise NotImplementedError

    def read(self, view: str, entities: Sequence[Any]) -> list[Optional[OnlineRecord]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def layout(self, view: str) -> ViewLayout:
        try:
            return self.views[view]
        except KeyError:
            raise SpecError(f"unknown view {view!r} (views: {', '.join(self.views)})") from None


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and errors."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def open_online_store(
    url: str, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None
) -> OnlineStore:
    """sqlite:///path.db (embedded default) | redis://[user:password@]host:port/db | rediss://..."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from transforms.stores.sqlite_store import SqliteOnlineStore

        return SqliteOnlineStore(url, spec, views)
    if scheme in ("redis", "rediss", "unix"):
        from transforms.stores.redis_store import RedisOnlineStore

        return RedisOnlineStore(url, spec, views)
    raise StoreError(
        f"--online_store: unsupported URL {redact_url(url)!r} "
        "(expected sqlite:///path/online.db, redis://host:port/db or rediss://host:port/db)"
    )


def with_retries(
    call: Callable[[], T],
    retriable: tuple[type[BaseException], ...],
    what: str,
    attempts: int = 6,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    on_retry: Optional[Callable[[int, BaseException], None]] = None,
) -> T:
    """Run `call`, retrying `retriable` errors with bounded exponential backoff and full jitter.

    Safe because every store write is idempotent and monotonic. After the budget, raise
    StoreError: the bundle fails and the runner retries or fails the job - never a silent drop.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except retriable as err:
            if attempt == attempts:
                raise StoreError(f"{what}: failed after {attempts} attempts: {err}") from err
            if on_retry:
                on_retry(attempt, err)
            time.sleep(random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")
