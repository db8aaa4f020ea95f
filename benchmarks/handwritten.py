"""Baseline (a): the pipeline a user writes first, with Beam's built-in combiners only.

ReadFromText -> json.loads -> dict elements -> WindowInto -> one built-in combiner per feature
-> CoGroupByKey -> one Redis HSET per row (redis-py in a DoFn, no pipelining). It writes every
window's row to `view:entity`, in whatever order they come: a naive online store whose last
write is not necessarily the newest window (what our compare-and-set upsert exists for).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

import apache_beam as beam
import redis
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.combiners import CountCombineFn, Latest, MeanCombineFn
from apache_beam.transforms.window import FixedWindows, SlidingWindows, TimestampedValue

from benchmarks.workload import FIXED_VIEW, SLIDING_VIEW

P90_OF_11 = 9  # ApproximateQuantiles(11) returns min, p10, ..., p90, max


def _amount(kv: tuple[str, dict]) -> Iterable[tuple[str, float]]:
    amount = kv[1].get("amount")
    if amount is not None:
        yield kv[0], amount


class _ToRow(beam.DoFn):
    """(entity, {feature: [value]}) in a window -> (redis key, mapping)."""

    def __init__(self, view: str):
        self._view = view

    def process(self, element: tuple[str, dict[str, list]], win=beam.DoFn.WindowParam):
        entity, grouped = element
        mapping: dict[str, Any] = {
            "window_start": int(win.start.micros // 1000),
            "window_end": int(win.end.micros // 1000),
        }
        for name, values in grouped.items():
            if values and values[0] is not None:
                mapping[name] = values[0]
        yield f"{self._view}:{entity}", mapping


class _HsetEachRow(beam.DoFn):
    """One HSET round trip per row; the client lives for the DoFn instance (setup/teardown)."""

    def __init__(self, url: str):
        self._url = url
        self._client: Optional[redis.Redis] = None
        self._rows = Metrics.counter("handwritten", "rows_written")

    def setup(self) -> None:
        self._client = redis.Redis.from_url(self._url)

    def process(self, row: tuple[str, dict[Any, Any]]) -> None:
        key, mapping = row
        if self._client is None:
            raise RuntimeError("process() before setup()")
        self._client.hset(key, mapping=mapping)
        self._rows.inc()

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()


class UserFeatures(beam.PTransform):
    """Sliding 5m/1m: count, sum, mean, max, last, approx distinct and p90; a combiner each."""

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        users = (
            records
            | "Key by user" >> beam.Map(lambda d: (d["user_id"], d))
            | "Sliding 5m/1m" >> beam.WindowInto(SlidingWindows(300, 60))
        )
        amounts = users | "Amounts" >> beam.FlatMap(_amount)
        items = users | "Items" >> beam.Map(lambda kv: (kv[0], kv[1]["item_id"]))
        features = {
            "events": users | "Count" >> beam.CombinePerKey(CountCombineFn()),
            "spend": (
                users
                | "Amount or 0" >> beam.Map(lambda kv: (kv[0], kv[1].get("amount") or 0.0))
                | "Sum" >> beam.CombinePerKey(sum)
            ),
            "avg_amount": amounts | "Mean" >> beam.CombinePerKey(MeanCombineFn()),
            "max_amount": amounts | "Max" >> beam.CombinePerKey(max),
            "last_item": items | "Latest" >> Latest.PerKey(),
            "items": items | "Distinct" >> beam.ApproximateUnique.PerKey(error=0.02),
            "p90_amount": (
                amounts
                | "Quantiles" >> beam.ApproximateQuantiles.PerKey(11)
                | "P90" >> beam.MapTuple(lambda k, qs: (k, qs[P90_OF_11]))
            ),
        }
        return (
            features
            | "Join user features" >> beam.CoGroupByKey()
            | "User rows" >> beam.ParDo(_ToRow(SLIDING_VIEW))
        )


class ItemFeatures(beam.PTransform):
    """Fixed 1h: count and sum."""

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        items = (
            records
            | "Key by item" >> beam.Map(lambda d: (d["item_id"], d))
            | "Fixed 1h" >> beam.WindowInto(FixedWindows(3600))
        )
        features = {
            "views": items | "Count" >> beam.CombinePerKey(CountCombineFn()),
            "revenue": (
                items
                | "Amount or 0" >> beam.Map(lambda kv: (kv[0], kv[1].get("amount") or 0.0))
                | "Sum" >> beam.CombinePerKey(sum)
            ),
        }
        return (
            features
            | "Join item features" >> beam.CoGroupByKey()
            | "Item rows" >> beam.ParDo(_ToRow(FIXED_VIEW))
        )


def build(pipeline: beam.Pipeline, events: str, redis_url: str) -> None:
    records = (
        pipeline
        | "Read events" >> beam.io.ReadFromText(events)
        | "Parse JSON" >> beam.Map(json.loads)
        | "Event time" >> beam.Map(lambda d: TimestampedValue(d, d["event_time"] / 1000.0))
    )
    rows = (
        records | "User features" >> UserFeatures(),
        records | "Item features" >> ItemFeatures(),
    )
    rows | "Merge rows" >> beam.Flatten() | "HSET each row" >> beam.ParDo(_HsetEachRow(redis_url))


def run(
    events: str, redis_url: str, runner: str = "FnApiRunner"
) -> beam.runners.runner.PipelineResult:
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner", runner]))
    build(pipeline, events, redis_url)
    result = pipeline.run()
    result.wait_until_finish()
    return result
