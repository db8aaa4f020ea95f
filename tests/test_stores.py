"""Online stores against real servers: Feast-compatible bytes, atomic monotonic upserts, ttl,
and Feast's own `get_online_features` reading what we wrote."""

from __future__ import annotations

import time

import pytest
import redis

from helpers import feast_online, make_spec, view
from transforms.io.online.base import StoreError
from transforms.io.online.config import redact_url
from transforms.io.online.feast_codec import (
    encode_timestamp,
    encode_value,
    feature_field,
    serialize_entity_key,
)
from transforms.io.online.redis import MAX_VIEWS
from transforms.io.online.registry import open_online_store
from transforms.records import FeatureRow, layouts
from transforms.windows import is_current_window

FEATURES = [
    {"name": "clicks", "agg": "count"},
    {"name": "spend", "agg": "sum", "field": "amount"},
    {"name": "avg_amount", "agg": "mean", "field": "amount"},
    {"name": "last_item", "agg": "last", "field": "item"},
]


def spec_for(project: str, ttl: str | None = "1d"):
    extra = {"ttl": ttl} if ttl else {}
    return make_spec([view(name="user_5m", features=FEATURES,
                           window={"type": "sliding", "size": "5m", "period": "1m"}, **extra)],
                     project=project)


def row(entity="u1", end_min=5, pane=0, features=(5, 12.5, 2.5, "i9"), timing="ON_TIME", max_event_min=None):
    end = end_min * 60_000
    max_event = (max_event_min * 60_000) if max_event_min is not None else end - 1
    return FeatureRow("user_5m", entity, end - 300_000, end, timing, pane, max_event, features)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/online.db"
    return redis_url


def test_write_then_read_exact_values(store_url, project):
    store = open_online_store(store_url, spec_for(project))
    assert store.write([row(), row("u2", features=(0, 0.0, None, None))]) == (2, 0)
    got = store.read("user_5m", ["u1", "u2", "nobody"])
    assert got[0] == (0, 300_000, 0, {"clicks": 5, "spend": 12.5, "avg_amount": 2.5, "last_item": "i9"})
    assert got[1].features == {"clicks": 0, "spend": 0.0, "avg_amount": None, "last_item": None}
    assert got[2] is None
    store.close()


def test_writes_are_monotonic_in_window_end_and_pane_index(store_url, project):
    store = open_online_store(store_url, spec_for(project))
    assert store.write([row(end_min=6, pane=1, features=(6, 1.0, 1.0, "new"))]).written == 1
    # an older window never overwrites a newer one, whatever its pane
    assert store.write([row(end_min=5, pane=9, features=(1, 1.0, 1.0, "old"))]) == (0, 1)
    # the same pane again (a replay) changes nothing
    assert store.write([row(end_min=6, pane=1, features=(99, 1.0, 1.0, "dup"))]) == (0, 1)
    assert store.read("user_5m", ["u1"])[0].features["clicks"] == 6
    # a later pane of the same window replaces it, nulls included
    assert store.write([row(end_min=6, pane=2, features=(7, 2.0, None, None), timing="LATE")]).written == 1
    assert store.read("user_5m", ["u1"])[0] == (60_000, 360_000, 2,
                                                 {"clicks": 7, "spend": 2.0, "avg_amount": None, "last_item": None})
    # within one batch the order of rows does not matter
    batch = [row(end_min=8, pane=0, features=(8, 0.0, None, "b")), row(end_min=7, pane=3, features=(3, 0.0, None, "a"))]
    assert store.write(batch) == (1, 1)
    assert store.read("user_5m", ["u1"])[0].features["last_item"] == "b"
    store.close()


def test_only_the_window_ending_after_the_latest_event_is_current():
    layout = layouts(spec_for("p"))["user_5m"]
    # event at 4.5 min: windows ending 5..9 contain it; the one ending at 5 is current
    assert is_current_window(row(end_min=5, max_event_min=4.5), layout)
    assert not is_current_window(row(end_min=6, max_event_min=4.5), layout)
    assert is_current_window(row(end_min=5, max_event_min=4), layout)  # boundary belongs to [4, 5)


def test_redis_layout_is_feasts_and_ttl_is_set(redis_url, project):
    store = open_online_store(redis_url, spec_for(project, ttl="1h"))
    store.write([row()])
    client = redis.Redis.from_url(redis_url)
    key = serialize_entity_key(["user_id"], ["u1"], ["string"]) + project.encode()
    stored = client.hgetall(key)
    assert stored[feature_field("user_5m", "clicks")] == encode_value(5, "int64")
    assert stored[feature_field("user_5m", "last_item")] == encode_value("i9", "string")
    assert stored[b"_ts:user_5m"] == encode_timestamp(300_000)
    window_end, pane, window_start, created = stored[b"_win:user_5m"].split(b":")  # created: write time, ms
    assert (window_end, pane, window_start) == (b"300000", b"0", b"0")
    assert abs(int(created) / 1000 - time.time()) < 60
    assert 3_590_000 < client.pttl(key) <= 3_600_000
    store.close()


def test_redis_key_shared_by_views_keeps_the_longest_expiry_and_persistence(redis_url, project):
    """One Redis key holds every view of an entity: a write never shortens another view's expiry,
    and a key a view without ttl made persistent stays persistent. Rows of several views in one
    batch each get their own compare-and-set; int64 join keys are Feast's 8-byte encoding."""
    features = [{"name": "n", "agg": "count"}]
    views = [view(name="long", features=features, ttl="60d"), view(name="short", features=features, ttl="1h"),
             view(name="forever", features=features)]
    spec = make_spec(views, project=project, entities={"user": {"join_key": "user_id", "dtype": "int64"}})
    store = open_online_store(redis_url, spec)
    client = redis.Redis.from_url(redis_url)

    def pttl(entity: int) -> int:
        return client.pttl(serialize_entity_key(["user_id"], [entity], ["int64"]) + project.encode())

    def at(view_name: str, entity: int, end_min: int = 1, pane: int = 0, n: int = 1) -> FeatureRow:
        return FeatureRow(view_name, entity, end_min * 60_000 - 60_000, end_min * 60_000, "ON_TIME", pane,
                          end_min * 60_000 - 1, (n,))

    assert store.write([at("long", 1), at("short", 1)]) == (2, 0)  # the long expiry stays
    assert 5_183_990_000 < pttl(1) <= 5_184_000_000
    assert store.write([at("short", 2), at("long", 2)]) == (2, 0)  # and a longer one extends it
    assert 5_183_990_000 < pttl(2) <= 5_184_000_000
    assert store.write([at("short", 3)]).written == 1
    assert 3_590_000 < pttl(3) <= 3_600_000
    assert store.write([at("forever", 4), at("long", 4, n=2), at("short", 4, n=3)]) == (3, 0)
    assert pttl(4) == -1
    # several views and entities in one batch: each row against its own view's stored pane
    batch = [at("long", 4, end_min=2, n=4), at("short", 4, n=9), at("forever", 5, n=5), at("short", 4, pane=1, n=6)]
    assert store.write(batch) == (3, 1)
    assert [r.features["n"] for r in (*store.read("long", [4]), *store.read("short", [4]), *store.read("forever", [5]))] \
        == [4, 6, 5]
    assert store.read("short", [1, 2, 3, 99])[3] is None and pttl(5) == -1
    client.close()
    store.close()


def test_redis_batch_over_more_views_than_one_script_call_takes(redis_url, project):
    """A view's number in a script call is one byte: a batch spanning more views is split into
    several calls, every row still compared with its own view's stored pane."""
    names = [f"v{i}" for i in range(MAX_VIEWS + 2)]
    spec = make_spec([view(name=name, features=[{"name": "n", "agg": "count"}]) for name in names], project=project)
    store = open_online_store(redis_url, spec)

    def at(name: str, n: int, pane: int = 0) -> FeatureRow:
        return FeatureRow(name, "u1", 0, 60_000, "ON_TIME", pane, 59_999, (n,))

    assert store.write([at(name, i) for i, name in enumerate(names)]) == (len(names), 0)
    batch = [at(names[-1], 100, pane=1), *(at(name, -1) for name in names), at(names[0], 101, pane=1)]
    assert store.write(batch) == (2, len(names))
    got = [store.read(name, ["u1"])[0].features["n"] for name in names]
    assert got == [101, *range(1, len(names) - 1), 100]
    store.close()


def test_sqlite_read_honours_ttl(tmp_path, project):
    store = open_online_store(f"sqlite:///{tmp_path}/o.db", spec_for(project, ttl="1s"))
    store.write([row()])
    assert store.read("user_5m", ["u1"])[0] is not None
    time.sleep(1.2)
    assert store.read("user_5m", ["u1"]) == [None]


def test_sqlite_rows_are_feasts_bytes_across_statement_batches(tmp_path, project):
    """The SQLite store writes several entities per statement: 37 entities (two full statements and
    a remainder, keys unsorted, one repeated) must give exactly one Feast row per (entity key,
    feature) with the key and Value bytes of the per-value encoders, and a later pane of some of
    them replaces only theirs."""
    import sqlite3

    path = tmp_path / "o.db"
    store = open_online_store(f"sqlite:///{path}", spec_for(project))
    names = [f["name"] for f in FEATURES]
    kinds = ["int64", "double", "double", "string"]

    def features(n: int) -> tuple:
        return (n, n / 4, None if n % 3 else -n / 8, None if n % 5 == 1 else f"i{n}")

    batch = [row(f"u{n}", pane=0, features=features(n)) for n in (*range(36, 0, -1), 40)]
    batch.append(row("u7", pane=1, features=features(700)))  # the same key later in the batch wins
    assert store.write(batch) == (38, 0)
    assert store.write([row(f"u{n}", pane=2, features=features(n + 1000)) for n in range(10, 30)]) == (20, 0)
    store.close()
    expected = {}
    for n in (*range(1, 37), 40):
        value = features(n + 1000 if 10 <= n < 30 else 700 if n == 7 else n)
        key = serialize_entity_key(["user_id"], [f"u{n}"], ["string"])
        for name, kind, v in zip(names, kinds, value):
            expected[(key, name)] = (encode_value(v, kind), None if v is None else str(v), 300)
    conn = sqlite3.connect(path)
    got = {(key, name): (value, text, event_ts) for key, name, value, text, event_ts in conn.execute(
        f'SELECT entity_key, feature_name, value, value_text, event_ts FROM "{project}_user_5m"')}
    panes = dict(conn.execute(f'SELECT entity_key, pane_index FROM "{project}__windows"'))
    conn.close()
    assert got == expected
    assert [panes[serialize_entity_key(["user_id"], [f"u{n}"], ["string"])] for n in (7, 29, 30)] == [1, 2, 0]


@pytest.mark.slow
def test_unreachable_redis_fails_clearly_without_leaking_the_password(spec=spec_for("p")):
    store = open_online_store("redis://admin:s3cret@127.0.0.1:1/0", spec)
    with pytest.raises(StoreError) as err:
        store.write([row()])
    assert "failed after 6 attempts" in str(err.value) and "s3cret" not in str(err.value)
    assert redact_url("rediss://admin:s3cret@host:6380/1") == "rediss://admin:***@host:6380/1"
    with pytest.raises(StoreError, match="unsupported URL 'mysql://u:\\*\\*\\*@h/db'"):
        open_online_store("mysql://u:pw@h/db", spec)


def _feast_read(tmp_path, project, url: str, entities: list[str]) -> dict:
    from feast.types import Float64, Int64, String

    schema = [("clicks", Int64), ("spend", Float64), ("avg_amount", Float64), ("last_item", String)]
    return feast_online(tmp_path, project, url, "user_5m", schema, entities)


def test_feast_reads_our_sqlite_store(tmp_path, project):
    path = tmp_path / "online.db"
    store = open_online_store(f"sqlite:///{path}", spec_for(project))
    store.write([row(), row("u2", features=(3, 0.0, None, None))])
    store.close()
    got = _feast_read(tmp_path, project, f"sqlite:///{path}", ["u1", "u2", "zz"])
    assert got == {"user_id": ["u1", "u2", "zz"], "clicks": [5, 3, None], "spend": [12.5, 0.0, None],
                   "avg_amount": [2.5, None, None], "last_item": ["i9", None, None]}


def test_feast_reads_our_redis_store(tmp_path, project, redis_url):
    store = open_online_store(redis_url, spec_for(project))
    store.write([row(), row("u2", features=(3, 0.0, None, None))])
    store.close()
    got = _feast_read(tmp_path, project, redis_url, ["u1", "u2", "zz"])
    assert got == {"user_id": ["u1", "u2", "zz"], "clicks": [5, 3, None], "spend": [12.5, 0.0, None],
                   "avg_amount": [2.5, None, None], "last_item": ["i9", None, None]}
