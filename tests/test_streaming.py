"""The streaming pipeline: local replay (early, on-time and late panes; final values equal the
reference), clear usage errors, the portable job API, and Flink when one is configured."""

from __future__ import annotations

import gzip

import pyarrow.dataset as ds
import pytest

from conftest import EXAMPLE_SPEC
from pipelines import backfill_features, streaming_features
from pipelines.get_features import get_features
from pipelines.sample_events import generate, write_jsonl
from reference import all_windows, assert_close, current_windows
from test_backfill import good_records
from transforms.io.online.feast_codec import rfc3339
from transforms.io.sinks import read_dead_letters
from transforms.spec import load_spec
from transforms.streaming.replay import read_lines


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    lines = list(generate(1500, seed=5, users=15, items=40, events_per_second=2,
                          late_fraction=0.05, late_delay_ms=600_000, malformed_every=300))
    write_jsonl(str(path), iter(lines))
    return path, good_records(lines)


def _final_panes(offline, view, key):
    final = {}
    for r in ds.dataset(offline / view, partitioning="hive").to_table().to_pylist():
        k = (r[key], int(r["window_start"].timestamp() * 1000), int(r["window_end"].timestamp() * 1000))
        if k not in final or r["pane_index"] > final[k]["pane_index"]:
            final[k] = r
    return final


@pytest.mark.slow
def test_replay_emits_early_on_time_and_late_panes_with_correct_final_values(replay_file, tmp_path):
    events, good = replay_file
    online = f"sqlite:///{tmp_path}/online.db"
    offline = tmp_path / "offline"
    streaming_features.run([
        "--events", str(events), "--replay", "--runner", "BundleBasedDirectRunner", "--feature_spec", str(EXAMPLE_SPEC),
        "--online_store", online, "--offline_store", str(offline), "--runner", "BundleBasedDirectRunner",
    ])
    spec = load_spec(EXAMPLE_SPEC)
    timings = {r["pane_timing"] for r in ds.dataset(offline / "user_5m", partitioning="hive")
               .to_table(columns=["pane_timing"]).to_pylist()}
    assert timings == {"EARLY", "ON_TIME", "LATE"}

    letters = list(read_dead_letters(str(offline / "_dead_letters")))
    assert len(letters) == 5 and len(good) == 1495

    for view in spec.feature_views:
        key = spec.entities[view.entity].join_key
        final = _final_panes(offline, view.name, key)
        expected = all_windows(spec, view, good)  # late events are within allowed lateness
        assert final.keys() == expected.keys()
        for k, values in expected.items():
            for feature in view.features:
                assert_close(feature, final[k][feature.name], values[feature.name])
        current = current_windows(spec, view, good)
        for line in get_features(str(EXAMPLE_SPEC), online, view.name, sorted(current)):
            start, end, values = current[line["entity"]]
            assert (line["window_start"], line["window_end"]) == (rfc3339(start), rfc3339(end))
            for feature in view.features:
                assert_close(feature, line["features"][feature.name], values[feature.name])


@pytest.mark.parametrize("args, message", [
    (["--input_topic", "projects/test-project/topics/events", "--id_attribute", "id"],
     "--id_attribute: Beam's DirectRunner cannot de-duplicate Pub/Sub messages by attribute"),
    (["--input_topic", "projects/p/topics/t"],
     '--input_topic must be in the form "projects/<project>/topics/<topic>" (got \'projects/p/topics/t\')'),
    (["--input_subscription", "topics/x"],
     '--input_subscription must be in the form "projects/<project>/subscriptions/<subscription>"'),
    ([], "give exactly one input: --input_subscription, --input_topic, or --events [--replay]"),
    (["--events", "x.jsonl", "--runner", "BundleBasedDirectRunner"],
     "--events without --replay reads files as a stream, which needs Prism"),
    (["--events", "x.jsonl", "--replay", "--runner", "DataflowRunner"], "--replay runs on Prism and the BundleBasedDirectRunner only"),
    (["--events", "nothere/*.jsonl", "--replay"], "--events: cannot read 'nothere/*.jsonl': no files match"),
])
def test_usage_errors_are_one_clear_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        streaming_features.main(args + ["--feature_spec", str(EXAMPLE_SPEC),
                                        "--online_store", f"sqlite:///{tmp_path}/o.db",
                                        "--offline_store", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("streaming_features: error: ") and message in err[-1]


def test_portable_runner_with_embedded_job_server_gives_the_same_rows(replay_file, tmp_path):
    events, _ = replay_file
    outputs = {}
    for name, runner_args in {
        "fnapi": ["--runner", "FnApiRunner"],
        "portable": ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK"],
    }.items():
        offline = tmp_path / name
        backfill_features.run(["--events", str(events), "--feature_spec", str(EXAMPLE_SPEC),
                               "--online_store", f"sqlite:///{tmp_path}/{name}.db",
                               "--offline_store", str(offline)] + runner_args)
        table = ds.dataset(offline / "user_5m", partitioning="hive").to_table().drop(["created_timestamp"])
        outputs[name] = sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["window_end"]))
    assert outputs["portable"] == outputs["fnapi"] and len(outputs["fnapi"]) > 100


def test_replay_reads_a_glob_in_file_name_order(tmp_path):
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"3\n4\n"))
    (tmp_path / "a.jsonl").write_bytes(b"1\n2\n")
    (tmp_path / "c.txt").write_bytes(b"not matched\n")
    assert read_lines(str(tmp_path / "*.jsonl*")) == [b"1", b"2", b"3", b"4"]
    assert read_lines(str(tmp_path / "a.jsonl")) == [b"1", b"2"]
