"""Beam sinks: online store (batched per bundle), offline Parquet, dead letters.

Clients are opened in `setup()` and closed in `teardown()`; rows are buffered per bundle and
written in batches (one round trip per batch), flushed at the latest in `finish_bundle()`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections import defaultdict
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.events import DeadLetter
from transforms.features import FeatureRow
from transforms.sources import check_topic
from transforms.spec import FeatureSpecFile
from transforms.stores import offline
from transforms.stores.online import OnlineStore, ViewLayout, is_current_window, layouts, open_online_store

_LOG = logging.getLogger(__name__)


class _WriteOnlineFn(beam.DoFn):
    def __init__(self, url: str, spec: FeatureSpecFile, views: dict[str, ViewLayout], batch_size: int):
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

    def setup(self) -> None:
        self._store = open_online_store(self._url, self._spec, self._views)

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, row: FeatureRow) -> None:
        if not is_current_window(row, self._views[row.view]):
            self._not_current.inc()
            return
        self._buffer.append(row)
        if len(self._buffer) >= self._batch_size:
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


class NewestCurrentRows(beam.PTransform):
    """FeatureRows -> the newest current window per (view, entity): in a bounded run, the only
    row of each entity the online store's monotonic rule would keep."""

    def __init__(self, views: dict[str, ViewLayout]):
        super().__init__()
        self._views = views

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        views = self._views
        return (
            rows
            | "Current windows" >> beam.Filter(lambda r: is_current_window(r, views[r.view]))
            | "Key by entity" >> beam.Map(lambda r: ((r.view, r.entity), r))
            | "Newest per entity" >> beam.CombinePerKey(_newest)
            | "Drop keys" >> beam.Values()
        )


class WriteOnline(beam.PTransform):
    """FeatureRows -> online store: current windows only, atomic and monotonic per entity.

    With `latest_only` (bounded runs) rows are first reduced to the newest per (view, entity)
    (NewestCurrentRows): the store's monotonic rule would refuse every older one anyway, so
    this writes the same final state with one upsert per entity instead of one per window.
    """

    def __init__(self, url: str, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None,
                 batch_size: int = 500, latest_only: bool = False):
        super().__init__()
        self._views = views if views is not None else layouts(spec)
        self._fn = _WriteOnlineFn(url, spec, self._views, batch_size)
        self._latest_only = latest_only

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        if self._latest_only:
            rows = rows | NewestCurrentRows(self._views)
        return rows | "Upsert current windows" >> beam.ParDo(self._fn)


class _WriteOfflineFn(beam.DoFn):
    """Buffers rows per bundle and writes one Parquet file per view and date partition. With a
    `commit` (bounded runs), files are written under the staging directory and their
    (final, staged) paths are emitted for CommitFiles."""

    def __init__(self, root: str, views: dict[str, ViewLayout], max_rows: int, to_table=None,
                 commit: Optional["RunCommit"] = None):
        self._root = root
        self._views = views
        self._max_rows = max_rows
        self._to_table = to_table
        self._commit = commit
        self._buffer: dict[str, list[FeatureRow]] = defaultdict(list)
        self._count = 0
        self._rows = Metrics.counter("offline_store", "rows_written")
        self._files = Metrics.counter("offline_store", "files_written")

    def start_bundle(self) -> None:
        self._buffer = defaultdict(list)
        self._count = 0

    def process(self, element: Union[FeatureRow, list[FeatureRow]]) -> Iterable[tuple[str, str]]:
        if isinstance(element, list):  # a batch of one view's rows
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
        for view, rows in self._buffer.items():
            paths = offline.write_rows(root, self._views[view], rows, self._to_table, prefix)
            self._files.inc(len(paths))
            self._rows.inc(len(rows))
            if commit:
                for path in paths:
                    yield commit.final_path(self._root, root, path), path
        self._buffer = defaultdict(list)
        self._count = 0


class WriteOffline(beam.PTransform):
    """FeatureRows (or lists of one view's FeatureRows) -> Parquet, one row per emitted pane
    (every window, every pane). Bounded input with a `commit` replaces, when every file is
    written, the files an earlier run with the same commit key left (CommitFiles)."""

    def __init__(self, root: str, spec: FeatureSpecFile, views: Optional[dict[str, ViewLayout]] = None,
                 max_rows_per_file: int = 200_000, to_table=None, commit: Optional["RunCommit"] = None):
        super().__init__()
        if max_rows_per_file < 1:
            raise ValueError(f"max_rows_per_file must be >= 1 (got {max_rows_per_file!r})")
        views = views if views is not None else layouts(spec)
        self._root = root
        self._commit = commit
        self._views = views
        self._args = (root, views, max_rows_per_file, to_table)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        commit = self._commit if rows.is_bounded else None
        written = rows | "Write Parquet" >> beam.ParDo(_WriteOfflineFn(*self._args, commit=commit))
        if commit is None:
            return written
        patterns = [FileSystems.join(self._root, view, "date=*", f"part-{commit.key}-*.parquet")
                    for view in self._views]
        return written | "Commit Parquet" >> CommitFiles(patterns, commit.staging(self._root))


class RunCommit(NamedTuple):
    """How a bounded run replaces its earlier output: files are staged under
    `<root>/_staging/<run>/` and named with `key` (a fingerprint of the run's input); once all
    are written they are renamed into place and older files with the same key are deleted."""

    key: str
    run: str

    @classmethod
    def for_inputs(cls, paths: Sequence[str]) -> "RunCommit":
        digest = hashlib.sha256("\n".join(sorted(paths)).encode("utf-8", "surrogatepass")).hexdigest()
        return cls(digest[:16], uuid.uuid4().hex[:12])

    def staging(self, root: str) -> str:
        return FileSystems.join(root, "_staging", self.run)

    def final_path(self, root: str, staging_root: str, staged: str) -> str:
        return FileSystems.join(root, staged[len(staging_root):].lstrip("/"))


class _Commit(beam.DoFn):
    def __init__(self, patterns: list[str], staging: str):
        self._patterns = patterns
        self._staging = staging
        self._replaced = Metrics.counter("commit", "earlier_files_replaced")

    def process(self, moves: list[tuple[str, str]]) -> Iterable[str]:
        finals = {final for final, _ in moves}
        for directory in {os.path.dirname(final) for final in finals if "://" not in final}:
            os.makedirs(directory, exist_ok=True)
        if moves:
            FileSystems.rename([staged for _, staged in moves], [final for final, _ in moves])
        # rename first, then delete: a failure in between leaves copies (read_offline removes
        # them), never a gap
        old = []
        for pattern in self._patterns:
            try:
                matched = FileSystems.match([pattern])[0].metadata_list
            except Exception:  # nothing matches yet on some filesystems
                matched = []
            old += [m.path for m in matched if m.path not in finals]
        if old:
            FileSystems.delete(old)
            self._replaced.inc(len(old))
        if FileSystems.exists(self._staging):
            FileSystems.delete([self._staging])
        yield from sorted(finals)


class CommitFiles(beam.PTransform):
    """(final, staged) path pairs of a bounded run -> the final paths, once all are written:
    staged files renamed into place, then files matching `patterns` that this run did not
    write (an earlier run's) deleted, so re-running leaves the output as after one run."""

    def __init__(self, patterns: list[str], staging: str):
        super().__init__()
        self._patterns = patterns
        self._staging = staging

    def expand(self, moves: beam.PCollection) -> beam.PCollection:
        return (
            moves
            | "One window" >> beam.WindowInto(beam.transforms.window.GlobalWindows())
            | "All files" >> beam.combiners.ToList()
            | "Rename and replace" >> beam.ParDo(_Commit(self._patterns, self._staging))
        )


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


class WriteDeadLetters(beam.PTransform):
    """Dead letters -> JSONL files in a directory (local or gs://), or JSON messages on a
    Pub/Sub topic when the destination is projects/P/topics/T (attributes: reason, stage)."""

    def __init__(self, destination: str, commit: Optional[RunCommit] = None):
        super().__init__()
        self._destination = destination
        self._commit = commit

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
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
