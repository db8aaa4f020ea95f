"""Duplicate events (same `source.id_field`) removed within a bounded event-time horizon.

Streaming: a stateful DoFn keyed by event id keeps the first copy to arrive and remembers the
id until the watermark passes its event time + horizon (Beam's DeduplicatePerKey pattern, plus a
counter, because removed duplicates must be visible). Bounded: the duplicate ids are found in a
cheap pre-pass over the ids (64-bit hashes, sharded, so no worker holds every id), and only those
events are grouped; per id the earliest copy is kept, and a later copy only when it is more than
the horizon after the last one kept.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms import userstate, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from transforms.parse import BadEvent, decode_record, event_timestamp
from transforms.records import Event
from transforms.windows import is_stream


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


class KeepWithinHorizon(beam.PTransform[PCollection[Tuple[str, Event]], PCollection[Event]]):
    """Bounded: (id, Event) pairs -> the copies the horizon rule keeps, at their event times (the
    event path's DropDuplicateEvents; the backfill's fast path resolves its copies per id shard
    with `kept_copies`)."""

    def __init__(self, horizon_s: int):
        super().__init__()
        self._horizon_s = horizon_s

    def expand(self, keyed: PCollection[Tuple[str, Event]]) -> PCollection[Event]:
        grouped = (
            keyed
            # The grouped copies keep their earliest time and are re-timestamped to their
            # own (later or equal) event times. With the default END_OF_WINDOW combiner the
            # group would sit at the end of the global window, so a runner that tracks the
            # watermark in batch (Prism) would find every event behind it and drop it as late.
            | "Hold at earliest" >> beam.WindowInto(
                window.GlobalWindows(), timestamp_combiner=window.TimestampCombiner.OUTPUT_AT_EARLIEST)
            | "Group copies" >> beam.GroupByKey()
        )
        return grouped | "Keep within horizon" >> beam.ParDo(
            _KeepWithinHorizon(self._horizon_s)).with_output_types(Event)


class DropDuplicateEvents(beam.PTransform[PCollection[Event], PCollection[Event]]):
    """Events -> events without repeated ids inside the horizon (events without an id pass).

    A stream (`is_stream`) uses per-id state expiring with the watermark; a bounded run sees the
    whole input before any timer could fire, so it groups by id and applies the horizon rule
    directly (KeepWithinHorizon).
    """

    def __init__(self, horizon_s: int, reach_ms: int = 0):
        super().__init__()
        self._horizon_s = horizon_s
        self._reach_ms = reach_ms

    def expand(self, events: PCollection[Event]) -> PCollection[Event]:
        with_id, without_id = (
            events | "Has id" >> beam.Partition(lambda e, _: 0 if e.event_id is not None else 1, 2)
        )
        keyed = with_id | "Key by id" >> beam.Map(lambda e: (e.event_id, e)).with_output_types(
            tuple[str, Event])
        if is_stream(events):
            unique = keyed | "Drop seen ids" >> beam.ParDo(_DropSeenIds(self._horizon_s, self._reach_ms)).with_output_types(Event)
        else:
            unique = keyed | "Keep within horizon" >> KeepWithinHorizon(self._horizon_s)
        return (unique, without_id) | "Rejoin" >> beam.Flatten()


def keep_within_horizon(events: Iterable[Event], horizon_ms: int) -> list[Event]:
    """Bounded rule: earliest copy first; a later copy only beyond the horizon of the last kept."""
    kept: list[Event] = []
    for event in sorted(events, key=lambda e: (e.event_time_ms, tie_order(e.keys, e.nums))):
        if not kept or event.event_time_ms - kept[-1].event_time_ms > horizon_ms:
            kept.append(event)
    return kept


def tie_order(keys: Sequence[str], nums: Sequence[Optional[float]]) -> tuple:
    """What `keep_within_horizon` orders copies of the same event time by (after the time)."""
    return tuple(keys), tuple(map(str, nums))


def kept_copies(ids: Sequence[str], times: np.ndarray, ties: Sequence[tuple], horizon_ms: int) -> np.ndarray:
    """`keep_within_horizon` over the copies of many ids at once -> the indices of the copies it
    keeps. Rows are sorted by (id, time, tie order, input position), as the rule sorts each id's
    copies (stably); an id whose copies all lie within the horizon of its earliest keeps only
    that one, and only ids spread wider than the horizon are walked copy by copy."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64)
    _, id_codes = np.unique(np.asarray(ids, dtype=object), return_inverse=True)
    ranks = {tie: rank for rank, tie in enumerate(sorted(set(ties)))}
    tie_codes = np.fromiter((ranks[tie] for tie in ties), np.int64, n)
    times = np.asarray(times, dtype=np.int64)
    order = np.lexsort((np.arange(n), tie_codes, times, id_codes))
    codes, sorted_times = id_codes[order], times[order]
    first = np.ones(n, bool)
    first[1:] = codes[1:] != codes[:-1]
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], n)
    keep = first.copy()
    wide = np.flatnonzero(sorted_times[ends - 1] - sorted_times[starts] > horizon_ms)
    for g in wide.tolist():  # copies beyond the horizon of the last one kept
        last = sorted_times[starts[g]]
        for i in range(int(starts[g]) + 1, int(ends[g])):
            if sorted_times[i] - last > horizon_ms:
                keep[i] = True
                last = sorted_times[i]
    return order[keep]


_FNV_OFFSET = 0xCBF29CE484222325
_PRIME = np.uint64(0x100000001B3)


def hash_ids(ids: "pa.Array | pa.ChunkedArray") -> np.ndarray:
    """64-bit hashes of a string column (nulls hash like ""), vectorised over Arrow's buffers:
    a polynomial over the UTF-8 bytes, then a splitmix64 finaliser. Equal strings always hash
    equal; a rare collision only sends two distinct ids through the exact (per-id) path."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    ids = pc.fill_null(ids.cast(pa.large_string()), "")
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[ids.offset: ids.offset + n + 1]
    lengths = np.diff(offsets)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    poly = _poly_by_position if int(lengths.max()) <= _BY_POSITION_MAX else _poly_by_bytes
    with np.errstate(over="ignore"):
        h = np.full(n, _FNV_OFFSET, dtype=np.uint64) ^ lengths.astype(np.uint64)
        h += poly(data, offsets, lengths)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


_BY_POSITION_MAX = 64  # longest id hashed position by position (one numpy pass per position)


def _poly_by_position(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """sum over each string's bytes b_j (j from 0) of (b_j + 1) * P^(length - j), mod 2^64, by
    Horner's rule one byte position at a time over the strings that long (ids are short:
    ~3x cheaper than `_poly_by_bytes`, the same value)."""
    order = np.argsort(-lengths, kind="stable")
    by_length, starts = lengths[order], offsets[:-1][order]
    poly = np.zeros(len(order), np.uint64)
    for j in range(int(by_length[0])):
        m = int(np.searchsorted(-by_length, -(j + 1), side="right"))  # the strings longer than j
        poly[:m] = poly[:m] * _PRIME + (data[starts[:m] + j].astype(np.uint64) + np.uint64(1))
    out = np.empty_like(poly)
    out[order] = poly * _PRIME
    return out


def _poly_by_bytes(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`_poly_by_position` over all bytes at once (cost per byte, whatever the lengths)."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    poly = np.zeros(len(lengths), np.uint64)
    if hi > lo:
        values = data[lo:hi].astype(np.uint64) + np.uint64(1)
        ends = np.repeat(offsets[1:] - lo, lengths)
        powers = np.cumprod(np.full(int(lengths.max()), _PRIME, dtype=np.uint64))
        terms = values * powers[ends - 1 - np.arange(hi - lo)]
        nonempty = lengths > 0
        poly[nonempty] = np.add.reduceat(terms, (offsets[:-1] - lo)[nonempty])
    return poly


def repeated_hashes(per_range: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """(range, id hashes) of one shard -> (range, the hashes of its ids that occur more than once
    anywhere in the shard): what each range must send through the exact per-id path."""
    keys, arrays = [], []
    for key, data in per_range:
        keys.append(key)
        arrays.append(np.frombuffer(data, dtype=np.uint64))
    if not arrays:
        return
    values, counts = np.unique(np.concatenate(arrays), return_counts=True)
    repeated = values[counts > 1]
    if not len(repeated):
        return
    for key, hashes in zip(keys, arrays):
        hit = hashes[np.isin(hashes, repeated)]
        if len(hit):
            yield key, np.unique(hit).tobytes()


def event_id_of(raw: Any, id_field: str) -> Optional[str]:
    """The id of a raw event for the pre-pass, decoded exactly as the parser decodes it; None
    for anything the parser refuses before it reads the id."""
    try:
        record = decode_record(raw)
    except BadEvent:
        return None
    value = record.get(id_field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)
