"""Bad input through the real pipelines: no crash, every bad event dead-lettered with a reason,
and events in = parsed + dead-lettered, for the backfill (both paths) and the streaming replay."""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow.dataset as ds
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import backfill_features, streaming_features
from transforms.io.sinks import read_dead_letters
from transforms.parse import BadEvent, ParsePlan
from transforms.spec import parse_spec

T0 = 1_767_225_600_000
SPEC = {
    "project": "fuzz",
    "source": {"timestamp_field": "ts", "id_field": "id"},
    "entities": {"user": {"join_key": "user_id"}},
    "feature_views": [{
        "name": "per_day", "entity": "user", "window": {"type": "fixed", "size": "1d"},
        "allowed_lateness": "1d",
        "features": [{"name": "n", "agg": "count"}, {"name": "s", "agg": "sum", "field": "amount"},
                     {"name": "l", "agg": "last", "field": "item"},
                     {"name": "d", "agg": "approx_count_distinct", "field": "item"}],
    }],
}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
nested = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=8)
bad_records = st.fixed_dictionaries(
    {},
    optional={"ts": st.one_of(nested, st.integers(-10, 2**64), st.just("2026-01-01T00:00:00"),
                              st.just("2026-01-01T00:00:00Z"), st.floats()),
              "user_id": nested, "amount": nested, "item": nested, "id": nested},
)
raw_garbage = st.one_of(
    st.binary(max_size=60),
    bad_records.map(lambda r: json.dumps(r, allow_nan=True).encode()),
    st.builds(lambda n: b'{"ts": 1767225600000, "user_id": "u", "pad": "' + b"x" * n + b'"}',
              st.sampled_from([10, 1_000_000])),
    st.builds(lambda s: json.dumps(s).encode()[: max(1, len(json.dumps(s)) // 2)],
              st.fixed_dictionaries({"ts": st.just(T0), "user_id": st.just("u1"), "amount": st.just(1.5)})),
)


def _good(i: int) -> bytes:
    return json.dumps({"ts": T0 + i * 1000, "user_id": f"u{i % 5}", "amount": i * 0.5,
                       "item": f"i{i % 4}", "id": f"g{i}"}).encode()


def _expected_ok(lines: list[bytes]) -> int:
    plan = ParsePlan.from_spec(parse_spec(SPEC))
    ok = 0
    for line in lines:
        try:
            plan.parse(line)
            ok += 1
        except BadEvent:
            pass
    return ok


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(raw_garbage, min_size=5, max_size=40))
def test_backfill_reconciles_on_fuzzed_input(tmp_path_factory, garbage):
    tmp = tmp_path_factory.mktemp("fuzz")
    lines = [_good(i) for i in range(50)] + [g.replace(b"\n", b" ") for g in garbage if g.strip()]
    events = tmp / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    ok = _expected_ok(lines)
    for preaggregate in ("true", "false"):
        offline = tmp / f"off-{preaggregate}"
        result = backfill_features.run([
            "--events", str(events), "--feature_spec", str(spec), "--online_store", f"sqlite:///{tmp}/{preaggregate}.db",
            "--offline_store", str(offline), "--runner", "FnApiRunner", "--preaggregate", preaggregate])
        counters = defaultdict(int)
        for c in result.metrics().query()["counters"]:
            counters[c.key.metric.name] += c.committed
        letters = list(read_dead_letters(str(offline / "_dead_letters")))
        assert counters["events_in"] == len(lines) == counters["parsed"] + counters["dead_lettered"]
        assert counters["parsed"] == ok and len(letters) == len(lines) - ok
        assert all(letter["reason"] and letter["error"] for letter in letters)
        counted = sum(r["n"] for r in ds.dataset(offline / "per_day", partitioning="hive").to_table().to_pylist())
        assert counted == ok


def test_streaming_replay_reconciles_on_a_fixed_corpus(tmp_path):
    garbage = [b"{", b"\xff\xfe", b"[]", b"null", b'{"ts": "x", "user_id": "u"}', b'{"ts": 1, "user_id": 5}',
               b'{"ts": 1767225600000, "user_id": "u", "amount": "NaN"}',
               b'{"ts": 1767225600000, "user_id": "u", "amount": NaN}',
               b'{"ts": 1767225600000, "user_id": "u", "amount": 1e400}',
               b'{"ts": 1767225600000, "user_id": "u", "item": {"a": [1, 2]}}',
               b'{"ts": 99999999999999999999, "user_id": "u"}',
               b'{"ts": 1767225600000, "user_id": "u", "pad": "' + b"y" * 1_000_000 + b'"}']
    lines = []
    for i in range(60):
        lines.append(_good(i))
        if i % 5 == 0:
            lines.append(garbage[(i // 5) % len(garbage)])
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    ok = _expected_ok(lines)
    offline = tmp_path / "offline"
    streaming_features.run(["--events", str(events), "--replay", "--runner", "BundleBasedDirectRunner", "--feature_spec", str(spec),
                            "--online_store", f"sqlite:///{tmp_path}/o.db", "--offline_store", str(offline),
                            "--runner", "BundleBasedDirectRunner"])
    letters = list(read_dead_letters(str(offline / "_dead_letters")))
    assert len(letters) == len(lines) - ok == 11 and ok == 61  # the 1 MB payload is a valid event
    final = {}
    for r in ds.dataset(offline / "per_day", partitioning="hive").to_table().to_pylist():
        if r["user_id"] not in final or r["pane_index"] > final[r["user_id"]]["pane_index"]:
            final[r["user_id"]] = r
    assert sum(r["n"] for r in final.values()) == ok
