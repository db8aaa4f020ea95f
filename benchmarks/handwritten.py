"""Baseline (a): the pipeline a user writes first, with Beam's built-in combiners only.

ReadFromText -> json.loads -> dict elements -> WindowInto -> one built-in combiner per feature
-> CoGroupByKey -> one Redis HSET per row (redis-py in a DoFn, no pipelining). It writes every
window's row to `view:entity`, in whatever order they come: a naive online store whose last
write is not necessarily the newest window (what our compare-and-set upsert exists for).

On real-shaped logs (`run(..., id_field=...)`) the user's pipeline gains what those logs need:
event times parsed with `datetime.fromisoformat` when they are RFC 3339 strings (epoch ms
otherwise), and one record per id (`CombinePerKey` keeping any one copy of a redelivery).

`run_streaming` is the same pipeline as a user first writes it for streaming: the same windows
with `AfterWatermark(early=AfterProcessingTime(...), late=AfterCount(1))`, accumulating panes,
allowed lateness, `--streaming`. On Prism and Flink it reads the file with ReadFromText as a
stream; Beam's BundleBasedDirectRunner cannot stream a file read, so there the lines come from
a TestStream (the caller's `lines` transform; the benchmark uses the same replay as ours).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import redis
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms import trigger as tr
from apache_beam.transforms.combiners import CountCombineFn, Latest, MeanCombineFn
from apache_beam.transforms.window import FixedWindows, SlidingWindows, TimestampedValue
from apache_beam.utils.windowed_value import PaneInfoTiming

from benchmarks.workload import FIXED_VIEW, SLIDING_VIEW

P90_OF_11 = 9  # ApproximateQuantiles(11) returns min, p10, ..., p90, max

# Rows per (view, pane timing), tallied where _ToRow runs. That is this process on every runner
# the benchmark uses (the BundleBasedDirectRunner; Prism and Flink with LOOPBACK workers), where
# Beam's metrics are not (the streaming DirectRunner keeps only its last bundle's counters).
PANES: collections.Counter = collections.Counter()


def _amount(kv: tuple[str, dict]) -> Iterable[tuple[str, float]]:
    amount = kv[1].get("amount")
    if amount is not None:
        yield kv[0], amount


class _ToRow(beam.DoFn):
    """(entity, {feature: [value]}) in a window -> (redis key, mapping)."""

    def __init__(self, view: str):
        self._view = view

    def process(self, element: tuple[str, dict[str, list]], win=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam):
        PANES[(self._view, PaneInfoTiming.to_string(pane.timing))] += 1
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
    """Sliding 5m/1m: count, sum, mean, max, last, approx distinct and p90; a combiner each.
    `windowing`: WindowInto's trigger arguments (streaming), or none (batch)."""

    def __init__(self, windowing: Optional[dict[str, Any]] = None):
        super().__init__()
        self._windowing = windowing or {}

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        users = (
            records
            | "Key by user" >> beam.Map(lambda d: (d["user_id"], d))
            | "Sliding 5m/1m" >> beam.WindowInto(SlidingWindows(300, 60), **self._windowing)
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

    def __init__(self, windowing: Optional[dict[str, Any]] = None):
        super().__init__()
        self._windowing = windowing or {}

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        items = (
            records
            | "Key by item" >> beam.Map(lambda d: (d["item_id"], d))
            | "Fixed 1h" >> beam.WindowInto(FixedWindows(3600), **self._windowing)
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


def event_seconds(value: Any) -> float:
    """Epoch ms, or an RFC 3339 string with a zone (real logs mix both) -> epoch seconds."""
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value).timestamp()
    return value / 1000.0


def _any_copy(records: Iterable[dict]) -> dict:
    return next(iter(records))


def features(
    lines: beam.PCollection,
    redis_url: str,
    windowing: Optional[dict[str, Any]] = None,
    id_field: Optional[str] = None,
) -> None:
    """JSON lines -> (one record per id) -> features of both views -> one HSET per row."""
    records = lines | "Parse JSON" >> beam.Map(json.loads)
    if id_field:  # batch only: in the global window of a stream this would never fire
        records = (
            records
            | "Key by id" >> beam.Map(lambda d: (d[id_field], d))
            | "One per id" >> beam.CombinePerKey(_any_copy)
            | "Records" >> beam.Values()
        )
    records = records | "Event time" >> beam.Map(lambda d: TimestampedValue(d, event_seconds(d["event_time"])))
    rows = (
        records | "User features" >> UserFeatures(windowing),
        records | "Item features" >> ItemFeatures(windowing),
    )
    rows | "Merge rows" >> beam.Flatten() | "HSET each row" >> beam.ParDo(_HsetEachRow(redis_url))


def build(pipeline: beam.Pipeline, events: str, redis_url: str, id_field: Optional[str] = None) -> None:
    features(pipeline | "Read events" >> beam.io.ReadFromText(events), redis_url, id_field=id_field)


def streaming_windowing(early_s: int, allowed_lateness_s: int) -> dict[str, Any]:
    """The trigger a user writes first for streaming: on-time panes at the watermark, early panes
    every `early_s` of processing time, a late pane per late element, accumulating."""
    return {
        "trigger": tr.AfterWatermark(early=tr.AfterProcessingTime(int(early_s)), late=tr.AfterCount(1)),
        "accumulation_mode": tr.AccumulationMode.ACCUMULATING,
        "allowed_lateness": int(allowed_lateness_s),
    }


def run(
    events: str, redis_url: str, runner: str = "FnApiRunner", id_field: Optional[str] = None
) -> beam.runners.runner.PipelineResult:
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner", runner]))
    build(pipeline, events, redis_url, id_field)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def run_streaming(
    events: str,
    redis_url: str,
    runner_args: Sequence[str],
    early_s: int,
    allowed_lateness_s: int,
    lines: Optional[beam.PTransform] = None,
) -> beam.runners.runner.PipelineResult:
    """The streaming pipeline on `runner_args` (e.g. ["--runner", "PrismRunner"]): ReadFromText
    of `events` read as a stream, or the `lines` transform instead (a TestStream, for the
    BundleBasedDirectRunner)."""
    options = PipelineOptions(list(runner_args))
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    source = lines if lines is not None else beam.io.ReadFromText(events)
    features(pipeline | "Read events" >> source, redis_url, streaming_windowing(early_s, allowed_lateness_s))
    result = pipeline.run()
    result.wait_until_finish()
    return result
