"""get_features and FeatureReader, the serving side: exact rows with event and created times from
SQLite and Redis, batches, refusals (a store that is not there, another spec) with exit 2 that
create nothing, and a CLI call that imports no Beam and takes well under a second of CPU."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from transforms import FeatureReader, load_spec
from transforms.io.online.base import StoreNotFoundError
from transforms.io.online.registry import open_online_store
from transforms.records import FeatureRow

ROOT = Path(__file__).resolve().parents[1]
END_MS = 1_767_225_900_000  # 2026-01-01T00:05:00Z


def write_spec(path: Path, project: str, features=("clicks", "spend")) -> Path:
    aggs = {"clicks": {"agg": "count"}, "spend": {"agg": "sum", "field": "amount"},
            "last_item": {"agg": "last", "field": "item"}}
    path.write_text(yaml.safe_dump({
        "project": project,
        "source": {"timestamp_field": "ts"},
        "entities": {"user": {"join_key": "user_id"}, "shop": {"join_key": "shop_id", "dtype": "int64"}},
        "feature_views": [
            {"name": "user_5m", "entity": "user", "window": {"type": "sliding", "size": "5m", "period": "1m"},
             "features": [{"name": f, **aggs[f]} for f in features]},
            {"name": "shop_1h", "entity": "shop", "window": {"type": "fixed", "size": "1h"},
             "features": [{"name": "clicks", "agg": "count"}]},
        ],
    }))
    return path


def fill(url: str, spec_path: Path, users: int = 2) -> None:
    store = open_online_store(url, load_spec(str(spec_path)))
    store.write([FeatureRow("user_5m", f"u{i}", END_MS - 300_000, END_MS, "ON_TIME", 0, END_MS - 1, (i, i * 1.5))
                 for i in range(users)]
                + [FeatureRow("shop_1h", "7", END_MS - 3_600_000, END_MS, "EARLY", 2, END_MS - 1, (3,))])
    store.close()


def get_features(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.get_features", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path, redis_url):
    return f"sqlite:///{tmp_path}/online.db" if request.param == "sqlite" else redis_url


def test_rows_carry_event_and_created_timestamps(store_url, tmp_path, project):
    spec = write_spec(tmp_path / "spec.yaml", project)
    before = dt.datetime.now(dt.timezone.utc)
    fill(store_url, spec)
    with FeatureReader(spec, store_url) as reader:
        hit, miss = reader.get("user_5m", ["u1", "nobody"])
        (shop,) = reader.get("shop_1h", ["7"])  # an int64 key given as text
    assert hit.features == {"clicks": 1, "spend": 1.5}
    assert hit.event_timestamp == hit.window_end == dt.datetime(2026, 1, 1, 0, 5, tzinfo=dt.timezone.utc)
    assert hit.window_start == dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.timezone.utc)
    # SQLite keeps created times in ms, Redis in our _win field: both the write's wall-clock time
    assert before - dt.timedelta(seconds=1) <= hit.created_timestamp <= dt.datetime.now(dt.timezone.utc)
    assert miss.features == {"clicks": None, "spend": None} and miss.event_timestamp is miss.created_timestamp is None
    assert (shop.entity, shop.features) == (7, {"clicks": 3})
    assert hit.to_json()["event_timestamp"] == "2026-01-01T00:05:00.000Z"


def test_the_cli_answers_json_and_tables(store_url, tmp_path, project):
    spec = write_spec(tmp_path / "spec.yaml", project)
    fill(store_url, spec)
    common = ["--feature_spec", str(spec), "--online_store", store_url, "--view", "user_5m",
              "--entity", "u1", "--entity", "nobody"]
    out = get_features(*common)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["entity"], r["event_timestamp"], r["window_start"], r["features"]) for r in rows] == [
        ("u1", "2026-01-01T00:05:00.000Z", "2026-01-01T00:00:00.000Z", {"clicks": 1, "spend": 1.5}),
        ("nobody", None, None, {"clicks": None, "spend": None})]
    assert rows[0]["created_timestamp"].endswith("Z") and rows[1]["created_timestamp"] is None
    table = get_features(*common, "--format", "table")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["entity", "event_timestamp", "created_timestamp", "clicks", "spend"]
    assert lines[1].split()[:2] == ["u1", "2026-01-01T00:05:00.000Z"] and lines[1].split()[3:] == ["1", "1.5"]
    assert lines[2].split() == ["nobody", "-", "-", "-", "-"]


def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path, project):
    spec = write_spec(tmp_path / "spec.yaml", project)
    out = get_features("--feature_spec", str(spec), "--online_store", f"sqlite:///{tmp_path}/onlin.db",
                       "--view", "user_5m", "--entity", "u1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"get_features: error: --online_store: no SQLite database at "
                                       f"'{tmp_path}/onlin.db'"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("other", ["project", "features"])
def test_a_store_written_with_another_spec_is_refused(store_url, tmp_path, project, other):
    written = write_spec(tmp_path / "written.yaml", project)
    fill(store_url, written)
    if other == "project":  # other views: Redis finds none for the project, SQLite no table
        asked = write_spec(tmp_path / "asked.yaml", project + "x")
        expected = "written with another spec? (" + ("views of" if "redis" in store_url else "projects in it")
    else:  # the same view name with other features
        asked = write_spec(tmp_path / "asked.yaml", project, features=("clicks", "last_item"))
        expected = "without feature(s) last_item: written with another spec?"
    out = get_features("--feature_spec", str(asked), "--online_store", store_url, "--view", "user_5m",
                       "--entity", "u1")
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("get_features: error: --online_store: ") and expected in line, line
    with pytest.raises(StoreNotFoundError):
        FeatureReader(asked, store_url).get("user_5m", ["u1"])


@pytest.mark.parametrize("args, message", [
    (["--view", "nope", "--entity", "u1"], "unknown view 'nope' (views: user_5m, shop_1h)"),
    (["--view", "shop_1h", "--entity", "x"], "shop_id is an int64 key (got ['x'])"),
])
def test_usage_errors_exit_2_in_one_line(tmp_path, project, args, message):
    spec = write_spec(tmp_path / "spec.yaml", project)
    fill(f"sqlite:///{tmp_path}/online.db", spec)
    out = get_features("--feature_spec", str(spec), "--online_store", f"sqlite:///{tmp_path}/online.db", *args)
    assert (out.returncode, out.stderr.splitlines()) == (2, [f"get_features: error: {message}"])


def test_an_unsupported_store_url_is_a_usage_error(tmp_path, project):
    spec = write_spec(tmp_path / "spec.yaml", project)
    out = get_features("--feature_spec", str(spec), "--online_store", "mysql://u:pw@h/db", "--view", "user_5m",
                       "--entity", "u1")
    assert out.returncode == 2 and "unsupported URL 'mysql://u:***@h/db'" in out.stderr and "pw" not in out.stderr


def test_a_cli_call_imports_no_beam_and_takes_well_under_a_second(store_url, tmp_path, project):
    spec = write_spec(tmp_path / "spec.yaml", project)
    fill(store_url, spec)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.get_features", "--feature_spec",
                          str(spec), "--online_store", store_url, "--view", "user_5m",
                          "--entity", "u1"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.returncode == 0 and json.loads(out.stdout)["features"]["clicks"] == 1
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    backend = "transforms.io.online." + ("sqlite" if store_url.startswith("sqlite") else "redis")
    assert {"pipelines.cli", "transforms.io.online.reader", backend} <= imported
    assert not {name for name in imported if name.split(".")[0] in ("apache_beam", "pyarrow", "numpy")}
    # CPU time, not wall time: the suite runs beside other load (0.2-0.3 s of CPU here)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 1.0, (cpu, wall)


def test_large_batches_equal_the_stores_own_reads(store_url, tmp_path, project):
    spec = write_spec(tmp_path / "spec.yaml", project)
    fill(store_url, spec, users=2_500)
    entities = [f"u{i}" for i in range(0, 3_000, 3)] + ["u5"] * 3  # misses and repeats across batches
    store = open_online_store(store_url, load_spec(str(spec)))
    expected = store.read("user_5m", entities)
    store.close()
    with FeatureReader(spec, store_url, batch_size=400) as reader:
        got = reader.get("user_5m", entities)
    assert [g.entity for g in got] == entities
    assert [g.features if g.event_timestamp else None for g in got] == [e.features if e else None for e in expected]
    assert sum(e is None for e in expected) == 166


def test_a_long_lived_reader_sees_a_view_written_after_it_opened(store_url, tmp_path, project):
    first, later = write_spec(tmp_path / "first.yaml", project + "a"), write_spec(tmp_path / "later.yaml", project)
    fill(store_url, first)  # the store exists, without `later`'s project
    with FeatureReader(later, store_url) as reader:
        with pytest.raises(StoreNotFoundError):
            reader.get("user_5m", ["u1"])
        fill(store_url, later)
        assert reader.get("user_5m", ["u1"])[0].features == {"clicks": 1, "spend": 1.5}
