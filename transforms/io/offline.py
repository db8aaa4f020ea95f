"""Offline store: Parquet under OFFLINE/<view>/date=YYYY-MM-DD/, one row per emitted pane (and,
for embeddings, one row per embedded text).

Read it with `read_offline(OFFLINE, spec, view)`: one row per pane, copies written by retried
bundles or overlapping runs removed. A bounded run replaces the files of an earlier run over the
same input (`part-<input fingerprint>-*.parquet`, committed when the run has written them all). Paths go through
Beam's FileSystems, so OFFLINE may be local or gs://. Files are written under a hidden temporary
name and renamed, so a reader never sees a half-written file.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections import defaultdict
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.gcpause import gc_paused
from transforms.records import FeatureRow, ViewLayout, layouts
from transforms.spec import FeatureSpecFile, load_spec

_ARROW_TYPES = {
    "int64": pa.int64(),
    "double": pa.float64(),
    "string": pa.string(),
    "float_list": pa.list_(pa.float32()),
    "double_list": pa.list_(pa.float64()),
    "string_list": pa.list_(pa.string()),
    "int64_list": pa.list_(pa.int64()),
    "int64_map": pa.map_(pa.string(), pa.int64()),
}
TS = pa.timestamp("us", tz="UTC")
_DAY_MS = 86_400_000
_EPOCH = dt.date(1970, 1, 1)


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


def _ms_to_ts(values: Sequence[int]) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64) * 1000, TS)


def rows_to_table(rows: Sequence[FeatureRow], layout: ViewLayout, created_us: int) -> pa.Table:
    _, entities, starts, ends, timings, panes, _, features = zip(*rows) if rows else ([],) * 8
    values = list(zip(*features)) if rows else [[] for _ in layout.value_types]
    return columns_to_table(layout, entities, starts, ends, pa.array(timings, pa.string()), panes, values, created_us)


def columns_to_table(layout: ViewLayout, entities: Sequence[Any], starts_ms: Sequence[int], ends_ms: Sequence[int],
                     timings: pa.Array, panes: Sequence[int], values: Sequence[Sequence[Any]],
                     created_us: int) -> pa.Table:
    """The offline table of one view from its columns (one value list per feature)."""
    schema = view_schema(layout)
    if layout.key_dtype == "int64":
        entities = [int(e) for e in entities]
    end_ts = _ms_to_ts(ends_ms)
    columns = [
        pa.array(entities, schema.field(0).type),
        _ms_to_ts(starts_ms),
        end_ts,
        end_ts,
        pa.array(np.full(len(end_ts), created_us, dtype=np.int64), TS),
        timings,
        pa.array(panes, pa.int64()),
    ]
    for column, kind in zip(values, layout.value_types):
        columns.append(pa.array(column, _ARROW_TYPES[kind]))
    return pa.Table.from_arrays(columns, schema=schema)


class RowTable(NamedTuple):
    """Rows of one view already in the offline layout (`rows_to_table`), as the fast path sends
    them to the writer: one element per batch, encoded once, instead of a pickled row each."""

    view: str
    table: Any  # pa.Table of view_schema(layout); created_timestamp is set when it is written


def write_table(root: str, layout: ViewLayout, table: pa.Table, prefix: str = "part") -> list[str]:
    """`write_rows` for a RowTable's table: one file per date partition of the window end."""
    created_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)
    index = table.schema.get_field_index("created_timestamp")
    table = table.set_column(index, "created_timestamp", pa.array(np.full(table.num_rows, created_us, np.int64), TS))
    days = table["window_end"].combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False) // (_DAY_MS * 1000)
    paths = []
    for day_index in np.unique(days).tolist():
        part = table if len(days) and days[0] == days[-1] == day_index else table.filter(pa.array(days == day_index))
        paths.append(_write_partition(root, layout, day_index, part, prefix))
    return paths


def _write_partition(root: str, layout: ViewLayout, day_index: int, table: pa.Table, prefix: str) -> str:
    day = (_EPOCH + dt.timedelta(days=day_index)).isoformat()
    directory = FileSystems.join(root, layout.name, f"date={day}")
    if "://" not in root:
        os.makedirs(directory, exist_ok=True)
    name = f"{prefix}-{uuid.uuid4().hex}.parquet"
    tmp = FileSystems.join(directory, f".{name}.tmp")
    with FileSystems.create(tmp) as handle:
        pq.write_table(table, handle)
    final = FileSystems.join(directory, name)
    FileSystems.rename([tmp], [final])
    return final


def write_rows(root: str, layout: ViewLayout, rows: Sequence[FeatureRow],
               to_table: Callable[[Sequence[FeatureRow], ViewLayout, int], pa.Table] = None,
               prefix: str = "part") -> list[str]:
    """Write rows of one view, one file per date partition (of the window end). Returns paths.
    `to_table` builds the Arrow table (default: feature rows; embeddings bring their own);
    files are named `<prefix>-<uuid>.parquet`."""
    to_table = to_table or rows_to_table
    created_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)
    by_day: dict[int, list[FeatureRow]] = defaultdict(list)
    with gc_paused():
        for row in rows:
            by_day[row.window_end_ms // _DAY_MS].append(row)  # UTC days since the epoch
    paths = []
    for day_index, day_rows in sorted(by_day.items()):
        with gc_paused():
            table = to_table(day_rows, layout, created_us)
        paths.append(_write_partition(root, layout, day_index, table, prefix))
    return paths


# -- embeddings -----------------------------------------------------------------------------
# One row per embedded text: <join_key>, event_timestamp, created_timestamp and `embedding` as a
# fixed-size list of float32 (384 for MiniLM), under OFFLINE/<name>/date=YYYY-MM-DD/ like views.
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


def embedding_rows_to_table(rows: Sequence[FeatureRow], layout: ViewLayout, created_us: int) -> pa.Table:
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
    return write_rows(root, layout, rows, embedding_rows_to_table)


def read_offline(root: str, spec_or_layout: FeatureSpecFile | ViewLayout, view: Optional[str] = None) -> pa.Table:
    """One view's offline rows, de-duplicated by (entity, window_end, pane_index):
    `read_offline("offline/", spec, "user_5m")` (spec: a FeatureSpecFile or a path to its YAML).

    Writes are at-least-once (a retried bundle or an overlapping job writes its panes again); a
    pane is identified by (entity, window end, pane index), so keeping the newest copy of each
    gives the exactly-once view of the store.
    """
    if isinstance(spec_or_layout, ViewLayout):
        layout = spec_or_layout
    else:
        spec = load_spec(spec_or_layout) if isinstance(spec_or_layout, str) else spec_or_layout
        found = layouts(spec)
        if view not in found:
            known = ", ".join(found) or "none"
            raise ValueError(f"unknown view {view!r} (views and embeddings in the spec: {known})")
        layout = found[view]
    import pyarrow.dataset as ds

    table = ds.dataset(FileSystems.join(root, layout.name), partitioning="hive").to_table()
    return newest_copies(table, layout.join_key)


def newest_copies(table: pa.Table, join_key: str) -> pa.Table:
    """One row per pane (entity, window_end, pane_index): the newest copy (copies written in the
    same instant: the first), sorted by those keys. Only the key columns go through the sort and
    grouping, since Arrow's joins refuse list and map columns."""
    keys = [join_key, "window_end", "pane_index"]
    index = table.select(keys + ["created_timestamp"]).append_column(
        "__row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    index = index.sort_by([(k, "ascending") for k in keys] + [("created_timestamp", "descending"),
                                                               ("__row", "ascending")])
    first = index.group_by(keys, use_threads=False).aggregate([("__row", "first")])
    return table.take(first["__row_first"]).sort_by([(k, "ascending") for k in keys])
