"""The backfill CLI end to end: files -> SQLite/Redis/Parquet, checked against a plain-Python
reference; counts reconcile; and the streaming pipeline's final panes equal the backfill."""

from __future__ import annotations

from collections import defaultdict

import apache_beam as beam
import pyarrow.dataset as ds
import pytest
from apache_beam.testing.test_stream import TestStream

from conftest import EXAMPLE_SPEC, streaming_options
from helpers import assert_online_is_the_reference
from pipelines import backfill_features
from pipelines.sample_events import generate
from reference import all_windows, assert_close
from transforms.feature_pipeline import FeaturePipeline, WriteFeatures
from transforms.io.sinks import read_dead_letters
from transforms.parse import decode_json
from transforms.spec import load_spec

N_EVENTS = 4000
MALFORMED_EVERY = 500


def good_records(lines: list[bytes]) -> list[dict]:
    """The generated events our parser must accept (the generator's malformed ones removed)."""
    records = []
    for line in lines:
        try:
            records.append(decode_json(line))
        except Exception:
            continue
    good = [r for r in records if isinstance(r, dict) and isinstance(r.get("event_time"), int)
            and isinstance(r.get("user_id"), str) and isinstance(r.get("item_id"), str)
            and (r.get("amount") is None or isinstance(r.get("amount"), float))]
    return good


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    lines = list(generate(N_EVENTS, seed=3, users=40, items=60, events_per_second=20,
                          malformed_every=MALFORMED_EVERY))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, good_records(lines)


def spec_with_project(tmp_path, project):
    data = EXAMPLE_SPEC.read_text().replace("project: shop", f"project: {project}")
    path = tmp_path / "spec.yaml"
    path.write_text(data)
    return path


@pytest.fixture(params=["sqlite", "redis"])
def online_url(request, tmp_path, redis_url):
    return f"sqlite:///{tmp_path}/online.db" if request.param == "sqlite" else redis_url


def test_backfill_writes_correct_features_everywhere(events_file, tmp_path, project, online_url):
    events, good = events_file
    spec_path = spec_with_project(tmp_path, project)
    offline = tmp_path / "offline"
    result = backfill_features.run([
        "--events", str(events), "--feature_spec", str(spec_path), "--online_store", online_url,
        "--offline_store", str(offline), "--runner", "FnApiRunner",
    ])
    spec = load_spec(spec_path)

    # nothing lost: every event is parsed or dead-lettered, with a reason
    counters = defaultdict(int)
    for c in result.metrics().query()["counters"]:
        counters[c.key.metric.name] += c.committed
    assert counters["events_in"] == N_EVENTS == counters["parsed"] + counters["dead_lettered"]
    assert counters["parsed"] == len(good)
    letters = list(read_dead_letters(str(offline / "_dead_letters")))
    assert len(letters) == N_EVENTS // MALFORMED_EVERY == counters["dead_lettered"]
    assert all(letter["reason"] and letter["error"] and letter["stage"] == "parse" for letter in letters)

    for view in spec.feature_views:
        # offline: exactly one ON_TIME row per (entity, window), with the reference values
        table = ds.dataset(offline / view.name, partitioning="hive").to_table().to_pylist()
        expected = all_windows(spec, view, good)
        key = spec.entities[view.entity].join_key
        got = {(r[key], int(r["window_start"].timestamp() * 1000), int(r["window_end"].timestamp() * 1000)): r
               for r in table}
        assert len(table) == len(got) == len(expected)
        for k, values in expected.items():
            assert got[k]["pane_timing"] == "ON_TIME" and got[k]["pane_index"] == 0
            assert got[k]["event_timestamp"] == got[k]["window_end"]
            for feature in view.features:
                assert_close(feature, got[k][feature.name], values[feature.name])

        # online: the window ending after each entity's latest event, read back by the CLI's code
        assert_online_is_the_reference(spec_path, spec, view, online_url, good)


@pytest.mark.slow
def test_streaming_final_panes_equal_the_backfill(events_file, tmp_path):
    events, good = events_file
    spec = load_spec(EXAMPLE_SPEC)
    lines = [line for line in events.read_bytes().splitlines() if line.strip()]
    # Replay in arrival order; the watermark trails the newest event by 30 s, more than the
    # generator's disorder (20 s), so nothing is late and final panes must equal the backfill.
    stream = TestStream()
    newest = 0
    for i in range(0, len(lines), 200):
        chunk = lines[i:i + 200]
        stream.add_elements(chunk)
        for line in chunk:
            try:
                newest = max(newest, decode_json(line)["event_time"])
            except Exception:
                pass
        stream.advance_watermark_to((newest - 30_000) / 1000)
    stream.advance_watermark_to_infinity()

    offline_stream = tmp_path / "stream"
    with beam.Pipeline(options=streaming_options()) as p:
        p | stream | FeaturePipeline(spec) | WriteFeatures(spec, offline_store=str(offline_stream))
    offline_batch = tmp_path / "batch"
    backfill_features.run([
        "--events", str(events), "--feature_spec", str(EXAMPLE_SPEC),
        "--online_store", f"sqlite:///{tmp_path}/o.db", "--offline_store", str(offline_batch),
        "--runner", "FnApiRunner",
    ])
    for view in spec.feature_views:
        final = {}
        for r in ds.dataset(offline_stream / view.name, partitioning="hive").to_table().to_pylist():
            k = (r["user_id" if view.entity == "user" else "item_id"], r["window_end"])
            if k not in final or r["pane_index"] > final[k]["pane_index"]:
                final[k] = r
        batch = {(r["user_id" if view.entity == "user" else "item_id"], r["window_end"]): r
                 for r in ds.dataset(offline_batch / view.name, partitioning="hive").to_table().to_pylist()}
        assert final.keys() == batch.keys()
        assert all(r["pane_timing"] == "ON_TIME" for r in final.values())
        for k, r in batch.items():
            for feature in view.features:
                a, b = final[k][feature.name], r[feature.name]
                assert a == pytest.approx(b, rel=1e-9) if isinstance(b, float) else a == b, (view.name, k, feature.name)
