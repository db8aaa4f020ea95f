"""Offline store: Parquet under OFFLINE/<view>/date=YYYY-MM-DD/, one row per emitted pane.

Read it with `pyarrow.dataset.dataset(OFFLINE/<view>, partitioning="hive")`. Paths go through
Beam's FileSystems, so OFFLINE may be local or gs://. Files are written under a hidden temporary
name and renamed, so a reader never sees a half-written file.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import defaultdict
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.features import FeatureRow
from transforms.stores.online import ViewLayout

_ARROW_TYPES = {
    "int64": pa.int64(),
    "double": pa.float64(),
    "string": pa.string(),
    "float_list": pa.list_(pa.float32()),
}
TS = pa.timestamp("us", tz="UTC")


def view_schema(layout: ViewLayout) -> pa.Schema:
    key_type = pa.int64() if layout.key_dtype == "int64" else pa.string()
    fields = [
        pa.field(layout.join_key, key_type, nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("window_end", TS, nullable=False),
        pa.field("event_timestamp", TS, nullable=False),
        pa.field("created_timestamp", TS, nullable=False),
        pa.field("pane_timing", pa.string(), nullable=False),
        pa.field("pane_index", pa.int64(), nullable=False),
    ]
    fields += [pa.field(n, _ARROW_TYPES[t]) for n, t in zip(layout.feature_names, layout.value_types)]
    return pa.schema(fields)


def rows_to_table(rows: Sequence[FeatureRow], layout: ViewLayout, created_us: int) -> pa.Table:
    schema = view_schema(layout)
    entities = [int(r.entity) if layout.key_dtype == "int64" else r.entity for r in rows]
    starts = [r.window_start_ms * 1000 for r in rows]
    ends = [r.window_end_ms * 1000 for r in rows]
    columns = [
        pa.array(entities, schema.field(0).type),
        pa.array(starts, TS),
        pa.array(ends, TS),
        pa.array(ends, TS),
        pa.array([created_us] * len(rows), TS),
        pa.array([r.pane_timing for r in rows], pa.string()),
        pa.array([r.pane_index for r in rows], pa.int64()),
    ]
    for i, kind in enumerate(layout.value_types):
        columns.append(pa.array([r.features[i] for r in rows], _ARROW_TYPES[kind]))
    return pa.Table.from_arrays(columns, schema=schema)


def write_rows(root: str, layout: ViewLayout, rows: Sequence[FeatureRow],
               to_table: Callable[[Sequence[FeatureRow], ViewLayout, int], pa.Table] = None) -> list[str]:
    """Write rows of one view, one file per date partition (of the window end). Returns paths.
    `to_table` builds the Arrow table (default: feature rows; embeddings bring their own)."""
    to_table = to_table or rows_to_table
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
            pq.write_table(to_table(day_rows, layout, created_us), handle)
        final = FileSystems.join(directory, name)
        FileSystems.rename([tmp], [final])
        paths.append(final)
    return paths


def read_offline(root: str, layout: ViewLayout) -> pa.Table:
    """One view's offline rows, de-duplicated by (entity, window_end, pane_index).

    Writes are at-least-once (a retried bundle or a re-run job writes its panes again); a pane
    is identified by (entity, window end, pane index) and every copy carries the same values,
    so keeping the newest copy of each gives the exactly-once view of the store.
    """
    import pyarrow.dataset as ds

    table = ds.dataset(FileSystems.join(root, layout.name), partitioning="hive").to_table()
    keys = [layout.join_key, "window_end", "pane_index"]
    newest = table.group_by(keys, use_threads=False).aggregate([("created_timestamp", "max")])
    newest = newest.rename_columns(keys + ["created_timestamp"])
    deduped = table.join(newest, keys + ["created_timestamp"], join_type="inner")
    # copies written in the same instant: keep one
    index = pa.array(range(deduped.num_rows))
    first = deduped.append_column("__row", index).group_by(keys, use_threads=False).aggregate([("__row", "min")])
    return deduped.take(first["__row_min"]).sort_by([(k, "ascending") for k in keys])
