"""The one verdict for every reader: a raw record (JSON bytes/str or a dict) -> `Event` or
`DeadLetter`.

Parsing is compiled from the spec once (`ParsePlan`): which fields are needed, as what type,
and which `where` clauses each event matches (a bitmask), so downstream combiners never touch
dicts. Every way an event can fail becomes a `DeadLetter` with a reason and a counter
(`Verdicts`, used by ParseEvents, the backfill's fast path and the embedding pipeline alike).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Optional, Sequence, TypeVar

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.coders import Coder, RowCoder, registry
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.records import DeadLetter, Event
from transforms.spec import FeatureSpecFile, FeatureViewSpec, where_matches
from transforms.windows import reach_ms, too_late_views

DEAD_LETTER_TAG = "dead_letter"
MAX_EPOCH_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_INT64 = (-(2**63), 2**63 - 1)
T = TypeVar("T")


class OpaqueRowCoder(Coder):
    """RowCoder's bytes behind a Python-only coder, so a runner written in Java passes them through
    instead of decoding them.

    Event and DeadLetter are annotated as strings (`from __future__ import annotations`), so Beam
    infers every field as `beam:logical:pythonsdk_any:v1`. The Java Beam 2.62 Flink job server
    (engines/README.md) cannot decode those rows and fails where it must read them, e.g. merging
    session windows (`java.io.IOException: varint overflow ...` in
    RowCoderGenerator). The bytes are the same as RowCoder's on every runner; only the coder's
    description in the pipeline proto differs (a pickled Python coder, length-prefixed by Java).
    """

    def __init__(self, row_coder: RowCoder):
        self._row = row_coder

    @classmethod
    def from_type_hint(cls, typehint, registry_):
        return cls(RowCoder.from_type_hint(typehint, registry_))

    def _create_impl(self):
        return self._row.get_impl()

    def encode(self, value):
        return self._row.encode(value)

    def decode(self, encoded):
        return self._row.decode(encoded)

    def is_deterministic(self) -> bool:
        return self._row.is_deterministic()

    def to_type_hint(self):
        return self._row.to_type_hint()


registry.register_coder(Event, OpaqueRowCoder)
registry.register_coder(DeadLetter, OpaqueRowCoder)


class BadEvent(ValueError):
    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason = reason


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter(payload: Any, reason: str, error: str, stage: str, event_time_ms: Optional[int] = None,
                views: Optional[Sequence[str]] = None) -> DeadLetter:
    text, encoding = _payload_text(payload)
    return DeadLetter(text, reason, _printable(error), stage, now_rfc3339(), encoding, event_time_ms,
                      list(views) if views is not None else None)


def _payload_text(payload: Any) -> tuple[str, str]:
    if isinstance(payload, bytes):
        try:
            return payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(payload).decode("ascii"), "base64"
    if isinstance(payload, str):
        if _encodable(payload):
            return payload, "utf-8"
        return base64.b64encode(payload.encode("utf-8", "surrogatepass")).decode("ascii"), "base64"
    try:
        return _printable(json.dumps(payload, default=str, allow_nan=True)), "json"
    except (TypeError, ValueError, RecursionError):
        return _printable(repr(payload)), "json"


def payload_bytes(letter: dict | DeadLetter) -> bytes:
    """A dead letter's payload as the bytes that were received (JSON text for object records)."""
    fields = letter._asdict() if isinstance(letter, DeadLetter) else letter
    if fields.get("encoding") == "base64":
        return base64.b64decode(fields["payload"])
    return fields["payload"].encode("utf-8")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _printable(text: str) -> str:
    """Error texts quote values; a lone surrogate in them must not break the dead-letter writer."""
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class StrField:
    name: str
    mode: str  # "string": must be a JSON string | "text": any scalar, canonical text (for sketches)


@dataclass(frozen=True)
class ParsePlan:
    """What to extract from each event, compiled once from the spec."""

    timestamp_field: str
    id_field: Optional[str]
    entities: tuple[tuple[str, str, str], ...]  # (entity name, join key, dtype)
    num_fields: tuple[str, ...]
    str_fields: tuple[StrField, ...]
    where_clauses: tuple[tuple[tuple[str, tuple], ...], ...]  # ((field, allowed values), ...)
    # The latest event time accepted: every window of the event, plus allowed lateness, must
    # end by 9999-12-31 (offline date partitions, Feast timestamps, Beam's window maths).
    max_event_ms: int = MAX_EPOCH_MS

    @classmethod
    def from_spec(cls, spec: FeatureSpecFile) -> "ParsePlan":
        used_entities = list(dict.fromkeys(v.entity for v in spec.feature_views))
        nums: dict[str, None] = {}
        strs: dict[StrField, None] = {}
        wheres: dict[tuple, None] = {}
        for view in spec.feature_views:
            for feature in view.features:
                kind = _reads(spec, feature)
                if kind == "number":
                    nums[feature.field] = None
                elif kind != "nothing":
                    strs[StrField(feature.field, kind)] = None
                if feature.where:
                    wheres[where_key(feature.where)] = None
        return cls(
            timestamp_field=spec.source.timestamp_field,
            id_field=spec.source.id_field,
            entities=tuple(
                (name, spec.entities[name].join_key, spec.entities[name].dtype)
                for name in used_entities
            ),
            num_fields=tuple(nums),
            str_fields=tuple(strs),
            where_clauses=tuple(wheres),
            max_event_ms=MAX_EPOCH_MS - max((reach_ms(v) for v in spec.feature_views), default=0),
        )

    def entity_index(self, entity: str) -> int:
        return [e[0] for e in self.entities].index(entity)

    def num_index(self, field: str) -> int:
        return self.num_fields.index(field)

    def str_index(self, field: str, mode: str) -> int:
        return self.str_fields.index(StrField(field, mode))

    def slot_of(self, spec: FeatureSpecFile, feature: Any) -> tuple[Optional[str], int]:
        """Where a feature's field is in an Event: ("nums" | "strs", index), (None, 0) for count."""
        kind = _reads(spec, feature)
        if kind == "nothing":
            return None, 0
        if kind == "number":
            return "nums", self.num_index(feature.field)
        return "strs", self.str_index(feature.field, kind)

    def where_bit(self, where: Optional[dict]) -> int:
        return 0 if not where else 1 << self.where_clauses.index(where_key(where))

    # -- parsing -------------------------------------------------------------------------
    def parse(self, raw: Any, element_time_ms: Optional[int] = None) -> Event:
        """Raw JSON (bytes/str) or dict -> Event; raises BadEvent with a reason.

        `element_time_ms` is the event time carried by the source (a Pub/Sub timestamp
        attribute); when given, the payload's timestamp field is not needed.
        """
        record = decode_record(raw)
        if element_time_ms is None:
            event_time_ms = parse_timestamp(record.get(self.timestamp_field), self.timestamp_field,
                                            self.max_event_ms)
        else:
            event_time_ms = parse_timestamp(element_time_ms, "event time", self.max_event_ms)
        keys = [_entity_key(record.get(key), key, dtype) for _, key, dtype in self.entities]
        nums = [_number(record.get(name), name) for name in self.num_fields]
        strs = [_string(record.get(f.name), f.name, f.mode) for f in self.str_fields]
        matches = 0
        for bit, clause in enumerate(self.where_clauses):
            if all(where_matches(record.get(field), allowed) for field, allowed in clause):
                matches |= 1 << bit
        event_id = None
        if self.id_field is not None:
            raw_id = record.get(self.id_field)
            if raw_id is not None:
                if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                    raise BadEvent("bad_type", f"{self.id_field}: must be a string or integer (got {raw_id!r})")
                event_id = valid_text(raw_id, self.id_field) if isinstance(raw_id, str) else str(raw_id)
        return Event(event_time_ms, event_id, keys, nums, strs, matches)


def _reads(spec: FeatureSpecFile, feature: Any) -> str:
    """'nothing' | 'number' | 'text' (any scalar as text) | 'string' (a JSON string only)."""
    from transforms.aggregations import AGGREGATIONS

    kind = AGGREGATIONS[feature.agg].reads
    if kind == "value":
        return "number" if spec.field_type(feature) == "double" else "string"
    return kind


def where_key(where: dict) -> tuple:
    return tuple(
        sorted((field, tuple(v) if isinstance(v, list) else (v,)) for field, v in where.items())
    )


_BOM = b"\xef\xbb\xbf"
MAX_DEPTH = 1024  # orjson's nesting limit: deeper documents are refused on every path


def decode_json(raw: bytes | str) -> Any:
    """The one JSON decision for every reader: what orjson accepts (strict RFC 8259: no NaN or
    Infinity, valid UTF-8 and Unicode, no lone surrogate escapes, numbers within double range,
    nesting up to 1024), after one leading UTF-8 byte-order mark is dropped."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")  # a lone surrogate stays and is refused below
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise BadEvent("invalid_json", f"invalid JSON: {err}") from None


def decode_record(raw: Any) -> dict:
    """A raw record as the object it holds: JSON bytes/str decoded (`decode_json`), records that
    arrive as objects (Parquet rows, a Beam user's dicts) as they are; anything but an object is
    refused."""
    record = decode_json(raw) if isinstance(raw, (bytes, str)) else raw
    if not isinstance(record, dict):
        raise BadEvent("not_an_object", f"an event must be a JSON object (got {type(record).__name__})")
    return record


def parse_timestamp(value: Any, field: str, max_ms: int = MAX_EPOCH_MS) -> int:
    """Epoch milliseconds (int) or an RFC 3339 string with a time zone -> epoch ms, within
    [0, max_ms] (the plan's bound: every window of the event ends by year 9999)."""
    if value is None:
        raise BadEvent("missing_timestamp", f"{field}: missing event timestamp")
    if isinstance(value, bool):
        raise BadEvent("bad_timestamp", f"{field}: must be epoch milliseconds or RFC 3339 (got {value!r})")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        millis = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise BadEvent("bad_timestamp", f"{field}: not an RFC 3339 timestamp (got {value!r})") from None
        if parsed.tzinfo is None:
            raise BadEvent("bad_timestamp", f"{field}: RFC 3339 timestamp needs a time zone (got {value!r})")
        try:
            millis = _datetime_ms(parsed)
        except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
            raise BadEvent("timestamp_out_of_range", f"{field}: out of range (got {value!r})") from None
    elif isinstance(value, dt.datetime):  # Parquet timestamp columns; naive means UTC there
        millis = _datetime_ms(value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc))
    else:
        raise BadEvent("bad_timestamp", f"{field}: must be epoch milliseconds or RFC 3339 (got {value!r})")
    if not 0 <= millis <= max_ms:
        raise BadEvent(
            "timestamp_out_of_range",
            f"{field}: out of range 1970-01-01 .. {_ms_text(max_ms)} (got {value!r}); later events "
            "would have windows ending after year 9999",
        )
    return millis


def _ms_text(millis: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=millis)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _datetime_ms(value: dt.datetime) -> int:
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _entity_key(value: Any, field: str, dtype: str) -> str:
    if value is None or value == "":
        raise BadEvent("missing_entity_key", f"{field}: missing entity key")
    if dtype == "string":
        if not isinstance(value, str):
            raise BadEvent(
                "bad_type",
                f"{field}: entity key must be a string (got {value!r}); set the entity's dtype: int64 for integer keys",
            )
        return valid_text(value, field)
    if isinstance(value, bool) or not isinstance(value, int) or not _INT64[0] <= value <= _INT64[1]:
        raise BadEvent("bad_type", f"{field}: entity key must be a 64-bit integer (got {value!r})")
    return str(value)


def valid_text(value: str, field: str) -> str:
    """Strings from JSON bytes are valid Unicode already; records that arrive as objects (a
    Beam user's dicts) may hold lone surrogates, which no store can encode."""
    if value.isascii() or _encodable(value):
        return value
    raise BadEvent("unencodable_string", f"{field}: holds a lone UTF-16 surrogate, not valid Unicode")


def _number(value: Any, field: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadEvent("bad_type", f"{field}: must be a number (got {value!r})")
    try:
        number = float(value)
    except OverflowError:
        raise BadEvent("bad_type", f"{field}: number out of range (got {value!r})") from None
    if not math.isfinite(number):
        raise BadEvent("bad_type", f"{field}: must be finite (got {value!r})")
    return number


def _string(value: Any, field: str, mode: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, str):
        return valid_text(value, field)
    if mode == "text" and isinstance(value, (int, float, bool)):
        if isinstance(value, float) and not math.isfinite(value):
            raise BadEvent("bad_type", f"{field}: must be finite (got {value!r})")
        return json.dumps(value)
    expected = "a string" if mode == "string" else "a string, number or boolean"
    raise BadEvent("bad_type", f"{field}: must be {expected} (got {value!r})")


# every reason a parser gives (BadEvent), counted per reason: parse.dead_letter_<reason>
REASONS = ("invalid_json", "not_an_object", "missing_timestamp", "bad_timestamp", "timestamp_out_of_range",
           "missing_entity_key", "bad_type", "unencodable_string", "internal_error")


class Verdicts(Generic[T]):
    """Parse or dead-letter, the same way for every reader: `verdicts(raw, *args)` is
    (parse(raw, *args), None), or (None, a dead letter holding raw). A BadEvent keeps its reason;
    anything else is a bug of ours, which must not kill the bundle (a streaming engine would retry
    it forever) or lose the event: reason internal_error. The counters are declared once, with
    the reader (a DoFn's __init__)."""

    def __init__(self, parse: Callable[..., T]):
        self._parse = parse
        self._refused = {reason: Metrics.counter("parse", f"dead_letter_{reason}") for reason in REASONS}

    def __call__(self, raw: Any, *args: Any) -> tuple[Optional[T], Optional[DeadLetter]]:
        try:
            return self._parse(raw, *args), None
        except BadEvent as err:
            reason, error = err.reason, str(err)
        except Exception as err:
            reason, error = "internal_error", f"{type(err).__name__}: {err}"
        counter = self._refused.get(reason)
        if counter is None:  # a reason outside REASONS: counted all the same
            counter = self._refused[reason] = Metrics.counter("parse", f"dead_letter_{reason}")
        counter.inc()
        return None, dead_letter(raw, reason, error, "parse")


def event_timestamp(event: Event) -> Timestamp:
    """An event's time as a Beam timestamp, in integer micros (float seconds can round away)."""
    return Timestamp(micros=event.event_time_ms * 1000)


class FieldCounters:
    """Per field a feature reads, the parsed events in which it had no value (absent or null):
    counter `fields.no_value.<field>`. A field without a value in every event is almost always a
    typo in the spec (the summary warns; `pipelines.check_spec` checks before a run). Declared
    once, with the reader."""

    def __init__(self, plan: ParsePlan):
        slots: dict[str, list[tuple[str, int]]] = {}
        for i, name in enumerate(plan.num_fields):
            slots.setdefault(name, []).append(("nums", i))
        for i, field in enumerate(plan.str_fields):
            slots.setdefault(field.name, []).append(("strs", i))
        self._slots = [(name, where, Metrics.counter("fields", f"no_value.{name}")) for name, where in slots.items()]

    def count(self, event: Event) -> None:
        for _, where, counter in self._slots:
            if all(getattr(event, values)[i] is None for values, i in where):
                counter.inc()

    def count_table(self, table: Any) -> None:
        """The same for rows the fast path parsed with Arrow (a column per field)."""
        for name, _, counter in self._slots:
            missing = table[name].null_count if name in table.column_names else table.num_rows
            if missing:
                counter.inc(missing)


class _ParseFn(beam.DoFn):
    def __init__(self, plan: ParsePlan, timestamp_from_element: bool, clock: Optional[str],
                 views: Sequence[FeatureViewSpec] = ()):
        self._plan = plan
        self._from_element = timestamp_from_element
        self._clock = clock
        self._views = tuple(views)
        self._verdicts = Verdicts(plan.parse)
        self._events_in = Metrics.counter("parse", "events_in")
        self._parsed = Metrics.counter("parse", "parsed")
        self._dead = Metrics.counter("parse", "dead_lettered")
        self._too_late = Metrics.counter("parse", "too_late_events")
        self._too_late_all = Metrics.counter("parse", "too_late_for_every_view")
        self._fields = FieldCounters(plan)

    def process(self, raw: Any, timestamp=beam.DoFn.TimestampParam) -> Iterable:
        self._events_in.inc()
        arrival_ms = None
        if self._clock == "element":  # (payload, clock) pairs from the replay source
            raw, arrival_ms = raw
        elif self._clock == "wall":
            arrival_ms = int(time.time() * 1000)
        event, letter = self._verdicts(raw, timestamp.micros // 1000 if self._from_element else None)
        if letter is not None:
            self._dead.inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            return
        self._parsed.inc()
        self._fields.count(event)
        if arrival_ms is not None:
            event = event._replace(arrival_ms=arrival_ms)
            late = too_late_views(self._views, event.event_time_ms, arrival_ms)
            if late:
                # one dead letter per event, with the record as received; each view's guard
                # then drops it where it is too late (GuardLateness)
                self._too_late.inc()
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                    raw, "too_late",
                    f"every window of this event (end + allowed_lateness) closed before it arrived, "
                    f"for view(s) {', '.join(late)} (event time {_ms_text(event.event_time_ms)}, "
                    f"pipeline clock {_ms_text(max(arrival_ms, 0))})",
                    "window", event.event_time_ms, late))
                if len(late) == len(self._views):
                    self._too_late_all.inc()
                    return
        yield TimestampedValue(event, event_timestamp(event))


class ParseEvents(beam.PTransform[PCollection[Any], pvalue.DoOutputsTuple]):
    """Raw events -> (events: PCollection[Event] with event-time timestamps, dead_letters).

    With `timestamp_from_element`, event time is the element's timestamp (set by the source,
    e.g. ReadFromPubSub's timestamp_attribute) instead of the payload's timestamp field.
    `clock` stamps each event with the pipeline clock at arrival, for the lateness guard:
    "element" (the source sends (payload, clock) pairs: the replay's watermark), "wall" (live
    sources, whose watermark never runs ahead of wall-clock time) or None (no guard).
    """

    def __init__(self, spec: FeatureSpecFile, timestamp_from_element: bool = False,
                 clock: Optional[str] = None):
        super().__init__()
        self._plan = ParsePlan.from_spec(spec)
        self._from_element = timestamp_from_element
        self._clock = clock
        self._views = tuple(spec.feature_views)

    def expand(self, raw: PCollection[Any]) -> pvalue.DoOutputsTuple:
        views = self._views if self._clock is not None else ()
        parse = beam.ParDo(_ParseFn(self._plan, self._from_element, self._clock, views)).with_output_types(Event)
        return raw | "Parse" >> parse.with_outputs(DEAD_LETTER_TAG, main="events")
