"""Baseline (b), the limit: the same features with pyarrow alone - no Beam, one process, one thread.

Events are read with pyarrow.json, sorted by event time, their strings dictionary-encoded, and
each event is repeated once per sliding window it belongs to (size/period = 5), so one hash
group-by per view computes every window exactly: count, max event time, last item (ordered
aggregation over time-sorted rows) and an exact distinct count; sum, mean, max and a t-digest
p90 of the amount over the purchase rows (the only ones with an amount), joined back. The fixed
view is one group-by per (item, hour). The result is written as Parquet, as the backfill's
offline store is.

Real-shaped logs (workload.real_shaped) are read the same way, with two steps more so the limit
does what the pipeline does: event times that are RFC 3339 strings mixed with epoch-ms numbers
are parsed with Arrow (the numbers quoted by one C-level regex substitution so the column reads
as strings, then digits cast to int64 and the rest cast by Arrow's ISO 8601 parser, offsets
applied), and events are de-duplicated by id (the first of each id kept, in one O(n) pass over
the dictionary codes).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from benchmarks.workload import (
    FIXED_SIZE_MS,
    FIXED_VIEW,
    SLIDING_PERIOD_MS,
    SLIDING_SIZE_MS,
    SLIDING_VIEW,
)

SCHEMA = pa.schema(
    [
        ("event_time", pa.int64()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("amount", pa.float64()),
    ]
)


TIME_FIELD = "event_time"
_QUOTED_TIME = b'"event_time":"'
_NUMBER_TIME = re.compile(rb'("event_time":)(-?\d+)(?=[,}])')


def read_events(path: str, id_field: Optional[str] = None) -> pa.Table:
    """The events as a table, event_time as epoch ms (int64), de-duplicated by `id_field`."""
    with open(path, "rb") as handle:
        data = handle.read()
    schema = SCHEMA
    mixed = _QUOTED_TIME in data  # RFC 3339 strings (maybe mixed with numbers): read as text
    if mixed:
        data = _NUMBER_TIME.sub(rb'\1"\2"', data)
        schema = schema.set(schema.get_field_index(TIME_FIELD), pa.field(TIME_FIELD, pa.string()))
    if id_field:
        schema = schema.append(pa.field(id_field, pa.string()))
    table = pj.read_json(
        io.BytesIO(data),
        parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        read_options=pj.ReadOptions(use_threads=False, block_size=1 << 26),
    )
    if mixed:
        index = table.schema.get_field_index(TIME_FIELD)
        table = table.set_column(index, TIME_FIELD, epoch_ms(table[TIME_FIELD].combine_chunks()))
    if id_field:
        table = first_of_each_id(table, id_field).drop_columns([id_field])
    return table


def epoch_ms(text: pa.Array) -> pa.Array:
    """Event times as text - epoch-ms digits or RFC 3339 with a zone - to epoch ms, with Arrow:
    digits cast to int64, the rest cast to UTC microseconds by Arrow's ISO 8601 parser (offsets
    applied) and floored to ms, as the pipeline's parse_timestamp does."""
    digits = pc.match_substring_regex(text, r"^-?\d+$")
    numbers = pc.cast(pc.if_else(digits, text, "0"), pa.int64()).to_numpy()
    micros = pc.cast(pc.if_else(digits, None, text), pa.timestamp("us", tz="UTC"))
    from_text = np.floor_divide(pc.cast(micros, pa.int64()).fill_null(0).to_numpy(), 1000)
    return pa.array(np.where(digits.to_numpy(zero_copy_only=False), numbers, from_text))


def first_of_each_id(table: pa.Table, id_field: str) -> pa.Table:
    """The first row of each id. Dictionary codes are given in order of first appearance, so a
    row is the first of its id exactly when its code exceeds every code before it."""
    codes = pc.dictionary_encode(table[id_field]).combine_chunks().indices.to_numpy()
    if len(codes) == 0:
        return table
    seen = np.maximum.accumulate(codes)
    first = np.empty(len(codes), dtype=bool)
    first[0] = True
    first[1:] = codes[1:] > seen[:-1]
    return table.filter(pa.array(first))


def _codes(column: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    encoded = pc.dictionary_encode(column).combine_chunks()
    return encoded.indices, encoded.dictionary


def sliding_view(events: pa.Table) -> pa.Table:
    per_window = SLIDING_SIZE_MS // SLIDING_PERIOD_MS
    # Time order (ties by value, as the pipeline's `last` breaks them) for the ordered `last`.
    events = events.take(
        pc.sort_indices(events, [("event_time", "ascending"), ("item_id", "ascending")])
    )
    users, user_names = _codes(events["user_id"])
    items, item_names = _codes(events["item_id"])
    ts = events["event_time"].to_numpy()
    compact = pa.table(
        {
            "event_time": events["event_time"],
            "user": users,
            "item": items,
            "amount": events["amount"],
        }
    )
    exploded = compact.take(pa.array(np.repeat(np.arange(len(ts)), per_window)))
    starts = np.repeat(ts - ts % SLIDING_PERIOD_MS, per_window) - np.tile(
        np.arange(per_window) * SLIDING_PERIOD_MS, len(ts)
    )
    exploded = exploded.append_column("window_start", pa.array(starts))
    keys = ["user", "window_start"]
    per_event = exploded.group_by(keys, use_threads=False).aggregate(
        [
            ("event_time", "count", pc.CountOptions(mode="all")),
            ("event_time", "max"),
            ("item", "last"),
            ("item", "count_distinct"),
        ]
    )
    purchases = exploded.filter(pc.is_valid(exploded["amount"]))
    per_amount = purchases.group_by(keys, use_threads=False).aggregate(
        [
            ("amount", "sum"),
            ("amount", "mean"),
            ("amount", "max"),
            ("amount", "tdigest", pc.TDigestOptions(q=0.9)),
        ]
    )
    index = per_amount.schema.get_field_index("amount_tdigest")
    per_amount = per_amount.set_column(
        index, "amount_p90", pc.list_flatten(per_amount["amount_tdigest"])
    )
    joined = per_event.join(per_amount, keys, join_type="left outer", use_threads=False)
    return pa.table(
        {
            "user_id": user_names.take(joined["user"]),
            "window_start": joined["window_start"],
            "events": joined["event_time_count"],
            "spend": pc.fill_null(joined["amount_sum"], 0.0),
            "avg_amount": joined["amount_mean"],
            "max_amount": joined["amount_max"],
            "last_item": item_names.take(joined["item_last"]),
            "items": joined["item_count_distinct"],
            "p90_amount": joined["amount_p90"],
            "max_event_time": joined["event_time_max"],
        }
    )


def fixed_view(events: pa.Table) -> pa.Table:
    ts = events["event_time"].to_numpy()
    hours = events.append_column("window_start", pa.array(ts - ts % FIXED_SIZE_MS))
    grouped = hours.group_by(["item_id", "window_start"], use_threads=False).aggregate(
        [
            ("event_time", "count", pc.CountOptions(mode="all")),
            ("amount", "sum", pc.ScalarAggregateOptions(min_count=0)),
        ]
    )
    return grouped.rename_columns(["item_id", "window_start", "views", "revenue"])


def run(events_path: str, out_dir: Path, id_field: Optional[str] = None) -> dict[str, int]:
    """Compute both views and write them to out_dir/<view>.parquet; returns rows per view."""
    events = read_events(events_path, id_field)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for view, table in ((SLIDING_VIEW, sliding_view(events)), (FIXED_VIEW, fixed_view(events))):
        pq.write_table(table, out_dir / f"{view}.parquet")
        rows[view] = table.num_rows
    return rows
