"""Pub/Sub -> streaming pipeline -> Redis and Parquet, end to end with the real client.

Beam's DirectRunner reads Pub/Sub with synchronous pulls and sets the watermark to wall-clock
time, so the events carry timestamps in the current hour and the view fires early panes every
second: features reach Redis within seconds, long before the hour's on-time pane.
"""

from __future__ import annotations

import json
import time
import uuid

import pyarrow.dataset as ds
import yaml
from google.cloud import pubsub_v1

from pipelines import streaming_features
from pipelines.get_features import get_features
from transforms.io.online.base import StoreNotFoundError

PROJECT_ID = "test-project"


def write_spec(tmp_path, project: str):
    spec = {
        "project": project,
        "source": {"timestamp_field": "event_time"},
        "entities": {"user": {"join_key": "user_id"}},
        "feature_views": [{
            "name": "user_1h",
            "entity": "user",
            "window": {"type": "fixed", "size": "1h"},
            "trigger": {"early_every": "1s"},
            "allowed_lateness": "1h",
            "ttl": "1d",
            "features": [
                {"name": "clicks", "agg": "count", "where": {"event_type": "click"}},
                {"name": "spend", "agg": "sum", "field": "amount"},
                {"name": "last_item", "agg": "last", "field": "item_id"},
            ],
        }],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_pubsub_to_redis_end_to_end(pubsub_emulator, redis_url, project, tmp_path):
    topic = f"projects/{PROJECT_ID}/topics/events-{uuid.uuid4().hex[:8]}"
    subscription = f"projects/{PROJECT_ID}/subscriptions/features-{uuid.uuid4().hex[:8]}"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    dead_topic = f"projects/{PROJECT_ID}/topics/dead-{uuid.uuid4().hex[:8]}"
    dead_subscription = f"projects/{PROJECT_ID}/subscriptions/dead-{uuid.uuid4().hex[:8]}"
    publisher.create_topic(name=dead_topic)
    subscriber.create_subscription(name=dead_subscription, topic=dead_topic)

    if time.time() % 3600 < 0.05:
        time.sleep(0.05)  # give the events distinct timestamps within the hour
    now_ms = int(time.time() * 1000)
    hour_start = now_ms - now_ms % 3_600_000
    events = [  # (user, type, amount, item, ms after the hour started)
        ("a", "click", None, "i1", 0), ("a", "buy", 10.5, "i2", 1), ("a", "click", None, "i3", 2),
        ("b", "buy", 2.0, "i9", 0), ("b", "buy", 3.0, "i8", 1),
    ]
    futures = []
    for user, kind, amount, item, offset in events:
        ts = hour_start + min(offset, max(0, now_ms - hour_start))
        payload = {"user_id": user, "event_type": kind, "amount": amount, "item_id": item}
        futures.append(publisher.publish(topic, json.dumps(payload).encode(), ts=str(ts)))
    futures.append(publisher.publish(topic, b'{"user_id": "a", "amount": "lots"}', ts=str(now_ms)))
    futures.append(publisher.publish(topic, b"not json", ts=str(now_ms)))
    for future in futures:
        future.result(timeout=30)

    spec = write_spec(tmp_path, project)
    offline = tmp_path / "offline"
    result = streaming_features.run([
        "--input_subscription", subscription, "--timestamp_attribute", "ts",
        "--feature_spec", str(spec), "--online_store", redis_url, "--offline_store", str(offline),
        "--dead_letter", dead_topic, "--runner", "BundleBasedDirectRunner",
    ], wait=False)
    expected = {
        "a": {"clicks": 2, "spend": 10.5, "last_item": "i3"},
        "b": {"clicks": 0, "spend": 5.0, "last_item": "i8"},
    }
    try:
        deadline = time.time() + 90
        got = None
        while time.time() < deadline:
            try:
                got = {r["entity"]: r["features"] for r in get_features(str(spec), redis_url, "user_1h", ["a", "b"])}
            except StoreNotFoundError:  # the job has not written the view yet
                got = None
            if got == expected:
                break
            time.sleep(0.5)
        assert got == expected
        letters: list[tuple[dict, dict]] = []
        while time.time() < deadline and len(letters) < 2:
            response = subscriber.pull(request={"subscription": dead_subscription, "max_messages": 10}, timeout=10)
            for received in response.received_messages:
                letters.append((json.loads(received.message.data), dict(received.message.attributes)))
            if response.received_messages:
                subscriber.acknowledge(request={"subscription": dead_subscription,
                                                "ack_ids": [m.ack_id for m in response.received_messages]})
    finally:
        result.cancel()
    assert sorted(letter["reason"] for letter, _ in letters) == ["bad_type", "invalid_json"]
    assert sorted(attrs["reason"] for _, attrs in letters) == ["bad_type", "invalid_json"]
    assert any("amount: must be a number" in letter["error"] and letter["payload"] == '{"user_id": "a", "amount": "lots"}'
               for letter, _ in letters)
    rows = ds.dataset(offline / "user_1h", partitioning="hive").to_table().to_pylist()
    timings = {r["pane_timing"] for r in rows}
    assert "EARLY" in timings and timings <= {"EARLY", "ON_TIME"}  # ON_TIME only if the hour ended
    window_end = (hour_start + 3_600_000) * 1000
    assert all(int(r["window_end"].timestamp() * 1_000_000) == window_end for r in rows)
    final = {}
    for r in rows:
        if r["user_id"] not in final or r["pane_index"] > final[r["user_id"]]["pane_index"]:
            final[r["user_id"]] = r
    assert {u: {k: final[u][k] for k in ("clicks", "spend", "last_item")} for u in final} == expected
