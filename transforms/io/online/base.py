"""The online store interface (atomic monotonic upserts, reads) and the retry policy the
backends share; `registry.open_online_store` opens one from its URL.

Per (entity, view) the store keeps one window: the one ending at the first period boundary after
the entity's latest event (`is_current_window`). A write replaces it only when its
(window end, pane index) is greater than the stored one, so replays and late panes of older
windows never overwrite fresher values.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Container, NamedTuple, Optional, Sequence, TypeVar

from transforms.records import FeatureRow, ViewLayout, layouts
from transforms.spec import FeatureSpecFile, SpecError

T = TypeVar("T")
_LOG = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store cannot be used (bad URL, unreachable after retries); message is safe to print."""


class StoreConfigError(StoreError, ValueError):
    """The --online_store URL is malformed or unsupported: a usage error (exit 2), never retried."""


class StoreNotFoundError(StoreError):
    """A reader found no store, or not this spec's views in it (a wrong path or URL, or a store
    written with another spec): a usage error, not a failure to retry."""


class OnlineRecord(NamedTuple):
    window_start_ms: int
    window_end_ms: int
    pane_index: int
    features: dict[str, Any]


class StoredRecord(NamedTuple):
    """A read with what readers show beside the values: when the stored pane was written."""

    record: OnlineRecord
    created_ms: Optional[int]  # None in Redis keys written before created times were kept


class WriteResult(NamedTuple):
    written: int
    stale: int  # refused because the store already held a newer (window end, pane index)


class OnlineStore:
    """Base class: `write` is atomic and monotonic per (entity, view); `read` returns None when
    the entity is unknown (or expired)."""

    # Rows per `write` call the sink gathers (WriteOnline without a batch_size).
    WRITE_BATCH_ROWS = 500

    def __init__(self, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None):
        self.project = spec.project
        self.views = views if views is not None else layouts(spec)
        # called once per retried attempt: the sink counts them (online_store.retries)
        self.on_retry: Optional[Callable[[], None]] = None

    def _retried(self, attempt: int, err: BaseException) -> None:
        if self.on_retry is not None:
            self.on_retry()

    def write(self, rows: Sequence[FeatureRow]) -> WriteResult:
        raise NotImplementedError

    def read(self, view: str, entities: Sequence[Any]) -> list[Optional[OnlineRecord]]:
        return [stored.record if stored else None for stored in self.read_stored(view, entities)]

    def read_stored(self, view: str, entities: Sequence[Any]) -> list[Optional[StoredRecord]]:
        """One batch of entities in a few round trips; None for an unknown (or expired) entity.
        A store opened `read_only` raises StoreNotFoundError when the view is not in it."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def layout(self, view: str) -> ViewLayout:
        try:
            return self.views[view]
        except KeyError:
            raise SpecError(f"unknown view {view!r} (views: {', '.join(self.views)})") from None


def check_complete(layout: ViewLayout, stored: Container[str], where: str) -> None:
    """Every write stores every feature of its view: a stored entity without one of them means the
    store was written with another spec (the same view name, other features)."""
    missing = [name for name in layout.feature_names if name not in stored]
    if missing:
        raise StoreNotFoundError(f"--online_store: {where} holds view {layout.name!r} without feature(s) "
                                 f"{', '.join(missing)}: written with another spec?")


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
