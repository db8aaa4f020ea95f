"""Small builders shared by tests."""

from __future__ import annotations

import json
from typing import Any, Optional

import apache_beam as beam

from transforms.spec import FeatureSpecFile, parse_spec

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, seconds: window boundaries line up with minutes


def make_spec(views: list[dict], project: str = "shop", entities: Optional[dict] = None,
              id_field: Optional[str] = None) -> FeatureSpecFile:
    source: dict[str, Any] = {"timestamp_field": "ts"}
    if id_field:
        source["id_field"] = id_field
    return parse_spec({
        "project": project,
        "source": source,
        "entities": entities or {"user": {"join_key": "user_id"}},
        "feature_views": views,
    })


def view(name: str = "v", window: Optional[dict] = None, features: Optional[list] = None, **kw) -> dict:
    return {
        "name": name,
        "entity": kw.pop("entity", "user"),
        "window": window or {"type": "fixed", "size": "1m"},
        "features": features or [
            {"name": "n", "agg": "count"},
            {"name": "s", "agg": "sum", "field": "amount"},
        ],
        **kw,
    }


def event(t: float, user: str = "u1", amount: Optional[float] = 1.0, **fields) -> str:
    """A JSON event at T0 + t seconds."""
    record = {"ts": int((T0 + t) * 1000), "user_id": user, "amount": amount, **fields}
    return json.dumps(record)


def ms(t: float) -> int:
    return int((T0 + t) * 1000)


def feast_online(tmp_path, project: str, online_store_url: str, view: str, schema: list,
                 entities: list[str]) -> dict:
    """What Feast's own get_online_features reads from our store for a `user`-keyed view:
    `schema` is [(feature name, Feast type)], the store config comes from our URL as
    `pipelines.feast_repo` writes it."""
    import datetime as dt

    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType

    from pipelines.feast_repo import online_store_config

    config = RepoConfig(
        project=project, registry=str(tmp_path / "registry.db"), provider="local",
        online_store=online_store_config(online_store_url), offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    fs = FeatureStore(config=config)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    fv = FeatureView(
        name=view, entities=[user], ttl=dt.timedelta(0), online=True,
        schema=[Field(name=name, dtype=dtype) for name, dtype in schema],
        source=FileSource(path=str(tmp_path / "unused.parquet"), timestamp_field="event_timestamp"),
    )
    fs.apply([user, fv])
    return fs.get_online_features(features=[f"{view}:{name}" for name, _ in schema],
                                  entity_rows=[{"user_id": e} for e in entities]).to_dict()


def assert_online_is_the_reference(spec_path, spec, view, online_url: str, records: list[dict]) -> None:
    """Every entity's online row, read back by get_features, is the current window of the
    plain-Python reference, with its values."""
    from pipelines.get_features import get_features
    from reference import assert_close, current_windows
    from transforms.io.online.feast_codec import rfc3339

    current = current_windows(spec, view, records)
    for line in get_features(str(spec_path), online_url, view.name, sorted(current)):
        start, end, values = current[line["entity"]]
        assert (line["window_start"], line["window_end"]) == (rfc3339(start), rfc3339(end))
        for feature in view.features:
            assert_close(feature, line["features"][feature.name], values[feature.name])



class RecordPanes(beam.DoFn):
    """Appends the panes of the window starting at 0 to a JSONL file, one [timing, index,
    features] per pane (DoFns run pickled, some in workers: a file, not a list)."""

    def __init__(self, path: str):
        self._path = path

    def process(self, row):
        if row.window_start_ms == ms(0):
            with open(self._path, "a") as f:
                f.write(json.dumps([row.pane_timing, row.pane_index, list(row.features)]) + "\n")
