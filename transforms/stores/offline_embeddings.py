"""Offline store for embeddings: Parquet under OFFLINE/<name>/date=YYYY-MM-DD/part-*.parquet.

One row per embedded text: <join_key>, event_timestamp, created_timestamp and `embedding` as a
fixed-size list of float32 (384 for MiniLM). Partitioned by the event date, hive style, so
`pyarrow.dataset.dataset(OFFLINE/<name>, partitioning="hive")` reads it. Files are written under
a hidden temporary name and renamed through Beam's FileSystems (local or gs://).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import defaultdict
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.features import FeatureRow
from transforms.spec import FeatureSpecFile
from transforms.stores.online import ViewLayout, layouts

TS = pa.timestamp("us", tz="UTC")


def embedding_schema(layout: ViewLayout, dim: int) -> pa.Schema:
    key_type = pa.int64() if layout.key_dtype == "int64" else pa.string()
    return pa.schema(
        [
            pa.field(layout.join_key, key_type, nullable=False),
            pa.field("event_timestamp", TS, nullable=False),
            pa.field("created_timestamp", TS, nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def rows_to_table(rows: Sequence[FeatureRow], layout: ViewLayout, created_us: int) -> pa.Table:
    """Embedding rows of one view -> Arrow table; every vector must have the same length."""
    dim = len(rows[0].features[0])
    for row in rows:
        if len(row.features[0]) != dim:
            raise ValueError(
                f"{layout.name}: embeddings of one file must have the same size "
                f"(entity {row.entity!r} has {len(row.features[0])}, expected {dim})"
            )
    schema = embedding_schema(layout, dim)
    flat = pa.array(np.asarray([r.features[0] for r in rows], dtype=np.float32).reshape(-1))
    keys = [int(r.entity) if layout.key_dtype == "int64" else r.entity for r in rows]
    return pa.Table.from_arrays(
        [
            pa.array(keys, schema.field(0).type),
            pa.array([r.window_end_ms * 1000 for r in rows], TS),
            pa.array([created_us] * len(rows), TS),
            pa.FixedSizeListArray.from_arrays(flat, dim),
        ],
        schema=schema,
    )


def write_embeddings(root: str, layout: ViewLayout, rows: Sequence[FeatureRow]) -> list[str]:
    """Write rows of one embedding view, one file per event date. Returns the final paths."""
    created_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)
    by_date: dict[str, list[FeatureRow]] = defaultdict(list)
    for row in rows:
        day = dt.datetime.fromtimestamp(row.window_end_ms / 1000, dt.timezone.utc).date()
        by_date[day.isoformat()].append(row)
    paths = []
    for day, day_rows in sorted(by_date.items()):
        directory = FileSystems.join(root, layout.name, f"date={day}")
        if "://" not in root:
            os.makedirs(directory, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = FileSystems.join(directory, f".{name}.tmp")
        with FileSystems.create(tmp) as handle:
            pq.write_table(rows_to_table(day_rows, layout, created_us), handle)
        final = FileSystems.join(directory, name)
        FileSystems.rename([tmp], [final])
        paths.append(final)
    return paths


class _WriteEmbeddingsFn(beam.DoFn):
    def __init__(self, root: str, views: dict[str, ViewLayout], max_rows: int):
        self._root = root
        self._views = views
        self._max_rows = max_rows
        self._buffer: dict[str, list[FeatureRow]] = defaultdict(list)
        self._count = 0
        self._rows = Metrics.counter("offline_embeddings", "rows_written")
        self._files = Metrics.counter("offline_embeddings", "files_written")

    def start_bundle(self) -> None:
        self._buffer = defaultdict(list)
        self._count = 0

    def process(self, row: FeatureRow) -> None:
        self._buffer[row.view].append(row)
        self._count += 1
        if self._count >= self._max_rows:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        for view, rows in self._buffer.items():
            self._files.inc(len(write_embeddings(self._root, self._views[view], rows)))
            self._rows.inc(len(rows))
        self._buffer = defaultdict(list)
        self._count = 0


class WriteEmbeddingsOffline(beam.PTransform):
    """Embedding FeatureRows -> Parquet, buffered per bundle (every text, not only the latest)."""

    def __init__(self, root: str, spec: FeatureSpecFile, max_rows_per_file: int = 100_000):
        super().__init__()
        if max_rows_per_file < 1:
            raise ValueError(f"max_rows_per_file must be >= 1 (got {max_rows_per_file!r})")
        every = layouts(spec)
        views = {e.name: every[e.name] for e in spec.embeddings}
        self._fn = _WriteEmbeddingsFn(root, views, max_rows_per_file)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | "Write Parquet" >> beam.ParDo(self._fn)
