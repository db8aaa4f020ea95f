"""The moment, list and frequency aggregations (variance, stddev, first_k, last_k, top_k,
histogram) on every path - the backfill's fast path and event path, streaming - against the
plain-Python reference, window by window; their list and map values read back through the
online stores and by Feast itself."""

from __future__ import annotations


import apache_beam as beam
import pyarrow.dataset as ds
import pytest
import yaml
from apache_beam.testing.test_stream import TestStream

from conftest import EXAMPLE_SPEC, streaming_options
from helpers import assert_online_is_the_reference, feast_online
from pipelines import backfill_features
from pipelines.sample_events import generate
from reference import all_windows, assert_close, current_windows
from test_backfill import good_records
from transforms.feature_pipeline import FeaturePipeline, WriteFeatures
from transforms.parse import decode_json
from transforms.spec import load_spec

N_EVENTS = 3000

VIEWS = [
    {
        "name": "user_stats", "entity": "user", "window": {"type": "sliding", "size": "5m", "period": "1m"},
        "features": [
            {"name": "n", "agg": "count"},
            {"name": "var_amount", "agg": "variance", "field": "amount"},
            {"name": "std_purchase", "agg": "stddev", "field": "amount", "where": {"event_type": "purchase"}},
            {"name": "first_items", "agg": "first_k", "field": "item_id", "k": 3},
            {"name": "last_amounts", "agg": "last_k", "field": "amount", "k": 4},
            {"name": "top_items", "agg": "top_k", "field": "item_id", "k": 2},
            {"name": "event_types", "agg": "histogram", "field": "event_type", "cap": 2},
        ],
    },
    {
        "name": "item_stats", "entity": "item", "window": {"type": "fixed", "size": "10m"},
        "features": [
            {"name": "buyers", "agg": "top_k", "field": "user_id", "k": 3, "where": {"event_type": "purchase"}},
            {"name": "kinds", "agg": "histogram", "field": "event_type", "cap": 5},
            {"name": "last_buyers", "agg": "last_k", "field": "user_id", "k": 2},
            {"name": "std_amount", "agg": "stddev", "field": "amount"},
        ],
    },
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("aggs")
    lines = list(generate(N_EVENTS, seed=11, users=25, items=40, events_per_second=10, malformed_every=300))
    events = root / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    data = yaml.safe_load(EXAMPLE_SPEC.read_text())
    data["feature_views"] = VIEWS
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    return events, spec_path, load_spec(spec_path), good_records(lines), lines


def _offline(root, spec, view) -> dict:
    key = spec.entities[view.entity].join_key
    rows = ds.dataset(root / view.name, partitioning="hive").to_table().to_pylist()
    out = {}
    for r in rows:
        k = (r[key], int(r["window_start"].timestamp() * 1000), int(r["window_end"].timestamp() * 1000))
        if k not in out or r["pane_index"] > out[k]["pane_index"]:
            out[k] = r
    return out


def _value(row: dict, name: str):
    value = row[name]
    if isinstance(value, list) and value and isinstance(value[0], tuple):  # Parquet maps read as pairs
        return dict(value)
    return value


def _check(got: dict, spec, view, records) -> None:
    expected = all_windows(spec, view, records)
    assert got.keys() == expected.keys()
    for k, values in expected.items():
        for feature in view.features:
            assert_close(feature, _value(got[k], feature.name), values[feature.name])


@pytest.mark.parametrize("preaggregate", ["true", "false"], ids=["fast_path", "event_path"])
def test_backfill_paths_equal_the_reference(corpus, tmp_path, preaggregate, redis_url):
    events, spec_path, spec, good, _ = corpus
    offline = tmp_path / "offline"
    backfill_features.run([
        "--events", str(events), "--feature_spec", str(spec_path), "--online_store", redis_url,
        "--offline_store", str(offline), "--runner", "FnApiRunner", "--preaggregate", preaggregate,
    ])
    for view in spec.feature_views:
        got = _offline(offline, spec, view)
        assert all(r["pane_timing"] == "ON_TIME" for r in got.values())
        _check(got, spec, view, good)
        # online: the current window of every entity, list and map values decoded from Feast's Values
        assert_online_is_the_reference(spec_path, spec, view, redis_url, good)


@pytest.mark.slow
def test_streaming_final_panes_equal_the_reference(corpus, tmp_path):
    _, _, spec, good, lines = corpus
    stream = TestStream()
    newest = 0
    for i in range(0, len(lines), 150):
        chunk = [line for line in lines[i:i + 150] if line.strip()]
        stream.add_elements(chunk)
        for line in chunk:
            try:
                newest = max(newest, decode_json(line)["event_time"])
            except Exception:
                pass
        stream.advance_watermark_to((newest - 30_000) / 1000)  # behind the generator's disorder
    stream.advance_watermark_to_infinity()
    offline = tmp_path / "stream"
    with beam.Pipeline(options=streaming_options()) as p:
        p | stream | FeaturePipeline(spec) | WriteFeatures(spec, offline_store=str(offline))
    for view in spec.feature_views:
        _check(_offline(offline, spec, view), spec, view, good)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_feast_reads_list_and_map_features(corpus, tmp_path, project, redis_url, store):
    events, spec_path, _, good, _ = corpus
    text = spec_path.read_text().replace("project: shop", f"project: {project}")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    url = f"sqlite:///{tmp_path}/online.db" if store == "sqlite" else redis_url
    backfill_features.run([
        "--events", str(events), "--feature_spec", str(spec_path), "--online_store", url,
        "--offline_store", str(tmp_path / "offline"), "--runner", "FnApiRunner",
    ])
    current = current_windows(spec, spec.view("user_stats"), good)
    entities = sorted(current)
    from feast.types import Array, Float64, Int64, Map, String

    schema = [("n", Int64), ("var_amount", Float64), ("first_items", Array(String)),
              ("last_amounts", Array(Float64)), ("event_types", Map)]
    got = feast_online(tmp_path, project, url, "user_stats", schema, entities + ["nobody"])
    assert got["user_id"] == entities + ["nobody"]
    for name in ("n", "var_amount", "first_items", "last_amounts", "event_types"):
        feature = next(f for f in spec.view("user_stats").features if f.name == name)
        for entity, value in zip(entities, got[name]):
            assert_close(feature, value, current[entity][2][name])
        assert got[name][-1] is None
