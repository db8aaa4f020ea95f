"""pipelines.feast_repo: the generated repository is applied by `feast apply` with no hand edits,
served by `feast serve` (SQLite case),
and Feast reads what our pipelines wrote: get_online_features equals get_features (SQLite and
Redis; string and int64 entity keys; list features), get_historical_features equals training_set
(also in tests/test_training_set.py, label by label)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pytest

from conftest import REPO, free_port
from pipelines import backfill_features
from pipelines.feast_repo import FeastRepoError, main as feast_repo_main, online_store_config
from pipelines.get_features import get_features
from pipelines.training_set import training_set
from test_training_set import FEATURES, _plain, make_events, make_labels, write_spec
from transforms.spec import load_spec

FEAST = str(REPO / ".venv" / "bin" / "feast")


@pytest.fixture(params=["sqlite", "redis"])
def online_url(request, tmp_path, redis_url):
    return f"sqlite:///{tmp_path}/online.db" if request.param == "sqlite" else redis_url


@pytest.mark.slow
def test_feast_reads_the_stores_through_the_generated_repository(tmp_path, project, online_url):
    from feast import FeatureStore

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in make_events(seed=3)) + "\n")
    spec_path = write_spec(tmp_path / "spec.yaml", project)
    offline = str(tmp_path / "offline")
    backfill_features.run(["--events", str(events), "--feature_spec", spec_path, "--online_store", online_url,
                           "--offline_store", offline, "--runner", "FnApiRunner"])
    repo = tmp_path / "repo"
    feast_repo_main(["--feature_spec", spec_path, "--online_store", online_url, "--offline_store", offline,
                     "--output", str(repo)])
    applied = subprocess.run([FEAST, "apply"], cwd=repo, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    store = FeatureStore(repo_path=str(repo))
    spec = load_spec(spec_path)
    for view in spec.feature_views:
        key = spec.entities[view.entity].join_key
        entities = [f"u{i}" for i in range(5)] + ["nobody"] if key == "user_id" else [1, 2, 3, 4, 5, 99]
        ours = get_features(spec_path, online_url, view.name, [str(e) for e in entities])
        got = store.get_online_features(features=[f"{view.name}:{f.name}" for f in view.features],
                                        entity_rows=[{key: e} for e in entities]).to_dict()
        assert got[key] == entities
        for feature in view.features:
            assert got[feature.name] == [line["features"][feature.name] for line in ours], (view.name, feature.name)
        assert any(line["window_end"] for line in ours) and ours[-1]["window_end"] is None

    if online_url.startswith("sqlite"):
        _check_feast_serve(repo, spec_path, online_url)

    labels = make_labels(n=200)
    ours = training_set(spec_path, offline, labels, FEATURES)
    entity_df = labels.append_column("row", pa.array(np.arange(labels.num_rows))).to_pandas()
    entity_df = entity_df[entity_df["user_id"].notna()]
    feast = store.get_historical_features(entity_df=entity_df, features=["user_fixed:n", "user_fixed:last_amounts",
                                                                          "item_sess:avg"]).to_df()
    assert len(feast) > 20
    for column, feature in (("user_fixed__n", "n"), ("user_fixed__last_amounts", "last_amounts"),
                            ("item_sess__avg", "avg")):
        mine = ours[column].to_pylist()
        assert [_plain(v) for v in feast[feature]] == [mine[r] for r in feast["row"]]


def _check_feast_serve(repo, spec_path: str, online_url: str) -> None:
    """`feast serve` on the generated repository answers /get-online-features with our values."""
    port = free_port()
    server = subprocess.Popen([FEAST, "serve", "--port", str(port), "--no-access-log"], cwd=repo,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"features": ["user_fixed:n", "user_fixed:last_kind"],
                           "entities": {"user_id": ["u1", "u2", "nobody"]}}).encode()
        deadline = time.time() + 60
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/get-online-features", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(20)
    names = answer["metadata"]["feature_names"]
    values = {name: result["values"] for name, result in zip(names, answer["results"])}
    ours = get_features(spec_path, online_url, "user_fixed", ["u1", "u2", "nobody"])
    assert values["n"] == [line["features"]["n"] for line in ours]
    assert values["last_kind"] == [line["features"]["last_kind"] for line in ours]
    assert values["n"][0] is not None and values["n"][2] is None


def test_generated_files(tmp_path):
    spec_path = write_spec(tmp_path / "spec.yaml", "shopx")
    feast_repo_main(["--feature_spec", spec_path, "--online_store", "redis://:s3cret@10.0.0.3:6380/2",
                     "--offline_store", "gs://bucket/offline", "--output", str(tmp_path / "repo")])
    config = (tmp_path / "repo" / "feature_store.yaml").read_text()
    assert "project: shopx" in config and "provider: local" in config
    assert "connection_string: 10.0.0.3:6380,db=2,password=s3cret" in config
    assert "entity_key_serialization_version: 3" in config
    definitions = (tmp_path / "repo" / "definitions.py").read_text()
    assert "item = Entity(name='item', join_keys=['item_id'], value_type=ValueType.INT64)" in definitions
    assert "path='gs://bucket/offline/user_slide'" in definitions
    assert "ttl=timedelta(seconds=300)" in definitions and "ttl=timedelta(seconds=0)" in definitions
    assert "Field(name='kinds', dtype=Array(String))" in definitions
    compile(definitions, "definitions.py", "exec")
    assert online_store_config("rediss://user:pw@h:1/0") == {
        "type": "redis", "connection_string": "h:1,db=0,username=user,password=pw,ssl=true"}
    with pytest.raises(FeastRepoError, match="sqlite:/// and redis"):
        online_store_config("mysql://h/db")
    result = subprocess.run([sys.executable, "-m", "pipelines.feast_repo", "--feature_spec", spec_path,
                             "--online_store", "mysql://h/db", "--offline_store", "o", "--output",
                             str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "feast_repo: error: --online_store" in result.stderr
