"""Training sets as a Beam pipeline, for label sets that don't fit one machine (any runner).

The same join as transforms/training.py, scattered by entity: label row groups and offline
files are split into `buckets` by a stable hash of the join key (Arrow slices, not one element per
label), each bucket joins its labels with its panes in Arrow, and each label row group is put
back together with its feature columns and written as one part file, in label order by name:
OUT/part-<file>-<row group>.parquet. Labels: Parquet files (a path or a glob).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.io.offline import newest_copies, view_schema
from transforms.training import (
    TrainingSetError,
    ViewRequest,
    as_of_rows,
    entity_keys,
    feature_columns,
    parse_features,
    prepare_panes,
    timestamps_us,
)

ROW = "__row"
TIME = "__t_us"
_MIX = np.uint64(0x9E3779B97F4A7C15)


def buckets_of(keys: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """A bucket per key, the same on every worker: a polynomial hash of the UTF-8 bytes of
    string keys (vectorised over the whole array), a multiplicative hash of int64 keys. Nulls: 0."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    with np.errstate(over="ignore"):
        if pa.types.is_integer(keys.type):
            values = pc.fill_null(keys, 0).to_numpy().astype(np.int64).view(np.uint64)
            hashed = values * _MIX
        else:
            keys = pc.fill_null(pc.cast(keys, pa.string()), "")
            offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset:keys.offset + len(keys) + 1]
            data = np.frombuffer(keys.buffers()[2], dtype=np.uint8).astype(np.uint64)
            starts, lengths = offsets[:-1], np.diff(offsets)
            position = np.arange(offsets[0], offsets[-1]) - np.repeat(starts, lengths)
            weighted = data[offsets[0]:offsets[-1]] * np.power(np.uint64(1099511628211), position.astype(np.uint64))
            hashed = np.zeros(len(keys), dtype=np.uint64)
            present = lengths > 0
            if present.any():
                sums = np.add.reduceat(weighted, (starts - offsets[0])[present])
                hashed[present] = sums
            hashed = (hashed + lengths.astype(np.uint64)) * _MIX
        return ((hashed >> np.uint64(33)) % np.uint64(buckets)).astype(np.int64)


class ReadLabelRowGroups(beam.DoFn):
    """(file index, path) -> ((file index, row group), the row group as an Arrow table)."""

    def process(self, element: tuple[int, str]) -> Iterator[tuple[tuple[int, int], pa.Table]]:
        index, path = element
        with FileSystems.open(path) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                yield (index, group), parquet.read_row_group(group)


class ScatterLabels(beam.DoFn):
    """A label row group -> (bucket, (chunk, [row, key, time])) per bucket it touches."""

    def __init__(self, request: ViewRequest, timestamp_field: str, buckets: int):
        self.request, self.timestamp_field, self.buckets = request, timestamp_field, buckets

    def process(self, element):
        chunk, table = element
        keys = entity_keys(table, self.request.layout)
        times = timestamps_us(table[self.timestamp_field], self.timestamp_field)
        slim = pa.table({ROW: pa.array(np.arange(table.num_rows)), "key": keys, TIME: times})
        yield from _split(slim, buckets_of(keys, self.buckets), lambda t: (chunk, t))


class ScatterPanes(beam.DoFn):
    """An offline Parquet file of one view -> (bucket, panes) per bucket it touches."""

    def __init__(self, request: ViewRequest, buckets: int):
        self.request, self.buckets = request, buckets

    def process(self, path: str):
        columns = [self.request.layout.join_key, "window_start", "window_end", "created_timestamp",
                   "pane_index", *self.request.features]
        with FileSystems.open(path) as handle:
            table = pq.read_table(handle, columns=columns)
        yield from _split(table, buckets_of(table[self.request.layout.join_key], self.buckets), lambda t: t)


def _split(table: pa.Table, buckets: np.ndarray, wrap) -> Iterator:
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
    for rows in np.split(order, bounds):
        if len(rows):
            yield int(buckets[rows[0]]), wrap(table.take(pa.array(rows)))


class JoinBucket(beam.DoFn):
    """One bucket: its labels (by chunk) joined with its panes -> (chunk, [row, VIEW__FEATURE...])."""

    def __init__(self, request: ViewRequest, as_of_created: bool):
        self.request, self.as_of_created = request, as_of_created

    def process(self, element):
        _, grouped = element
        parts = list(grouped["panes"])
        schema = view_schema(self.request.layout)
        panes = pa.concat_tables(parts) if parts else schema.empty_table()
        panes = prepare_panes(newest_copies(panes, self.request.layout.join_key), self.request)
        for chunk, labels in grouped["labels"]:
            picked = as_of_rows(panes, self.request, labels["key"], labels[TIME].to_numpy(), self.as_of_created)
            columns = feature_columns(panes, self.request, picked)
            yield chunk, pa.table({ROW: labels[ROW], **dict(columns)})


class WriteChunk(beam.DoFn):
    """A label row group and its feature columns (one part per view) -> OUT/part-F-G.parquet."""

    def __init__(self, output: str, requests: Sequence[ViewRequest]):
        self.output, self.requests = output, requests

    def process(self, element) -> Iterator[int]:
        (index, group), grouped = element
        (labels,) = list(grouped["labels"])
        out = labels
        for request in self.requests:
            parts = list(grouped[request.view.name])
            if labels.num_rows == 0:
                schema = view_schema(request.layout)
                for column, name in zip(request.columns, request.features):
                    out = out.append_column(column, pa.nulls(0, schema.field(name).type))
                continue
            joined = pa.concat_tables(parts).sort_by(ROW)
            if joined.num_rows != labels.num_rows or not np.array_equal(
                    joined[ROW].to_numpy(), np.arange(labels.num_rows)):
                raise RuntimeError(f"chunk {(index, group)}: {request.view.name} joined {joined.num_rows} of "
                                   f"{labels.num_rows} labels")
            for column in request.columns:
                out = out.append_column(column, joined[column])
        path = FileSystems.join(self.output, f"part-{index:05d}-{group:05d}.parquet")
        with FileSystems.create(path) as handle:
            pq.write_table(out, handle)
        yield out.num_rows


def _label_files(labels: str) -> list[str]:
    found = sorted(m.path for r in FileSystems.match([labels]) for m in r.metadata_list)
    if not found:
        raise TrainingSetError(f"--labels: no file matches {labels!r}")
    if not all(p.endswith(".parquet") for p in found):
        raise TrainingSetError("--labels: the Beam variant (--runner) reads Parquet labels; convert JSONL first")
    return found


def _pane_files(offline_store: str, view: str) -> list[str]:
    pattern = FileSystems.join(offline_store, view, "*", "*.parquet")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def build(pipeline: beam.Pipeline, spec_path: str, offline_store: str, labels: str, features: Sequence[str],
          output: str, timestamp_field: str = "event_timestamp", as_of_created: bool = False,
          buckets: int = 64) -> beam.PCollection:
    """The graph; returns the PCollection of rows written per part file."""
    from transforms.spec import load_spec

    spec = load_spec(spec_path)
    requests = parse_features(spec, features)
    files = _label_files(labels)
    with FileSystems.open(files[0]) as handle:
        schema = pq.read_schema(handle)
    probe = schema.empty_table()
    for request in requests:
        entity_keys(probe, request.layout)
        clash = [c for c in request.columns if c in schema.names]
        if clash:
            raise TrainingSetError(f"labels: column {clash[0]!r} already exists (it would hold that feature)")
    if timestamp_field not in schema.names:
        raise TrainingSetError(f"labels: no timestamp column {timestamp_field!r} (columns: {', '.join(schema.names)})")
    timestamps_us(probe[timestamp_field], timestamp_field)
    if "://" not in output:
        import os

        os.makedirs(output, exist_ok=True)

    chunks = (pipeline | "Label files" >> beam.Create(list(enumerate(files)))
              | "Read label row groups" >> beam.ParDo(ReadLabelRowGroups()))
    joined = {"labels": chunks}
    for request in requests:
        name = request.view.name
        labels_by_bucket = chunks | f"Scatter labels {name}" >> beam.ParDo(ScatterLabels(request, timestamp_field, buckets))
        pane_files = _pane_files(offline_store, name)
        panes = (pipeline | f"Offline files {name}" >> beam.Create(pane_files)
                 | f"Scatter panes {name}" >> beam.ParDo(ScatterPanes(request, buckets)))
        joined[name] = ({"labels": labels_by_bucket, "panes": panes}
                        | f"Group bucket {name}" >> beam.CoGroupByKey()
                        | f"Join {name}" >> beam.ParDo(JoinBucket(request, as_of_created)))
    return (joined | "Group by label chunk" >> beam.CoGroupByKey()
            | "Write parts" >> beam.ParDo(WriteChunk(output, requests)))
