"""check_consistency: 0 mismatches after a backfill (SQLite and Redis) and after a replay with
late panes; a planted mismatch (a changed value, a stale window, an entity missing online) is
reported and the command exits 1."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import EXAMPLE_SPEC, REPO
from pipelines import backfill_features, streaming_features
from pipelines.check_consistency import check_consistency, check_view
from pipelines.sample_events import generate, write_jsonl
from transforms.io.offline import read_offline
from transforms.io.online.registry import open_online_store
from transforms.records import FeatureRow
from transforms.spec import load_spec


def _spec(tmp_path, project):
    path = tmp_path / "spec.yaml"
    path.write_text(EXAMPLE_SPEC.read_text().replace("project: shop", f"project: {project}"))
    return str(path)


@pytest.fixture(params=["sqlite", "redis"])
def online_url(request, tmp_path, redis_url):
    return f"sqlite:///{tmp_path}/online.db" if request.param == "sqlite" else redis_url


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.check_consistency", *args], cwd=REPO,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_backfill_is_consistent_and_a_planted_mismatch_is_reported(tmp_path, project, online_url):
    events = tmp_path / "events.jsonl"
    write_jsonl(str(events), generate(3000, seed=4, users=30, items=50, events_per_second=10))
    spec_path = _spec(tmp_path, project)
    offline = str(tmp_path / "offline")
    backfill_features.run(["--events", str(events), "--feature_spec", spec_path, "--online_store", online_url,
                           "--offline_store", offline, "--runner", "FnApiRunner"])
    reports = check_consistency(spec_path, online_url, offline, sample=20)
    assert [(r.view, r.sampled, r.compared, r.mismatches) for r in reports] == [
        ("user_5m", 20, 20, []), ("item_1h", 20, 20, [])]
    flags = ["--feature_spec", spec_path, "--online_store", online_url, "--offline_store", offline]
    result = _run(*flags)
    assert result.returncode == 0, result.stderr
    assert "user_5m: 30 entities sampled, 30 compared, 0 expired online (ttl), 0 mismatches" in result.stdout

    # plant: a later pane of u1's current window with another click count, online only
    spec = load_spec(spec_path)
    store = open_online_store(online_url, spec)
    try:
        (online,) = store.read("user_5m", ["u1"])
        start_ms = online.window_start_ms
        features = tuple(online.features[f.name] for f in spec.view("user_5m").features)
        store.write([FeatureRow("user_5m", "u1", start_ms, online.window_end_ms, "LATE", online.pane_index + 1,
                                start_ms, (features[0] + 1,) + features[1:])])
    finally:
        store.close()
    result = _run(*flags, "--view", "user_5m")
    assert result.returncode == 1
    assert ("mismatch: user_5m user_id='u1': online pane (start "
            f"{start_ms}, index 1) != offline final pane (start {start_ms}, index 0)") in result.stdout
    assert "user_5m: 30 entities sampled, 30 compared, 0 expired online (ttl), 1 mismatches" in result.stdout


def test_value_mismatch_and_missing_entity(tmp_path, project):
    events = tmp_path / "events.jsonl"
    write_jsonl(str(events), generate(800, seed=6, users=5, items=5, events_per_second=10))
    spec_path = _spec(tmp_path, project)
    offline, url = str(tmp_path / "offline"), f"sqlite:///{tmp_path}/online.db"
    result = backfill_features.run(["--events", str(events), "--feature_spec", spec_path, "--online_store", url,
                                    "--offline_store", offline, "--runner", "FnApiRunner"])
    assert not [d for d in result.metrics().query()["distributions"] if d.key.metric.namespace == "freshness"]
    conn = sqlite3.connect(tmp_path / "online.db")
    # same pane, another value: only a value comparison can see it
    conn.execute(f"UPDATE {project}_item_1h SET value = (SELECT value FROM {project}_item_1h "
                 f"WHERE feature_name = 'views' LIMIT 1 OFFSET 1) WHERE feature_name = 'views' AND rowid = "
                 f"(SELECT MIN(rowid) FROM {project}_item_1h WHERE feature_name = 'views')")
    # an entity the online store lost (its window row gone: reads as unknown), within its ttl
    conn.execute(f'DELETE FROM "{project}__windows" WHERE view = ? AND rowid = (SELECT MIN(rowid) FROM '
                 f'"{project}__windows" WHERE view = ?)', ("user_5m", "user_5m"))
    conn.commit()
    conn.close()
    reports = {r.view: r for r in check_consistency(spec_path, url, offline, sample=100)}
    assert len(reports["item_1h"].mismatches) == 1
    assert ": views online " in reports["item_1h"].mismatches[0]
    assert len(reports["user_5m"].mismatches) == 1 and "missing online" in reports["user_5m"].mismatches[0]
    # the same entity past its ttl (a day after the last write) is expired, not a mismatch
    spec = load_spec(spec_path)
    store = open_online_store(url, spec)
    try:
        later = check_view(spec, store, offline, spec.view("user_5m"), 100, 0,
                           now_ms=int(time.time() * 1000) + 2 * 86_400_000)
    finally:
        store.close()
    assert (later.expired, later.mismatches) == (1, [])


@pytest.mark.slow
def test_replay_with_late_panes_is_consistent(tmp_path):
    events = tmp_path / "events.jsonl"
    write_jsonl(str(events), generate(1200, seed=5, users=12, items=30, events_per_second=2,
                                      late_fraction=0.05, late_delay_ms=600_000))
    online, offline = f"sqlite:///{tmp_path}/online.db", str(tmp_path / "offline")
    result = streaming_features.run(["--events", str(events), "--replay", "--runner", "BundleBasedDirectRunner", "--feature_spec", str(EXAMPLE_SPEC),
                                     "--online_store", online, "--offline_store", offline,
                                     "--runner", "BundleBasedDirectRunner"])
    # freshness: one lag sample (processing time minus window end, >= 0) per online write, per
    # view; the replay's runner reports metrics of some bundles only, so compare with its counter
    query = result.metrics().query()
    lags = [d.committed for d in query["distributions"] if d.key.metric.namespace == "freshness"]
    written = sum(c.committed for c in query["counters"] if c.key.metric.name == "rows_written"
                  and c.key.metric.namespace == "online_store")
    assert lags and sum(lag.count for lag in lags) == written > 0
    assert all(lag.min >= 0 for lag in lags)
    timings = set(read_offline(offline, load_spec(EXAMPLE_SPEC), "user_5m")["pane_timing"].to_pylist())
    assert timings == {"EARLY", "ON_TIME", "LATE"}
    reports = check_consistency(str(EXAMPLE_SPEC), online, offline)
    assert [(r.view, r.compared, r.mismatches) for r in reports] == [("user_5m", 12, []), ("item_1h", 30, [])]
