"""Reliability rules at the edges: replay time in integer micros, too-late events counted once
per event with 1 and 4 views, idempotent offline and dead-letter files, mixed globs, outputs
checked before any work."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from pipelines import backfill_features, streaming_features
from pipelines.summary import output_summary, print_summary
from transforms.io.offline import read_offline
from transforms.io.sinks import read_dead_letters
from transforms.parse import ParsePlan
from transforms.spec import parse_spec
from transforms.streaming.replay import build_replay

T0 = 1_767_225_600_000


def spec_dict(n_views: int = 1) -> dict:
    views = [{"name": f"v{i}", "entity": "user", "window": {"type": "fixed", "size": "1m"},
              "allowed_lateness": f"{i + 1}m",
              "features": [{"name": "n", "agg": "count"}, {"name": "s", "agg": "sum", "field": "amount"}]}
             for i in range(n_views)]
    return {"project": "rel", "source": {"timestamp_field": "ts", "id_field": "id"},
            "entities": {"user": {"join_key": "user_id"}}, "feature_views": views}


def line(t_ms: int, user: str = "u1", amount: float = 1.0, **extra) -> bytes:
    return json.dumps({"ts": t_ms, "user_id": user, "amount": amount, "id": f"{user}-{t_ms}", **extra}).encode()


def write(tmp, lines, spec: dict, name: str = "events.jsonl"):
    events = tmp / name
    events.write_bytes(b"\n".join(lines) + b"\n")
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return events, path


def test_replay_time_is_whole_milliseconds_even_where_floats_round_down():
    """66,258 ms as float seconds times 1e6 is 66,257,999.99...; Beam truncates that to a
    microsecond short and then refuses to translate the TestStream."""
    assert int(66.258 * 1e6) == 66_257_999  # the hazard, in Python itself
    times = [T0 + k * 66_258 for k in range(30)]
    stream, _ = build_replay([line(t) for t in times], ParsePlan.from_spec(parse_spec(spec_dict())),
                             max_delay_s=0, chunk=1)
    for event in stream._events:
        micros = getattr(event, "new_watermark", None) or getattr(event, "advance_by", None)
        if micros is not None and abs(micros.micros) < 2**62:
            assert micros.micros % 1000 == 0, event
    pipeline = beam.Pipeline()
    _ = pipeline | stream | beam.Map(lambda x: x)
    pipeline.to_runner_api()  # raised "Unable to translate Replay events" before


@pytest.mark.parametrize("n_views", [1, 4])
def test_too_late_events_are_kept_once_each_and_counts_reconcile(tmp_path, n_views, capsys):
    """View v<i> allows i+1 minutes of lateness. The replay adds lines 100 at a time; the last
    three arrive when the watermark is at T0+2990s: one event whose window ended at T0+2820s is
    too late for v0 and v1 only, one from the first minute for every view, and one is junk."""
    lines = [line(T0 + i * 10_000, f"u{i % 3}") for i in range(300)]
    some = line(T0 + 2_790_000, "u1", 2.0)
    every = line(T0 + 30_000, "u2", 4.0)
    lines += [some, every, b"not json"]
    events, spec = write(tmp_path, lines, spec_dict(n_views))
    offline = tmp_path / "offline"
    streaming_features.run(["--events", str(events), "--replay", "--runner", "BundleBasedDirectRunner", "--replay_max_delay", "0s", "--feature_spec",
                            str(spec), "--runner", "BundleBasedDirectRunner", "--online_store",
                            f"sqlite:///{tmp_path}/o.db", "--offline_store", str(offline)])
    letters = list(read_dead_letters(str(offline / "_dead_letters")))
    too_late = {letter["payload"].encode(): letter for letter in letters if letter["reason"] == "too_late"}
    assert set(too_late) == {some, every}  # one dead letter per event, holding the record as received
    assert too_late[every]["views"] == [f"v{i}" for i in range(n_views)]
    assert too_late[some]["views"] == ["v0", "v1"][:n_views]
    assert too_late[every]["event_time_ms"] == T0 + 30_000
    summary = output_summary(parse_spec(spec_dict(n_views)), str(offline), str(offline / "_dead_letters"))
    every_view, some_views = (2, 0) if n_views == 1 else (1, 1)
    assert (summary["refused"], summary["too_late_every_view"], summary["too_late_some_views"]) == (
        1, every_view, some_views)
    print_summary(summary, len(lines))
    used = len(lines) - 1 - every_view
    assert (f"events in: {len(lines)}  used: {used}  refused: 1  too late for every view: {every_view}  "
            f"(too late for some views, used by the others: {some_views})") in capsys.readouterr().out
    # every view counted exactly the events it could still take
    for i in range(n_views):
        rows = read_offline(str(offline), parse_spec(spec_dict(n_views)), f"v{i}").to_pylist()
        final = {}
        for row in rows:
            key = (row["user_id"], row["window_end"])
            if key not in final or row["pane_index"] > final[key]["pane_index"]:
                final[key] = row
        assert sum(r["n"] for r in final.values()) == 300 + (i >= 2), i


@pytest.mark.parametrize("preaggregate", ["true", "false"])
def test_re_running_a_backfill_leaves_the_offline_store_as_after_one_run(tmp_path, preaggregate):
    lines = [line(T0 + i * 7_000, f"u{i % 5}") for i in range(300)] + [b"{bad", b"[]"]
    events, spec = write(tmp_path, lines, spec_dict(2))
    offline = tmp_path / "offline"
    args = ["--events", str(events), "--feature_spec", str(spec), "--runner", "FnApiRunner",
            "--online_store", f"sqlite:///{tmp_path}/o.db", "--offline_store", str(offline),
            "--preaggregate", preaggregate]

    def state():
        tables = {v: ds.dataset(str(offline / v), partitioning="hive").to_table() for v in ("v0", "v1")}
        return ({v: sorted(map(str, t.drop(["created_timestamp"]).to_pylist())) for v, t in tables.items()},
                sorted(json.dumps({k: x[k] for k in ("payload", "reason")})
                       for x in read_dead_letters(str(offline / "_dead_letters"))))

    backfill_features.run(args)
    once = state()
    assert sum(len(rows) for rows in once[0].values()) > 0 and len(once[1]) == 2
    backfill_features.run(args)
    assert state() == once  # the plain dataset reader, not only read_offline, sees one copy
    assert not (offline / "_staging").exists() or not any((offline / "_staging").iterdir())
    # a backfill over other input adds to the store instead of replacing it
    other, _ = write(tmp_path, [line(T0 + 86_400_000, "u9")], spec_dict(2), "other.jsonl")
    backfill_features.run(["--events", str(other)] + args[2:])
    assert len(ds.dataset(str(offline / "v0"), partitioning="hive").to_table()) == len(once[0]["v0"]) + 1


def test_a_glob_of_jsonl_and_parquet_files_reads_each_by_its_format(tmp_path):
    lines = [line(T0 + i * 1_000, f"u{i % 2}") for i in range(20)]
    (tmp_path / "in").mkdir()
    events, spec = write(tmp_path / "in", lines[:10], spec_dict(), "a.jsonl")
    spec.rename(tmp_path / "spec.yaml")
    records = [json.loads(x) for x in lines[10:]]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "in" / "b.parquet")
    results = {}
    for preaggregate in ("true", "false"):
        offline = tmp_path / f"off-{preaggregate}"
        backfill_features.run(["--events", str(tmp_path / "in" / "*"), "--feature_spec", str(tmp_path / "spec.yaml"),
                               "--runner", "FnApiRunner", "--online_store", f"sqlite:///{tmp_path}/{preaggregate}.db",
                               "--offline_store", str(offline), "--preaggregate", preaggregate])
        assert list(read_dead_letters(str(offline / "_dead_letters"))) == []
        rows = read_offline(str(offline), parse_spec(spec_dict()), "v0").to_pylist()
        results[preaggregate] = collections.Counter({r["user_id"]: r["n"] for r in rows})
        assert sum(r["n"] for r in rows) == 20
    assert results["true"] == results["false"]


@pytest.mark.parametrize("make, message", [
    (lambda tmp: (tmp / "f").write_text("x") and str(tmp / "f"), "is a file, not a directory"),
    (lambda tmp: (tmp / "f").write_text("x") and str(tmp / "f" / "sub"), "is inside a file"),
])
def test_outputs_are_checked_before_any_work(tmp_path, make, message):
    target = make(tmp_path)
    events, spec = write(tmp_path, [line(T0)], spec_dict())
    for module in ("backfill_features", "streaming_features"):
        extra = ["--replay"] if module == "streaming_features" else []
        proc = subprocess.run(
            [sys.executable, "-m", f"pipelines.{module}", "--events", str(events), *extra,
             "--feature_spec", str(spec), "--online_store", f"sqlite:///{tmp_path}/o.db",
             "--offline_store", target], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"{module}: error: --offline_store: {target!r} ") and message in last
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "o.db").exists()  # nothing started
