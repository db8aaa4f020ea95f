"""No poison pills: the parser lets through only values every later stage can handle, and each
stage is fuzzed with the whole domain of those values (strings with NUL, emoji or 1 MB; floats
down to subnormals and up to the largest double; int64 keys at both ends; event times at both
ends of the accepted range). A poison event in the middle of a stream fails nothing else."""

from __future__ import annotations

import json
import math

import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_spec, view
from pipelines import streaming_features
from transforms.combine import FeatureViewCombineFn
from transforms.io import offline
from transforms.io.online.feast_codec import encode_timestamp, encode_value, serialize_entity_key
from transforms.io.online.registry import open_online_store
from transforms.io.sinks import encode_letter, read_dead_letters
from transforms.parse import BadEvent, ParsePlan, dead_letter, payload_bytes
from transforms.records import FeatureRow, layouts
from transforms.spec import parse_spec

FEATURES = [
    {"name": "n", "agg": "count"},
    {"name": "s", "agg": "sum", "field": "amount"},
    {"name": "m", "agg": "mean", "field": "amount"},
    {"name": "lo", "agg": "min", "field": "amount"},
    {"name": "f", "agg": "first", "field": "item"},
    {"name": "l", "agg": "last", "field": "amount"},
    {"name": "d", "agg": "approx_count_distinct", "field": "item"},
    {"name": "p", "agg": "approx_percentile", "field": "amount", "q": 0.5},
]
SPEC_DICT = {"project": "poison", "source": {"timestamp_field": "ts"},
             "entities": {"user": {"join_key": "user_id"}},
             "feature_views": [view(window={"type": "sliding", "size": "1h", "period": "10m"}, features=FEATURES,
                                    allowed_lateness="1d")]}
SPEC = parse_spec(SPEC_DICT)
INT_SPEC = make_spec([view(features=[{"name": "n", "agg": "count"}])],
                     entities={"user": {"join_key": "user_id", "dtype": "int64"}})
PLAN = ParsePlan.from_spec(SPEC)
FN = FeatureViewCombineFn(SPEC, SPEC.feature_views[0])
CODER = FN.get_accumulator_coder()

hostile_text = st.one_of(
    st.text(),  # includes lone surrogates, NUL, emoji
    st.just("\x00"), st.just("\ud800"), st.just("a\udfffb"), st.just("😀" * 3), st.just("x" * 1_000_000),
)
hostile_number = st.one_of(
    st.floats(),  # includes nan, +-inf, subnormals, -0.0, the largest doubles
    st.integers(-2**80, 2**80), st.just(5e-324), st.just(1.7976931348623157e308), st.just(-0.0),
)
hostile_time = st.one_of(
    st.integers(-2**70, 2**70), st.just(0), st.just(PLAN.max_event_ms), st.just(PLAN.max_event_ms + 1),
    st.floats(), st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00", "1970-01-01T00:00:00Z",
                                  "9999-12-31T23:59:59-23:59", "2026-01-01T00:00:00.123456+05:30"]),
)
hostile_value = st.one_of(hostile_text, hostile_number, st.none(), st.booleans(),
                          st.lists(hostile_number, max_size=3), st.dictionaries(hostile_text, hostile_number, max_size=2))
records = st.fixed_dictionaries(
    {"ts": hostile_time, "user_id": st.one_of(hostile_text, hostile_value)},
    optional={"amount": hostile_value, "item": hostile_value, "note": hostile_value, "\ud800": hostile_value},
)


def encodings(record: dict) -> list[bytes]:
    """The record as JSON bytes, escaped (lone surrogates as \\ud800) and raw (as bytes)."""
    out = []
    for ascii_only in (True, False):
        try:
            out.append(json.dumps(record, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass"))
        except (ValueError, OverflowError):
            pass
    return out


def _assert_safe(event) -> None:
    assert 0 <= event.event_time_ms <= PLAN.max_event_ms
    for text in [*event.keys, *(s for s in event.strs if s is not None)]:
        text.encode("utf-8")  # raises on a lone surrogate
    assert all(n is None or math.isfinite(n) for n in event.nums)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(records)
def test_the_parser_refuses_with_a_reason_or_returns_values_every_stage_takes(record):
    for raw in encodings(record) + [record]:
        try:
            event = PLAN.parse(raw)
        except BadEvent as err:
            assert err.reason and str(err)
            letter = dead_letter(raw, err.reason, str(err), "parse")
            encode_letter(letter).decode("utf-8")  # the dead-letter writer takes it
            if isinstance(raw, bytes):
                assert payload_bytes(letter) == raw  # kept exactly, for re-ingestion
            continue
        _assert_safe(event)
        # combine, the accumulator coder (the shuffle), extract
        acc = FN.add_input(FN.create_accumulator(), event)
        acc = CODER.decode(CODER.encode(FN.merge_accumulators([acc, FN.add_input(FN.create_accumulator(), event)])))
        values = FN.extract_output(acc)[1:]  # (max event time, one value per feature)
        # online encoders (Feast layout) and the offline writer's row
        layout = layouts(SPEC)["v"]
        serialize_entity_key([layout.join_key], [event.keys[0]], [layout.key_dtype])
        for value, kind in zip(values, layout.value_types):
            if value is not None:
                encode_value(value, kind)


def _row(entity: str, end_ms: int, features: tuple) -> FeatureRow:
    return FeatureRow("v", entity, end_ms - 3_600_000, end_ms, "ON_TIME", 0, end_ms - 1, features)


@pytest.mark.parametrize("end_ms", [3_600_000, 253402300799999 - 1])
def test_stores_take_the_extremes_the_parser_allows(tmp_path, end_ms):
    """Window ends up to the last millisecond of year 9999; keys with NUL, emoji and lone-free
    Unicode; the largest and smallest doubles."""
    layout = layouts(SPEC)["v"]
    features = (2, 1.7976931348623157e308, 5e-324, -1.7976931348623157e308, "\x00😀", 5e-324, 1, 0.0)
    rows = [_row(key, end_ms, features) for key in ("\x00", "😀" * 100, "x" * 100_000, "a\u2028b")]
    paths = offline.write_rows(str(tmp_path), layout, rows)
    assert len(paths) == 1 and ("date=9999-12-31" in paths[0]) == (end_ms > 3_600_000)
    table = ds.dataset(str(tmp_path / "v"), partitioning="hive").to_table()
    assert sorted(table["user_id"].to_pylist()) == sorted(r.entity for r in rows)
    encode_timestamp(end_ms)
    store = open_online_store(f"sqlite:///{tmp_path}/o.db", SPEC)
    try:
        assert store.write(rows).written == len(rows)
        back = store.read("v", [r.entity for r in rows])
        assert [b.window_end_ms for b in back] == [end_ms] * len(rows)
        assert back[0].features["s"] == 1.7976931348623157e308 and back[0].features["f"] == "\x00😀"
    finally:
        store.close()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-2**70, 2**70), st.booleans(), st.floats(), hostile_text))
def test_int64_entity_keys_are_refused_unless_they_fit(key):
    plan = ParsePlan.from_spec(INT_SPEC)
    try:
        event = plan.parse({"ts": 1_767_225_600_000, "user_id": key})
    except BadEvent as err:
        assert err.reason in ("bad_type", "missing_entity_key")  # "" is a missing key
        return
    value = int(event.keys[0])
    assert -(2**63) <= value < 2**63 and not isinstance(key, bool)
    serialize_entity_key(["user_id"], [value], ["int64"])


def test_a_poison_event_mid_stream_fails_nothing_else(tmp_path):
    """Lines that used to crash a run (a lone surrogate key, an event in the last hour of year
    9999) in the middle of a replayed stream: the run finishes, every other event is counted."""
    t0 = 1_767_225_600_000
    lines = [json.dumps({"ts": t0 + i * 1000, "user_id": f"u{i % 3}", "amount": 1.0, "item": "a"}).encode()
             for i in range(60)]
    poison = [b'{"ts": %d, "user_id": "\\ud800", "amount": 1}' % (t0 + 30_500),
              b'{"ts": "9999-12-31T23:30:00Z", "user_id": "u1", "amount": 1}',
              b'{"ts": %d, "user_id": "u1", "item": "\\udfff"}' % (t0 + 31_500)]
    lines[30:30] = poison
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(SPEC_DICT))
    offline_dir = tmp_path / "offline"
    streaming_features.run(["--events", str(events), "--replay", "--feature_spec", str(spec), "--runner",
                            "BundleBasedDirectRunner", "--online_store", f"sqlite:///{tmp_path}/o.db",
                            "--offline_store", str(offline_dir)])
    letters = list(read_dead_letters(str(offline_dir / "_dead_letters")))
    assert sorted(payload_bytes(x) for x in letters) == sorted(poison)
    assert {x["reason"] for x in letters} == {"invalid_json", "timestamp_out_of_range"}
    rows = offline.read_offline(str(offline_dir), SPEC, "v").to_pylist()
    final = {}
    for row in rows:  # the final pane of the first hour-long window of each user
        if row["window_start"].timestamp() * 1000 == t0 - 3_000_000:
            key = row["user_id"]
            if key not in final or row["pane_index"] > final[key]["pane_index"]:
                final[key] = row
    assert {k: v["n"] for k, v in final.items()} == {"u0": 20, "u1": 20, "u2": 20}
