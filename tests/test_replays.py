"""Re-runs and redeliveries: the same backfill twice, or the same stream replayed twice, leaves
the same online store, and the same offline store once de-duplicated by (entity, window_end,
pane_index) - the documented identity of a pane."""

from __future__ import annotations

import pytest

from conftest import EXAMPLE_SPEC
from pipelines import backfill_features, streaming_features
from pipelines.sample_events import generate, write_jsonl
from transforms.io.offline import read_offline
from transforms.io.online.registry import open_online_store
from transforms.records import layouts
from transforms.spec import load_spec


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("replays") / "events.jsonl"
    write_jsonl(str(path), generate(1200, seed=21, users=12, items=30, events_per_second=2,
                                    late_fraction=0.03, malformed_every=200))
    return path


def _online_state(url: str, spec_path=EXAMPLE_SPEC) -> dict:
    spec = load_spec(spec_path)
    store = open_online_store(url, spec)
    try:
        return {view: store.read(view, [f"u{i}" for i in range(12)] + [f"i{i}" for i in range(30)])
                for view in ("user_5m", "item_1h")}
    finally:
        store.close()


def _offline_state(root) -> dict:
    return {name: read_offline(str(root), layout).drop(["created_timestamp"]).to_pylist()
            for name, layout in layouts(load_spec(EXAMPLE_SPEC)).items()}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_running_the_same_backfill_twice_changes_nothing(events, tmp_path, backend, redis_url, project):
    spec = tmp_path / "spec.yaml"
    spec.write_text(EXAMPLE_SPEC.read_text().replace("project: shop", f"project: {project}"))
    url = f"sqlite:///{tmp_path}/online.db" if backend == "sqlite" else redis_url
    args = ["--events", str(events), "--feature_spec", str(spec), "--online_store", url,
            "--offline_store", str(tmp_path / "offline"), "--runner", "FnApiRunner"]
    backfill_features.run(args)
    once_online = _online_state(url, spec)
    once_offline = _offline_state(tmp_path / "offline")
    backfill_features.run(args)
    assert _online_state(url, spec) == once_online
    assert _offline_state(tmp_path / "offline") == once_offline
    assert sum(len(rows) for rows in once_offline.values()) > 100


@pytest.mark.slow
def test_replaying_the_same_stream_twice_changes_nothing(events, tmp_path):
    url = f"sqlite:///{tmp_path}/online.db"
    args = ["--events", str(events), "--replay", "--runner", "BundleBasedDirectRunner", "--feature_spec", str(EXAMPLE_SPEC), "--online_store", url,
            "--offline_store", str(tmp_path / "offline"), "--runner", "BundleBasedDirectRunner"]
    streaming_features.run(args)
    once_online, once_offline = _online_state(url), _offline_state(tmp_path / "offline")
    streaming_features.run(args)
    assert _online_state(url) == once_online
    assert _offline_state(tmp_path / "offline") == once_offline
    assert any(r["pane_timing"] == "LATE" for r in once_offline["user_5m"])
