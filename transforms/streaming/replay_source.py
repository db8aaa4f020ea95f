"""Local replay without TestStream: JSONL lines played as an unbounded stream by a splittable DoFn.

Same contract as transforms/streaming/replay.py (file order = arrival order; elements are
(line, watermark at arrival) pairs for ParseEvents(clock="element"); the watermark trails the
newest event time seen by `max_delay`, advanced every `chunk` lines), but time is real: the source
plays `speed` seconds of event time per real second, deferring the rest of its restriction
(`defer_remainder`) between steps, so an engine's own processing-time triggers (early panes) fire
as the stream plays. The watermark comes from a ManualWatermarkEstimator (run here on Prism and on
Flink; Beam's Python streaming engine runs no splittable DoFn).

`--replay` uses it on Prism (pipelines/streaming_features.py); on Beam's Python engine the replay
is a TestStream (transforms/streaming/replay.py), whose simulated time takes no real time.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.pvalue import PBegin, PCollection
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from transforms.parse import ParsePlan
from transforms.streaming.replay import ReplayClock, ReplayStats, _event_time


class _InOrderTracker(OffsetRestrictionTracker):
    """An offset tracker that only checkpoints (split at 0): a split in the middle would play
    the rest of the file beside its start, out of arrival order."""

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)

    def is_bounded(self) -> bool:
        return False


class _LinesProvider(RestrictionProvider):
    """One restriction over the whole file (the element is its line count), never split up
    front (arrival order)."""

    def initial_restriction(self, element: int) -> OffsetRange:
        return OffsetRange(0, element)

    def create_tracker(self, restriction: OffsetRange) -> _InOrderTracker:
        return _InOrderTracker(restriction)

    def restriction_size(self, element, restriction: OffsetRange) -> int:
        return restriction.size()

    def split(self, element, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction

    def truncate(self, element, restriction: OffsetRange) -> None:
        return None  # drained: the rest of the replay is dropped, like a stopped publisher


class _PlayLines(beam.DoFn):
    """Plays the lines of its restriction in steps of `tick_s` real seconds, each step covering
    `speed * tick_s` seconds of event time, then defers the rest. The watermark advances at
    chunk ends only, so a line's clock is the watermark of the chunk it arrived in."""

    def __init__(self, lines: list[bytes], times: list[Optional[int]], max_delay_ms: int,
                 speed: float, chunk: int, tick_s: float):
        self._lines = lines
        self._max_delay_ms = max_delay_ms
        self._step_ms = int(speed * tick_s * 1000)
        self._chunk = chunk
        self._tick = Duration(micros=int(tick_s * 1_000_000))
        # newest[i]: the newest event time among lines [0, i) (None before the first parseable one);
        # a resumed restriction needs it, and it is cheaper than a restriction that carries it
        self._newest: list[Optional[int]] = [None]
        for t in times:
            last = self._newest[-1]
            self._newest.append(last if t is None else t if last is None else max(last, t))

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: int,
        tracker=beam.DoFn.RestrictionParam(_LinesProvider()),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[beam.window.TimestampedValue]:
        restriction = tracker.current_restriction()
        step_end: Optional[int] = None
        for i in range(restriction.start, restriction.stop):
            newest = self._newest[i]
            if newest is not None:
                if step_end is None:
                    step_end = newest + self._step_ms
                elif newest >= step_end:
                    tracker.defer_remainder(self._tick)  # real time passes between steps
                    return
            if not tracker.try_claim(i):
                return
            # each line travels with the replay's watermark at its arrival (the lateness guard's clock)
            clock = watermark.current_watermark()
            clock_ms = clock.micros // 1000 if clock is not None else -1
            yield beam.window.TimestampedValue((self._lines[i], clock_ms),
                                               MIN_TIMESTAMP if clock is None else clock)
            if (i + 1) % self._chunk == 0 or i + 1 == len(self._lines):
                newest = self._newest[i + 1]
                if newest is not None:
                    target = Timestamp(micros=(newest - self._max_delay_ms) * 1000)
                    if clock is None or target > clock:
                        watermark.set_watermark(target)


class ReplaySource(beam.PTransform[PBegin, PCollection[tuple[bytes, int]]]):
    """JSONL lines (arrival order) -> an unbounded stream of (line, watermark at arrival), played
    at `speed` seconds of event time per real second."""

    def __init__(self, lines: Iterable[bytes], plan: ParsePlan, max_delay_s: float = 30.0,
                 speed: float = 60.0, chunk: int = 100, tick_s: float = 0.5):
        super().__init__()
        if speed <= 0:
            raise ValueError(f"replay speed must be > 0 s of event time per second (got {speed!r})")
        if chunk < 1 or tick_s <= 0:
            raise ValueError(f"chunk must be >= 1, tick_s > 0 (got chunk={chunk!r}, tick_s={tick_s!r})")
        self._lines = [line for line in lines if line.strip()]
        self._times = [_event_time(line, plan) for line in self._lines]
        self._max_delay_ms = int(max_delay_s * 1000)
        self._speed = speed
        self._chunk = chunk
        self._tick_s = tick_s

    @property
    def stats(self) -> ReplayStats:
        """Events, and those older than the watermark when they arrive (the watermark moves at
        chunk ends, as _PlayLines moves it)."""
        clock = ReplayClock(self._max_delay_ms)
        for i, t in enumerate(self._times):
            clock.arrive(t)
            if (i + 1) % self._chunk == 0 or i + 1 == len(self._lines):
                clock.advance()
        return clock.stats

    def expand(self, pbegin: PBegin) -> PCollection[tuple[bytes, int]]:
        fn = _PlayLines(self._lines, self._times, self._max_delay_ms, self._speed, self._chunk,
                        self._tick_s)
        return (pbegin
                | "Line count" >> beam.Create([len(self._lines)])
                | "Play lines" >> beam.ParDo(fn))
