"""The soak's unbounded source for portable runners (Prism, Flink) and its in-process tallies.

Prism and Flink cannot run Python's ReadFromPubSub (a DirectRunner-only read in the Python SDK),
so the soak generates its events in the pipeline: an unbounded splittable DoFn ticks once per
`tick_s` of wall-clock time (Beam's PeriodicImpulse machinery: its restriction provider, an
OffsetRestrictionTracker and a manual watermark estimator), and each tick becomes `rate * tick_s`
JSON events shaped like the ones the Pub/Sub soak publishes, with event times spread over the tick.

Why not PeriodicImpulse itself: between ticks it self-checkpoints (`defer_remainder`) with a
sub-second delay, and the Flink job server (Java Beam 2.62, `BundleCheckpointHandlers.
StateAndTimerBundleCheckpointHandler`) keeps only the whole seconds of a requested delay, so it
resumes the residual at once, ~100 times a second, and registers a new keyed ValueState for every
checkpoint (`sdf_checkpoint:<id>:<index>`, never removed: apache/beam#27648, fixed by
apache/beam#39191 after the 2.62 and 2.70 job servers Maven Central serves). Measured here with
PeriodicImpulse alone: 10,190 registered states (1.3M heap state maps) after 90 s, and a 512 MB
JVM heap full and thrashing after 2.5 min. On Flink, `Ticks` instead sleeps through gaps under a
second inside the bundle and checkpoints only every `max_bundle_s` (or before a gap of a second
or more), so Flink registers one state per `max_bundle_s`: about 120 in 10 minutes (measured: 15
registered states after 90 s, old generation flat at ~50 MB over 4 minutes). On Prism,
`max_bundle_s=0`: it defers between ticks exactly as PeriodicImpulse does (Prism honours
sub-second delays and keeps no per-checkpoint state; and with ticks slept through inside a
bundle, Prism 2.77 never advanced the watermark: no window fired in 40 s).

The tallies are module globals, updated by DoFns that run in the soak's own process: with
LOOPBACK (PrismRunner's default, and the soak's Flink flags) the SDK worker is a thread pool of
the submitting process. They are kept in this module (not in benchmarks.soak, which runs as
__main__ and whose classes would be pickled by value, with their own copy of the globals).
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.periodicsequence import ImpulseSeqGenRestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

_LOCK = threading.Lock()
TALLY: dict[str, Any] = {
    "generated": 0,  # events the source has emitted
    "first_tick_s": None,  # wall-clock time of the first tick's timestamp
    "rows": 0,  # feature rows (panes) the pipeline has emitted
    "newest_on_time_end_ms": None,  # newest window end among ON_TIME panes: the output's progress
}


def reset() -> None:
    with _LOCK:
        TALLY.update(generated=0, first_tick_s=None, rows=0, newest_on_time_end_ms=None)


def snapshot() -> dict[str, Any]:
    with _LOCK:
        return dict(TALLY)


class _EventsOfTick(beam.DoFn):
    """A tick's timestamp -> that tick's events (JSON bytes), `rate` per second on average."""

    def __init__(self, rate: float, tick_s: float, seed: int):
        self._rate, self._tick_s, self._seed = rate, tick_s, seed
        self._rng: random.Random | None = None
        self._carry = 0.0

    def setup(self) -> None:
        self._rng = random.Random(self._seed)

    def process(self, tick: Any) -> Iterable[bytes]:  # the tick's time: float seconds or a Timestamp
        rng = self._rng
        if rng is None:
            raise RuntimeError("process() before setup()")
        due = self._rate * self._tick_s + self._carry
        count = int(due)
        self._carry = due - count
        tick_ms = Timestamp.of(tick).micros // 1000
        spread_ms = int(self._tick_s * 1000)
        with _LOCK:
            if TALLY["first_tick_s"] is None:
                TALLY["first_tick_s"] = tick_ms / 1000
            TALLY["generated"] += count
        for i in range(count):
            record = {
                "event_id": f"e{tick_ms}-{i}",
                "event_time": tick_ms + i * spread_ms // max(count, 1),
                "user_id": f"u{int(rng.paretovariate(1.2)) % 500}",
                "item_id": f"i{rng.randrange(300)}",
                "event_type": rng.choice(["view", "view", "click", "purchase"]),
                "amount": round(rng.uniform(1, 100), 2),
            }
            yield json.dumps(record).encode()


class _TickFn(beam.DoFn):
    """(start, stop, interval) -> the tick times start + k * interval (seconds, timestamped),
    each once wall-clock time reaches it. Sleeps through gaps shorter than a second (up to
    `max_bundle_s` per bundle; 0: never, as PeriodicImpulse), then defers the rest of the
    restriction with the delay to the next tick, and holds the watermark at the next tick time
    (like PeriodicImpulse)."""

    def __init__(self, max_bundle_s: float):
        self._max_bundle_s = max_bundle_s

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: tuple,
        tracker=beam.DoFn.RestrictionParam(ImpulseSeqGenRestrictionProvider()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Iterable[TimestampedValue]:
        start, _, interval = element
        start_s = Timestamp.of(start).micros / 1e6
        index = tracker.current_restriction().start
        began = time.time()
        while True:
            due = start_s + interval * index
            wait = due - time.time()
            if wait > 0:
                if wait >= 1.0 or time.time() - began >= self._max_bundle_s:
                    self._hold(watermark, due)
                    tracker.defer_remainder(Duration(micros=int(wait * 1e6)))
                    return
                time.sleep(wait)
            if not tracker.try_claim(index):
                return
            self._hold(watermark, due)
            yield TimestampedValue(due, due)
            index += 1

    @staticmethod
    def _hold(watermark: Any, at_s: float) -> None:
        at = Timestamp.of(at_s)
        current = watermark.current_watermark()
        if current is None or at > current:
            watermark.set_watermark(at)


class Ticks(beam.PTransform):
    """An unbounded tick every `interval_s` of wall-clock time from the job's start."""

    def __init__(self, interval_s: float, max_bundle_s: float = 0.0):
        super().__init__()
        self._interval_s, self._max_bundle_s = interval_s, max_bundle_s

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        interval = self._interval_s
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "From now" >> beam.Map(lambda _: (Timestamp.now(), MAX_TIMESTAMP, interval))
            | "Tick" >> beam.ParDo(_TickFn(self._max_bundle_s))
        )


class GeneratedEvents(beam.PTransform):
    """Unbounded JSON events at `rate` per second of wall-clock time, from the job's start.
    `max_bundle_s`: see Ticks (5 s on Flink, 0 on Prism)."""

    def __init__(self, rate: float, tick_s: float = 1.0, seed: int = 1, max_bundle_s: float = 0.0):
        super().__init__()
        self._rate, self._tick_s, self._seed = rate, tick_s, seed
        self._max_bundle_s = max_bundle_s

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Ticks" >> Ticks(self._tick_s, self._max_bundle_s)
            | "Events of each tick" >> beam.ParDo(_EventsOfTick(self._rate, self._tick_s, self._seed))
        )


class TallyRows(beam.DoFn):
    """Counts the pipeline's feature rows and the newest ON_TIME window end (output progress)."""

    def process(self, row: Any) -> None:
        with _LOCK:
            TALLY["rows"] += 1
            if row.pane_timing == "ON_TIME":
                newest = TALLY["newest_on_time_end_ms"]
                if newest is None or row.window_end_ms > newest:
                    TALLY["newest_on_time_end_ms"] = row.window_end_ms
