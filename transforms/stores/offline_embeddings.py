"""Offline store for embeddings: Parquet under OFFLINE/<name>/date=YYYY-MM-DD/part-*.parquet.

One row per embedded text: <join_key>, event_timestamp, created_timestamp and `embedding` as a
fixed-size list of float32 (384 for MiniLM). Partitioned by the event date, hive style, so
`pyarrow.dataset.dataset(OFFLINE/<name>, partitioning="hive")` reads it. Files are written under
a hidden temporary name and renamed through Beam's FileSystems (local or gs://).
"""

from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.features import FeatureRow
from transforms.spec import FeatureSpecFile
from transforms.sinks import WriteOffline
from transforms.stores.offline import write_rows
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
    return write_rows(root, layout, rows, rows_to_table)


class WriteEmbeddingsOffline(beam.PTransform):
    """Embedding FeatureRows -> Parquet, buffered per bundle (every text, not only the latest)."""

    def __init__(self, root: str, spec: FeatureSpecFile, max_rows_per_file: int = 100_000):
        super().__init__()
        every = layouts(spec)
        views = {e.name: every[e.name] for e in spec.embeddings}
        self._write = WriteOffline(root, spec, views, max_rows_per_file, to_table=rows_to_table)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | self._write
