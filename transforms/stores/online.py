"""The online store interface: Feast-compatible layouts, atomic monotonic upserts, URL dispatch.

Per (entity, view) the store keeps one window: the one ending at the first period boundary after
the entity's latest event (`is_current_window`). A write replaces it only when its
(window end, pane index) is greater than the stored one, so replays and late panes of older
windows never overwrite fresher values.
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeVar

from transforms.features import FeatureRow
from transforms.spec import EmbeddingSpec, FeatureSpecFile, FeatureViewSpec, SpecError

T = TypeVar("T")
_LOG = logging.getLogger(__name__)


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


_SECRET_QUERY_KEYS = frozenset({"password", "ssl_password"})


def redact_url(url: str) -> str:
    """The URL with any password (in the user info or a `password=` / `ssl_password=` query
    parameter) replaced by ***, safe for logs and errors.

    When in doubt it hides more: an unencoded `/`, `?` or `#` in a password ends the authority
    early and pushes the rest of the password into the path, so if an `@` follows a host part
    that has none, everything up to the last `@` is hidden.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            netloc = f"{user}:***@{hostport}"
    elif netloc and "@" in url[url.index(netloc) + len(netloc):]:
        return f"{parts.scheme}://***@{url.rpartition('@')[2]}"
    query = "&".join(
        f"{pair.partition('=')[0]}=***"
        if pair.partition("=")[0].lower() in _SECRET_QUERY_KEYS else pair
        for pair in parts.query.split("&")
    ) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


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
    give_up: Optional[Callable[[BaseException], bool]] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `call`, retrying `retriable` errors with bounded exponential backoff and jitter.

    Safe because every store write is idempotent and monotonic. After the budget, raise
    StoreError: the bundle fails and the runner retries or fails the job - never a silent drop.
    Errors for which `give_up(err)` is true (a wrong password...) raise StoreError at once.

    The wait before attempt n+1 is drawn from [d/2, d], d = min(max_delay, base_delay * 2**(n-1))
    ("equal jitter"): callers still spread out, but the waits never collapse towards zero. With
    the defaults the five waits add up to 3.1-6.2 s, so a Redis restart or failover of 1-2 s is
    always bridged; with full jitter ([0, d]) they added up to under 2 s in 17% of runs.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except retriable as err:
            if give_up is not None and give_up(err):
                raise StoreError(f"{what}: {err}") from err
            if attempt == attempts:
                raise StoreError(f"{what}: failed after {attempts} attempts: {err}") from err
            cap = min(max_delay, base_delay * 2 ** (attempt - 1))
            delay = random.uniform(cap / 2, cap)
            _LOG.warning("%s: attempt %d of %d failed (%s); retrying in %.2f s",
                         what, attempt, attempts, err, delay)
            if on_retry:
                on_retry(attempt, err)
            sleep(delay)
    raise AssertionError("unreachable")
