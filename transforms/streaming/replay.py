"""Local replay: JSONL files (a path or a glob, in name order) played as a stream on the DirectRunner (Beam's TestStream).

File order is arrival order; elements are (line, watermark at arrival) pairs (ParseEvents
with clock="element"). The watermark trails the newest event time seen by `max_delay`
(bounded out-of-orderness), and simulated processing time follows event time, so early
(processing-time) firings, on-time panes and late panes all happen as they would in production:
an event older than the watermark when it arrives is late.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Iterable, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.backfill.files import matching_files
from transforms.parse import BadEvent, ParsePlan


@dataclass
class ReplayStats:
    events: int = 0
    late_on_arrival: int = 0  # older than the watermark when they arrived
    first_event_ms: Optional[int] = None
    last_watermark_ms: Optional[int] = None


def _event_time(line: bytes, plan: ParsePlan) -> Optional[int]:
    """The event time the pipeline will see, or None for a line it will refuse (which then
    does not move the replay's watermark: the parser's verdict, not a second opinion)."""
    try:
        return plan.parse(line).event_time_ms
    except BadEvent:
        return None  # still replayed: the pipeline dead-letters it with the reason


class ReplayClock:
    """The replay's watermark, shared by the TestStream replay and ReplaySource: it trails the
    newest event time seen by `max_delay_ms` and moves at chunk ends; counts what arrives behind it."""

    def __init__(self, max_delay_ms: int):
        self.stats = ReplayStats()
        self.watermark: Optional[int] = None
        self._newest: Optional[int] = None
        self._max_delay_ms = max_delay_ms

    def arrive(self, t: Optional[int]) -> None:
        """One line, with its event time (None: a line the pipeline refuses)."""
        self.stats.events += 1
        if t is None:
            return
        if self.stats.first_event_ms is None:
            self.stats.first_event_ms = t
        if self.watermark is not None and t < self.watermark:
            self.stats.late_on_arrival += 1
        self._newest = t if self._newest is None else max(self._newest, t)

    def advance(self) -> Optional[int]:
        """At a chunk's end: the new watermark, or None when it does not move."""
        if self._newest is None:
            return None
        target = self._newest - self._max_delay_ms
        if self.watermark is not None and target <= self.watermark:
            return None
        self.watermark = self.stats.last_watermark_ms = target
        return target


def build_replay(
    lines: Iterable[bytes], plan: ParsePlan, max_delay_s: float = 30.0, chunk: int = 100
) -> tuple[TestStream, ReplayStats]:
    stream = TestStream()
    clock = ReplayClock(int(max_delay_s * 1000))
    pending: list[bytes] = []

    def flush() -> None:
        if not pending:
            return
        # each line travels with the replay's watermark at its arrival: the lateness guard's clock
        previous = clock.watermark
        stream.add_elements([(line, -1 if previous is None else previous) for line in pending])
        pending.clear()
        target = clock.advance()
        if target is not None:
            if previous is not None:
                # processing time follows event time, so early firings keep their rhythm
                stream.advance_processing_time(Duration(micros=(target - previous) * 1000))
            stream.advance_watermark_to(Timestamp(micros=target * 1000))

    for line in lines:
        if not line.strip():
            continue
        clock.arrive(_event_time(line, plan))
        pending.append(line)
        if len(pending) >= chunk:
            flush()
    flush()
    stream.advance_watermark_to_infinity()
    return stream, clock.stats


def read_lines(pattern: str) -> list[bytes]:
    """The lines of every file a path or glob matches, files in name order (`.gz` decompressed):
    the replay's arrival order."""
    paths = sorted(matching_files(pattern))
    if not paths:
        raise FileNotFoundError(errno.ENOENT, "no files match", pattern)
    lines: list[bytes] = []
    for path in paths:
        with FileSystems.open(path) as handle:  # compression from the file name
            lines.extend(handle.read().splitlines())
    return lines
