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
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from transforms.events import BadEvent, Event, decode_json, event_timestamp


class _DropSeenIds(beam.DoFn):
    SEEN = userstate.ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRY = userstate.TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, horizon_s: int):
        self._horizon = Duration(seconds=horizon_s)
        self._removed = Metrics.counter("dedup", "duplicates_removed")

    def process(
        self,
        element: tuple[str, Event],
        timestamp=beam.DoFn.TimestampParam,
        seen=beam.DoFn.StateParam(SEEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[Event]:
        if seen.read():
            self._removed.inc()
            return
        seen.write(True)
        expiry.set(timestamp + self._horizon)
        yield TimestampedValue(element[1], timestamp)

    @userstate.on_timer(EXPIRY)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)) -> None:
        seen.clear()


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

    def __init__(self, horizon_s: int, streaming: bool):
        super().__init__()
        self._horizon_s = horizon_s
        self._streaming = streaming

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        with_id, without_id = (
            events | "Has id" >> beam.Partition(lambda e, _: 0 if e.event_id is not None else 1, 2)
        )
        keyed = with_id | "Key by id" >> beam.Map(lambda e: (e.event_id, e)).with_output_types(
            tuple[str, Event])
        if self._streaming:
            unique = keyed | "Drop seen ids" >> beam.ParDo(_DropSeenIds(self._horizon_s)).with_output_types(Event)
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
