"""Beam sinks: online store (batched per bundle), offline Parquet (feature rows and embeddings),
dead letters.

Clients are opened in `setup()` and closed in `teardown()`; rows are buffered per bundle and
written in batches (one round trip per batch), flushed at the latest in `finish_bundle()`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import defaultdict
from typing import Any, Iterable, Optional, Union

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection

from transforms.io import offline
from transforms.io.commit import CommitFiles, RunCommit
from transforms.io.online.base import OnlineStore
from transforms.io.online.registry import open_online_store
from transforms.records import DeadLetter, FeatureRow, ViewLayout, layouts
from transforms.spec import FeatureSpecFile
from transforms.streaming.pubsub import check_topic
from transforms.windows import is_current_window, is_stream

_LOG = logging.getLogger(__name__)
Rows = Union[FeatureRow, list, offline.RowTable]  # a row, a list of one view's rows, or them as a table


class _WriteOnlineFn(beam.DoFn):
    def __init__(self, url: str, spec: FeatureSpecFile, views: dict[str, ViewLayout],
                 batch_size: Optional[int] = None):
        self._url = url
        self._spec = spec
        self._views = views
        self._batch_size = batch_size
        self._store: Optional[OnlineStore] = None
        self._buffer: list[FeatureRow] = []
        self._written = Metrics.counter("online_store", "rows_written")
        self._stale = Metrics.counter("online_store", "rows_stale_skipped")
        self._not_current = Metrics.counter("online_store", "rows_not_current_window")
        self._batches = Metrics.counter("online_store", "batches")
        self._latency = Metrics.distribution("online_store", "batch_write_ms")
        self._retries = Metrics.counter("online_store", "retries")
        # freshness, streaming only (set by WriteOnline): processing time minus window end when a
        # row is written, per view (EARLY panes, written before their window ends, count as 0)
        self.lag = False
        self._lag_ms = {view: Metrics.distribution("freshness", f"lag_ms.{view}") for view in views}

    def setup(self) -> None:
        self._store = open_online_store(self._url, self._spec, self._views)
        self._store.on_retry = self._retries.inc
        self._batch_rows = self._batch_size or self._store.WRITE_BATCH_ROWS

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, row: FeatureRow) -> None:
        if not is_current_window(row, self._views[row.view]):
            self._not_current.inc()
            return
        if self.lag:
            self._lag_ms[row.view].update(max(0, int(time.time() * 1000) - row.window_end_ms))
        self._buffer.append(row)
        if len(self._buffer) >= self._batch_rows:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        started = time.perf_counter()
        result = self._store.write(self._buffer)
        self._latency.update(int((time.perf_counter() - started) * 1000))
        self._batches.inc()
        self._written.inc(result.written)
        self._stale.inc(result.stale)
        self._buffer = []

    def teardown(self) -> None:
        if self._store is not None:
            self._store.close()


def _newest(rows: Iterable[FeatureRow]) -> Optional[FeatureRow]:
    return max(rows, key=lambda r: (r.window_end_ms, r.pane_index), default=None)


class NewestCurrentRows(beam.PTransform[PCollection[FeatureRow], PCollection[FeatureRow]]):
    """FeatureRows -> the newest current window per (view, entity): in a bounded run, the only
    row of each entity the online store's monotonic rule would keep."""

    def __init__(self, views: dict[str, ViewLayout]):
        super().__init__()
        self._views = views

    def expand(self, rows: PCollection[FeatureRow]) -> PCollection[FeatureRow]:
        views = self._views
        return (
            rows
            | "Current windows" >> beam.Filter(lambda r: is_current_window(r, views[r.view]))
            | "Key by entity" >> beam.Map(lambda r: ((r.view, r.entity), r))
            | "Newest per entity" >> beam.CombinePerKey(_newest)
            | "Drop keys" >> beam.Values()
        )


class WriteOnline(beam.PTransform[PCollection[FeatureRow], PCollection[None]]):
    """FeatureRows -> online store: current windows only, atomic and monotonic per entity.

    With `latest_only` (bounded runs) rows are first reduced to the newest per (view, entity)
    (NewestCurrentRows): the store's monotonic rule would refuse every older one anyway, so
    this writes the same final state with one upsert per entity instead of one per window.
    `batch_size`: rows per store write, at most (a bundle's end writes what it holds); default
    the store's WRITE_BATCH_ROWS (SQLite 20,000 per transaction, Redis 500 per script call).
    """

    def __init__(self, url: str, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None,
                 batch_size: Optional[int] = None, latest_only: bool = False):
        super().__init__()
        self._views = views if views is not None else layouts(spec)
        self._fn = _WriteOnlineFn(url, spec, self._views, batch_size)
        self._latest_only = latest_only

    def expand(self, rows: PCollection[FeatureRow]) -> PCollection[None]:
        if self._latest_only:
            rows = rows | NewestCurrentRows(self._views)
        self._fn.lag = is_stream(rows)
        return rows | "Upsert current windows" >> beam.ParDo(self._fn)


class _WriteOfflineFn(beam.DoFn):
    """Buffers rows per bundle and writes one Parquet file per view and date partition. With a
    `commit` (bounded runs), files are written under the staging directory and their
    (final, staged) paths are emitted for CommitFiles."""

    def __init__(self, root: str, views: dict[str, ViewLayout], max_rows: int, to_table=None,
                 commit: Optional[RunCommit] = None):
        self._root = root
        self._views = views
        self._max_rows = max_rows
        self._to_table = to_table
        self._commit = commit
        self._buffer: dict[str, list[FeatureRow]] = defaultdict(list)
        self._count = 0
        self._rows = Metrics.counter("offline_store", "rows_written")
        self._files = Metrics.counter("offline_store", "files_written")
        self._view_rows = {view: Metrics.counter("offline_store", f"rows_written.{view}") for view in views}

    def start_bundle(self) -> None:
        self._buffer = defaultdict(list)
        self._tables: dict[str, list] = defaultdict(list)
        self._count = 0

    def process(self, element: Rows) -> Iterable[tuple[str, str]]:
        if isinstance(element, offline.RowTable):  # the fast path's rows, already a table
            self._tables[element.view].append(element.table)
            self._count += element.table.num_rows
        elif isinstance(element, list):  # a batch of one view's rows
            if element:
                self._buffer[element[0].view].extend(element)
                self._count += len(element)
        else:
            self._buffer[element.view].append(element)
            self._count += 1
        if self._count >= self._max_rows:
            yield from self._flush()

    def finish_bundle(self) -> Iterable:
        for final, staged in self._flush():
            yield beam.transforms.window.GlobalWindows.windowed_value((final, staged))

    def _flush(self) -> Iterable[tuple[str, str]]:
        commit = self._commit
        root = commit.staging(self._root) if commit else self._root
        prefix = f"part-{commit.key}" if commit else "part"
        written = [(view, offline.write_rows(root, self._views[view], rows, self._to_table, prefix), len(rows))
                   for view, rows in self._buffer.items()]
        for view, tables in self._tables.items():
            table = pa.concat_tables(tables)
            written.append((view, offline.write_table(root, self._views[view], table, prefix), table.num_rows))
        for view, paths, n_rows in written:
            self._files.inc(len(paths))
            self._rows.inc(n_rows)
            self._view_rows[view].inc(n_rows)
            if commit:
                for path in paths:
                    yield commit.final_path(self._root, root, path), path
        self._buffer = defaultdict(list)
        self._tables = defaultdict(list)
        self._count = 0


class WriteOffline(beam.PTransform[PCollection[Rows], PCollection[Any]]):
    """FeatureRows (or lists of one view's FeatureRows) -> Parquet, one row per emitted pane
    (every window, every pane). Bounded input with a `commit` replaces, when every file is
    written, the files an earlier run with the same commit key left (CommitFiles)."""

    def __init__(self, root: str, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None,
                 max_rows_per_file: int = 200_000, to_table=None, commit: Optional[RunCommit] = None):
        super().__init__()
        if max_rows_per_file < 1:
            raise ValueError(f"max_rows_per_file must be >= 1 (got {max_rows_per_file!r})")
        views = views if views is not None else layouts(spec)
        self._root = root
        self._commit = commit
        self._views = views
        self._args = (root, views, max_rows_per_file, to_table)

    def expand(self, rows: PCollection[Rows]) -> PCollection[Any]:
        commit = self._commit if rows.is_bounded else None
        written = rows | "Write Parquet" >> beam.ParDo(_WriteOfflineFn(*self._args, commit=commit))
        if commit is None:
            return written
        patterns = [FileSystems.join(self._root, view, "date=*", f"part-{commit.key}-*.parquet")
                    for view in self._views]
        return written | "Commit Parquet" >> CommitFiles(patterns, commit.staging(self._root))


class WriteEmbeddingsOffline(beam.PTransform[PCollection[FeatureRow], PCollection[Any]]):
    """Embedding FeatureRows -> Parquet, buffered per bundle (every text, not only the latest)."""

    def __init__(self, root: str, spec: FeatureSpecFile, max_rows_per_file: int = 100_000):
        super().__init__()
        every = layouts(spec)
        views = {e.name: every[e.name] for e in spec.embeddings}
        self._write = WriteOffline(root, spec, views, max_rows_per_file, to_table=offline.embedding_rows_to_table)

    def expand(self, rows: PCollection[FeatureRow]) -> PCollection[Any]:
        return rows | self._write


class _WriteDeadLettersFn(beam.DoFn):
    """Appends dead letters of a bundle to one JSONL file (written then renamed; with a commit,
    staged for CommitFiles)."""

    def __init__(self, directory: str, commit: Optional[RunCommit] = None):
        self._directory = directory
        self._commit = commit
        self._lines: list[str] = []
        self._written = Metrics.counter("dead_letters", "written")

    def start_bundle(self) -> None:
        self._lines = []

    def process(self, letter: DeadLetter) -> None:
        self._lines.append(encode_letter(letter).decode("utf-8"))

    def finish_bundle(self) -> Iterable:
        if not self._lines:
            return
        commit = self._commit
        directory = commit.staging(self._directory) if commit else self._directory
        if "://" not in directory:
            os.makedirs(directory, exist_ok=True)
        name = f"dead_letters-{commit.key + '-' if commit else ''}{uuid.uuid4().hex}.jsonl"
        tmp = FileSystems.join(directory, f".{name}.tmp")
        with FileSystems.create(tmp) as handle:
            handle.write(("\n".join(self._lines) + "\n").encode("utf-8"))
        staged = FileSystems.join(directory, name)
        FileSystems.rename([tmp], [staged])
        self._written.inc(len(self._lines))
        _LOG.info("%d dead letters written to %s", len(self._lines), self._directory)
        self._lines = []
        if commit:
            final = FileSystems.join(self._directory, name)
            yield beam.transforms.window.GlobalWindows.windowed_value((final, staged))


def encode_letter(letter: DeadLetter) -> bytes:
    """A dead letter as the one JSON line (or Pub/Sub message) WriteDeadLetters writes."""
    return json.dumps(letter._asdict(), ensure_ascii=False).encode("utf-8", "backslashreplace")


class WriteDeadLetters(beam.PTransform[PCollection[DeadLetter], PCollection[Any]]):
    """Dead letters -> JSONL files in a directory (local or gs://), or JSON messages on a
    Pub/Sub topic when the destination is projects/P/topics/T (attributes: reason, stage)."""

    def __init__(self, destination: str, commit: Optional[RunCommit] = None):
        super().__init__()
        self._destination = destination
        self._commit = commit

    def expand(self, letters: PCollection[DeadLetter]) -> PCollection[Any]:
        if self._destination.startswith("projects/"):
            check_topic(self._destination, "--dead_letter")
            return (
                letters
                | "To Pub/Sub messages" >> beam.Map(
                    lambda d: beam.io.PubsubMessage(encode_letter(d), {"reason": d.reason, "stage": d.stage})
                )
                | "Publish" >> beam.io.WriteToPubSub(self._destination, with_attributes=True)
            )
        commit = self._commit if letters.is_bounded else None
        written = letters | "Write JSONL" >> beam.ParDo(_WriteDeadLettersFn(self._destination, commit))
        if commit is None:
            return written
        pattern = FileSystems.join(self._destination, f"dead_letters-{commit.key}-*.jsonl")
        return written | "Commit JSONL" >> CommitFiles([pattern], commit.staging(self._destination))


def read_dead_letters(directory: str) -> Iterable[dict]:
    """All dead letters written under a local directory (for tests, the demo and operators)."""
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        if name.startswith("dead_letters-") and name.endswith(".jsonl"):
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)
