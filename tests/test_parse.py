"""Parsing: typed extraction, and every kind of bad event becomes a dead letter with a reason."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import batch_options
from helpers import T0, make_spec, view
from transforms.backfill.columnar import epoch_ms, rfc3339_by_cast, rfc3339_by_fields
from transforms.parse import MAX_EPOCH_MS, BadEvent, ParseEvents, ParsePlan, parse_timestamp, payload_bytes
from transforms.records import Event

FEATURES = [
    {"name": "n", "agg": "count", "where": {"event_type": "click"}},
    {"name": "s", "agg": "sum", "field": "amount"},
    {"name": "last_item", "agg": "last", "field": "item"},
    {"name": "items", "agg": "approx_count_distinct", "field": "sku"},
]
SPEC = make_spec([view(features=FEATURES)], id_field="id")
PLAN = ParsePlan.from_spec(SPEC)
TS = T0 * 1000


def test_parses_bytes_str_and_dicts_into_events():
    record = {"ts": TS, "user_id": "u1", "amount": 2, "item": "i1", "sku": 42, "event_type": "click", "id": 7}
    expected = Event(TS, "7", ["u1"], [2.0], ["i1", "42"], 1)
    assert PLAN.parse(json.dumps(record).encode()) == expected
    assert PLAN.parse(json.dumps(record)) == expected
    assert PLAN.parse(record) == expected


@pytest.mark.parametrize("value, millis", [
    (TS, TS),
    ("2026-01-01T00:00:00Z", TS),
    ("2026-01-01T01:00:00.250+01:00", TS + 250),
    (float(TS), TS),
])
def test_timestamps_epoch_ms_or_rfc3339(value, millis):
    assert PLAN.parse({"ts": value, "user_id": "u"}).event_time_ms == millis


@pytest.mark.parametrize("raw, reason, detail", [
    (b'{"ts": 1, "user_id": ', "invalid_json", "invalid JSON"),
    (b"\xff\xfe\x00", "invalid_json", "invalid JSON"),
    (b'{"ts": NaN, "user_id": "u"}', "invalid_json", "invalid JSON"),
    (b'[1, 2]', "not_an_object", "must be a JSON object (got list)"),
    (b'"text"', "not_an_object", "must be a JSON object (got str)"),
    (b'{"user_id": "u"}', "missing_timestamp", "ts: missing event timestamp"),
    (b'{"ts": "yesterday", "user_id": "u"}', "bad_timestamp", "not an RFC 3339 timestamp"),
    (b'{"ts": "2026-01-01T00:00:00", "user_id": "u"}', "bad_timestamp", "needs a time zone"),
    (b'{"ts": true, "user_id": "u"}', "bad_timestamp", "must be epoch milliseconds"),
    (b'{"ts": 1.5, "user_id": "u"}', "bad_timestamp", "must be epoch milliseconds"),
    (b'{"ts": -5, "user_id": "u"}', "timestamp_out_of_range", "out of range"),
    (b'{"ts": 99999999999999999, "user_id": "u"}', "timestamp_out_of_range", "out of range"),
    (b'{"ts": 1767225600000}', "missing_entity_key", "user_id: missing entity key"),
    (b'{"ts": 1767225600000, "user_id": ""}', "missing_entity_key", "user_id: missing entity key"),
    (b'{"ts": 1767225600000, "user_id": 5}', "bad_type", "entity key must be a string"),
    (b'{"ts": 1767225600000, "user_id": "u", "amount": "12 EUR"}', "bad_type", "amount: must be a number"),
    (b'{"ts": 1767225600000, "user_id": "u", "amount": true}', "bad_type", "amount: must be a number"),
    (b'{"ts": 1767225600000, "user_id": "u", "amount": 1e999}', "invalid_json", "infinity when parsed as double"),
    (b'{"ts": 1767225600000, "user_id": "u", "amount": ' + b"9" * 400 + b"}", "invalid_json", "infinity"),
    (b'{"ts": 1767225600000, "user_id": "u", "item": 5}', "bad_type", "item: must be a string"),
    (b'{"ts": 1767225600000, "user_id": "u", "sku": {"a": 1}}', "bad_type", "sku: must be a string, number"),
    (b'{"ts": 1767225600000, "user_id": "u", "id": [1]}', "bad_type", "id: must be a string or integer"),
])
def test_bad_events_raise_with_a_reason(raw, reason, detail):
    with pytest.raises(BadEvent) as err:
        PLAN.parse(raw)
    assert err.value.reason == reason
    assert detail in str(err.value)


def test_absent_optional_fields_are_null_not_errors():
    event = PLAN.parse({"ts": TS, "user_id": "u", "amount": None})
    assert (event.nums, event.strs, event.matches, event.event_id) == ([None], [None, None], 0, None)


def test_int64_entity_keys():
    spec = make_spec([view()], entities={"user": {"join_key": "user_id", "dtype": "int64"}})
    plan = ParsePlan.from_spec(spec)
    assert plan.parse({"ts": TS, "user_id": 42}).keys == ["42"]
    with pytest.raises(BadEvent, match="64-bit integer"):
        plan.parse({"ts": TS, "user_id": "42"})


def test_pipeline_reconciles_events_in_with_parsed_plus_dead_letters():
    good = [json.dumps({"ts": TS + i, "user_id": f"u{i % 3}", "amount": i}).encode() for i in range(50)]
    bad = [b"{", b'{"user_id": "u"}', b"\xff", b'{"ts": 1, "user_id": "u", "amount": "x"}']
    with beam.Pipeline(options=batch_options()) as p:
        out = p | beam.Create(good + bad) | ParseEvents(SPEC)
        assert_that(out.events | "count events" >> beam.combiners.Count.Globally(), equal_to([50]),
                    label="parsed")
        assert_that(
            out.dead_letter | beam.Map(lambda d: (d.payload, d.encoding, d.reason, d.stage, payload_bytes(d))),
            equal_to([
                ("{", "utf-8", "invalid_json", "parse", b"{"),
                ('{"user_id": "u"}', "utf-8", "missing_timestamp", "parse", b'{"user_id": "u"}'),
                ("/w==", "base64", "invalid_json", "parse", b"\xff"),  # not UTF-8: kept exactly, as base64
                ('{"ts": 1, "user_id": "u", "amount": "x"}', "utf-8", "bad_type", "parse", bad[3]),
            ]),
            label="dead letters",
        )
    counters = {c.key.metric.name: c.committed for c in p.result.metrics().query()["counters"]}
    assert counters["events_in"] == 54 == counters["parsed"] + counters["dead_lettered"]
    assert counters["dead_letter_invalid_json"] == 2


# -- the fast path's vectorised timestamps decide exactly like parse_timestamp, or not at all ----
_OFFSETS = st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
_RFC3339_TEXT = st.builds(
    lambda when, zone, spec, sep, z: when.astimezone(zone).isoformat(sep=sep, timespec=spec).replace("+00:00", z),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.timezone.utc)),
    st.one_of(st.just(dt.timezone.utc), _OFFSETS), st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    st.sampled_from(["T", " "]), st.sampled_from(["Z", "+00:00", "-00:00"]),
)
# near misses: the same shape with any digit or separator changed
_MUTATED = st.tuples(_RFC3339_TEXT, st.integers(0, 40), st.sampled_from(list("0123456789:-+.TZz x"))).map(
    lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + 1:])


def _event_path_ms(text: str):
    try:
        return parse_timestamp(text, "ts", max_ms=2**62)
    except BadEvent:
        return "refused"
    except OverflowError:  # parse_timestamp's message for far-out values; never reached below
        return "refused"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_RFC3339_TEXT, _MUTATED, st.text(max_size=30)), min_size=1, max_size=40))
def test_vectorised_timestamps_equal_the_event_path_or_leave_it_to_it(texts):
    got = epoch_ms(pa.array(texts)).to_pylist()
    for text, ms in zip(texts, got):
        if ms is None:
            continue  # the event path decides this one
        if not 0 <= ms <= MAX_EPOCH_MS:
            continue  # out of range: the fast path sends it to the event path too (_valid_rows)
        assert _event_path_ms(text) == ms, text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_RFC3339_TEXT, _MUTATED), min_size=1, max_size=20))
def test_arrow_cast_decides_exactly_what_the_field_arithmetic_decides(texts):
    """epoch_ms takes Arrow's ISO 8601 cast for a block unless Arrow refuses one of its strings;
    both routes decide the same strings with the same values, string by string."""
    for text in texts:
        millis, valid = rfc3339_by_fields(pa.array([text]))
        by_cast = rfc3339_by_cast(pa.array([text]))
        if by_cast is None:  # refused by Arrow: the field arithmetic must refuse it too
            assert not valid[0], text
            continue
        assert by_cast[1][0] == valid[0], text
        if valid[0]:
            assert by_cast[0][0] == millis[0], text


@given(st.lists(_RFC3339_TEXT, min_size=1, max_size=20))
def test_canonical_rfc3339_is_always_decided_by_the_fast_path(texts):
    assert None not in epoch_ms(pa.array(texts)).to_pylist()


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
def test_numbers_and_strings_in_one_block_are_decided_as_the_event_path_decides(compact):
    """A block mixing epoch-ms numbers and RFC 3339 strings is read in one pass (one of the two
    keys renamed: the strings' in compact JSON, else the numbers'); a row the columnar read
    cannot decide goes to the event path whole."""
    from transforms.backfill.columnar import ColumnarChunks, columnar_schema

    plan = ParsePlan.from_spec(make_spec([view(features=[{"name": "n", "agg": "count"}])]))
    lines = [
        b'{"ts": %d, "user_id": "u1"}' % TS,
        b'{"ts": "2026-01-01T00:00:01Z", "user_id": "u2"}',
        b'{"ts" :  %d , "user_id": "u3"}' % (TS + 7),
        b'{"user_id": "u4", "ts":%d}' % (TS + 9),
        b'{"ts": "2026-02-30T00:00:00Z", "user_id": "u5"}',  # no such day: the event path refuses it
        b'{"ts": %d, "ts": "2026-01-01T00:00:00Z", "user_id": "u6"}' % TS,  # a repeated key
        b'{"ts": "", "user_id": "u7"}',
    ]
    if compact:
        lines = [line.replace(b" ", b"") for line in lines]
    chunks = ColumnarChunks(plan, columnar_schema(plan))
    tables, slow = chunks.parse_block(b"\n".join(lines) + b"\n")
    got = {user: ts for table in tables for user, ts in zip(table["user_id"].to_pylist(), table["ts"].to_pylist())}
    assert got == {"u1": TS, "u2": TS + 1000, "u3": TS + 7, "u4": TS + 9}
    assert all(table.column_names == tables[0].column_names for table in tables)
    assert "ts\x01" not in tables[0].column_names
    assert slow == lines[4:]
    # the key's name as a value: compact or not, the numbers' key is renamed instead
    tables, slow = chunks.parse_block(b"\n".join(lines[:2] + [b'{"ts":%d,"user_id":"ts"}' % TS]) + b"\n")
    assert [t for table in tables for t in table["ts"].to_pylist()] == [TS, TS + 1000, TS] and slow == []
    # a block holding the escape the renamed key uses is read as before (by bisection)
    escaped = b'{"ts": %d, "user_id": "u\\u0001"}' % TS
    tables, slow = chunks.parse_block(escaped + b"\n" + lines[1] + b"\n")
    assert slow == [escaped, lines[1]]