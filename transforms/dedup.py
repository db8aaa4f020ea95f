"""Duplicate events (same `source.id_field`) removed within a bounded event-time horizon.

Streaming: a stateful DoFn keyed by event id keeps the first copy to arrive and remembers the
id until the watermark passes its event time + horizon (Beam's DeduplicatePerKey pattern, plus a
counter, because removed duplicates must be visible). Bounded: the duplicate ids are found in a
cheap pre-pass over the ids, and only those events are grouped; per id the earliest copy is kept,
and a later copy only when it is more than the horizon after the last one kept.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from transforms.events import BadEvent, Event, decode_json, event_timestamp


class _DropSeenIds(beam.DoFn):
    """Streaming: per id, the event time of the copy kept. A copy within the horizon of it is
    dropped, as the bounded rule drops it; the id is remembered until no copy within the
    horizon could still count in any window (horizon + the views' reach: later copies would be
    too late anyway), so a redelivery arriving late is not counted twice."""

    KEPT = userstate.ReadModifyWriteStateSpec("kept", VarIntCoder())
    EXPIRY = userstate.TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, horizon_s: int, reach_ms: int):
        self._horizon_ms = horizon_s * 1000
        self._remember = Duration(micros=(self._horizon_ms + reach_ms) * 1000)
        self._removed = Metrics.counter("dedup", "duplicates_removed")

    def process(
        self,
        element: tuple[str, Event],
        timestamp=beam.DoFn.TimestampParam,
        kept=beam.DoFn.StateParam(KEPT),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[Event]:
        event = element[1]
        previous = kept.read()
        if previous is not None and abs(event.event_time_ms - previous) <= self._horizon_ms:
            self._removed.inc()
            return
        kept.write(event.event_time_ms)
        expiry.set(timestamp + self._remember)
        yield TimestampedValue(event, timestamp)

    @userstate.on_timer(EXPIRY)
    def forget(self, kept=beam.DoFn.StateParam(KEPT)) -> None:
        kept.clear()


class _KeepWithinHorizon(beam.DoFn):
    def __init__(self, horizon_s: int):
        self._horizon_ms = horizon_s * 1000
        self._removed = Metrics.counter("dedup", "duplicates_removed")

    def process(self, element: tuple[str, Iterable[Event]]) -> Iterable[Event]:
        copies = list(element[1])
        kept = keep_within_horizon(copies, self._horizon_ms)
        self._removed.inc(len(copies) - len(kept))
        for event in kept:
            yield TimestampedValue(event, event_timestamp(event))


class DropDuplicateEvents(beam.PTransform):
    """Events -> events without repeated ids inside the horizon (events without an id pass).

    Streaming uses per-id state expiring with the watermark; a bounded run sees the whole input
    before any timer could fire, so it groups by id and applies the horizon rule directly.
    """

    def __init__(self, horizon_s: int, streaming: bool, reach_ms: int = 0):
        super().__init__()
        self._horizon_s = horizon_s
        self._streaming = streaming
        self._reach_ms = reach_ms

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        with_id, without_id = (
            events | "Has id" >> beam.Partition(lambda e, _: 0 if e.event_id is not None else 1, 2)
        )
        keyed = with_id | "Key by id" >> beam.Map(lambda e: (e.event_id, e)).with_output_types(
            tuple[str, Event])
        if self._streaming:
            unique = keyed | "Drop seen ids" >> beam.ParDo(_DropSeenIds(self._horizon_s, self._reach_ms)).with_output_types(Event)
        else:
            unique = (
                keyed
                | "Group copies" >> beam.GroupByKey()
                | "Keep within horizon" >> beam.ParDo(_KeepWithinHorizon(self._horizon_s)).with_output_types(Event)
            )
        return (unique, without_id) | "Rejoin" >> beam.Flatten()


def keep_within_horizon(events: Iterable[Event], horizon_ms: int) -> list[Event]:
    """Bounded rule: earliest copy first; a later copy only beyond the horizon of the last kept."""
    kept: list[Event] = []
    for event in sorted(events, key=lambda e: (e.event_time_ms, tuple(e.keys), tuple(map(str, e.nums)))):
        if not kept or event.event_time_ms - kept[-1].event_time_ms > horizon_ms:
            kept.append(event)
    return kept


def event_id_of(raw: Any, id_field: str) -> Optional[str]:
    """The id of a raw event for the pre-pass, decoded exactly as the parser decodes it; None
    for anything the parser refuses before it reads the id."""
    try:
        record = decode_json(raw) if isinstance(raw, (bytes, str)) else raw
    except BadEvent:
        return None
    if not isinstance(record, dict):
        return None
    value = record.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)
