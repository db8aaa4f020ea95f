"""The benchmark workload: a seeded event set and the feature spec every case computes."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.json as pj
import yaml

from pipelines.sample_events import generate, write_jsonl

SLIDING_VIEW = "user_5m"
FIXED_VIEW = "item_1h"

# Written by the suite (results/spec.yaml) so a run can be reproduced with the pipelines' own CLI.
# No source.id_field: de-duplication is a stage the baselines do not have, so it would not be
# a like-for-like comparison of the aggregation.
SPEC: dict[str, Any] = {
    "project": "bench",
    "source": {"timestamp_field": "event_time"},
    "entities": {"user": {"join_key": "user_id"}, "item": {"join_key": "item_id"}},
    "feature_views": [
        {
            "name": SLIDING_VIEW,
            "entity": "user",
            "window": {"type": "sliding", "size": "5m", "period": "1m"},
            "ttl": "1d",
            "features": [
                {"name": "events", "agg": "count"},
                {"name": "spend", "agg": "sum", "field": "amount"},
                {"name": "avg_amount", "agg": "mean", "field": "amount"},
                {"name": "max_amount", "agg": "max", "field": "amount"},
                {"name": "last_item", "agg": "last", "field": "item_id"},
                {"name": "items", "agg": "approx_count_distinct", "field": "item_id"},
                {"name": "p90_amount", "agg": "approx_percentile", "field": "amount", "q": 0.9},
            ],
        },
        {
            "name": FIXED_VIEW,
            "entity": "item",
            "window": {"type": "fixed", "size": "1h"},
            "ttl": "7d",
            "features": [
                {"name": "views", "agg": "count"},
                {"name": "revenue", "agg": "sum", "field": "amount"},
            ],
        },
    ],
}
SLIDING_SIZE_MS, SLIDING_PERIOD_MS, FIXED_SIZE_MS = 300_000, 60_000, 3_600_000


@dataclass(frozen=True)
class EventSet:
    """Arguments of sample_events.generate: Zipf-skewed users and items, ~5 % out of order."""

    events: int
    seed: int = 7
    users: int = 1000
    items: int = 500
    events_per_second: float = 50.0
    out_of_order_fraction: float = 0.05
    shape: str = "plain"  # plain: epoch-ms times, unique ids | real: real_shaped()

    @property
    def name(self) -> str:
        prefix = "events" if self.shape == "plain" else f"{self.shape}_events"
        return f"{prefix}_{self.events}_u{self.users}_eps{self.events_per_second:g}_seed{self.seed}.jsonl"


# The same views over real-shaped logs, with de-duplication by event id.
REAL_SPEC: dict[str, Any] = {**SPEC, "source": {"timestamp_field": "event_time", "id_field": "event_id"}}


# The streaming cases (B2 on every engine, and the hand-written streaming baseline): the same
# views with the trigger a streaming user writes - early panes every minute of processing time,
# a late pane per late event within a minute of allowed lateness, accumulating. The hand-written
# baseline builds the same trigger with Beam's classes (handwritten.streaming_windowing).
STREAM_EARLY_S = 60
STREAM_LATENESS_S = 0
STREAM_SPEC: dict[str, Any] = {
    **SPEC,
    "feature_views": [
        {
            **view,
            "trigger": {"early_every": f"{STREAM_EARLY_S}s", "late_every": 1},
            "allowed_lateness": f"{STREAM_LATENESS_S}s",
            "accumulation": "accumulating",
        }
        for view in SPEC["feature_views"]
    ],
}


def write_spec(path: Path, spec: dict[str, Any] = SPEC) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


_EPOCH_MS_TIME = re.compile(rb'"event_time":(-?\d+)(?=[,}])')


def real_shaped(lines: Iterable[bytes], seed: int, duplicate_share: float = 0.01) -> Iterator[bytes]:
    """Events shaped like real logs: event times as RFC 3339 strings (with and without fractions,
    `Z` and offsets) mixed with epoch ms in one file, and ~1 % of events redelivered a little
    later (the same id and record)."""
    rng = random.Random(seed)
    formats = (
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"),
        lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        lambda d: d.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(timespec="microseconds"),
        lambda d: d.astimezone(dt.timezone(dt.timedelta(hours=-5, minutes=-30))).isoformat(),
    )
    pending: list[bytes] = []
    for line in lines:
        # Only the time changes: splice it into the line (what json.loads + dumps of the record
        # gives, byte for byte, at half the cost).
        out = line
        if rng.random() < 0.6:
            found = _EPOCH_MS_TIME.search(line)
            if found:
                when = dt.datetime.fromtimestamp(int(found.group(1)) / 1000, dt.timezone.utc)
                text = json.dumps(rng.choice(formats)(when)).encode()
                out = line[: found.start(1)] + text + line[found.end(1):]
        yield out
        if rng.random() < duplicate_share:
            pending.append(out)
        if len(pending) > 20:
            yield pending.pop(0)
    yield from pending


def write_events(directory: Path, event_set: EventSet) -> dict[str, Any]:
    """Write the event set as JSONL (once; the generator is seeded) and describe it."""
    path = directory / event_set.name
    meta_path = path.with_suffix(".meta.json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    lines = generate(
        event_set.events,
        seed=event_set.seed,
        users=event_set.users,
        items=event_set.items,
        events_per_second=event_set.events_per_second,
        out_of_order_fraction=event_set.out_of_order_fraction,
    )
    if event_set.shape == "real":
        lines = real_shaped(lines, event_set.seed)
    write_jsonl(str(path), lines)
    if event_set.shape == "plain":
        shape = describe(path)
    else:  # string timestamps: the generator's own numbers (redelivered copies included)
        with open(path, "rb") as handle:
            count = sum(1 for _ in handle)
        shape = {"events": count, "span_s": round(event_set.events / event_set.events_per_second, 1),
                 "out_of_order_share": event_set.out_of_order_fraction}
    meta = {**asdict(event_set), "path": str(path), "bytes": path.stat().st_size, **shape}
    meta_path.write_text(json.dumps(meta))
    return meta


def describe(path: Path) -> dict[str, Any]:
    """Measured shape of a set: out-of-order share, span, and the distinct keys the pipeline
    keeps state for - (entity, tile) while pre-aggregating, (entity, window) for the rows."""
    table = pj.read_json(
        str(path),
        parse_options=pj.ParseOptions(
            explicit_schema=pa.schema(
                [("event_time", pa.int64()), ("user_id", pa.string()), ("item_id", pa.string())]
            ),
            unexpected_field_behavior="ignore",
        ),
    )
    ts = table["event_time"].to_numpy()
    newest_before = np.maximum.accumulate(ts)
    user_tiles = pa.table({"k": table["user_id"], "t": ts - ts % SLIDING_PERIOD_MS})
    user_tiles = user_tiles.group_by(["k", "t"]).aggregate([])
    starts = user_tiles["t"].to_numpy()
    per_window = SLIDING_SIZE_MS // SLIDING_PERIOD_MS
    user_windows = (
        pa.table(
            {
                "k": pa.concat_arrays([user_tiles["k"].combine_chunks()] * per_window),
                "w": np.concatenate([starts - k * SLIDING_PERIOD_MS for k in range(per_window)]),
            }
        )
        .group_by(["k", "w"])
        .aggregate([])
        .num_rows
    )
    item_hours = (
        pa.table({"k": table["item_id"], "t": ts - ts % FIXED_SIZE_MS})
        .group_by(["k", "t"])
        .aggregate([])
    )
    return {
        "out_of_order_share": round(float(np.mean(ts[1:] < newest_before[:-1])), 4)
        if len(ts) > 1
        else 0.0,
        "span_s": round(float(ts.max() - ts.min()) / 1000, 1),
        "distinct_users": len(pa.compute.unique(table["user_id"])),
        "tiles": {SLIDING_VIEW: user_tiles.num_rows, FIXED_VIEW: item_hours.num_rows},
        "windows": {SLIDING_VIEW: user_windows, FIXED_VIEW: item_hours.num_rows},
    }
