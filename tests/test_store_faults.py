"""Store faults with real servers and real locks: Redis killed and restarted in the middle of a run,
Redis gone for good, SQLite locked by another connection. Nothing may be lost, left stale, or
dropped without an error."""

from __future__ import annotations

import logging
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

import pytest
import redis

from conftest import EXAMPLE_SPEC, REPO, RedisServer, free_port
from helpers import make_spec, view
from pipelines import backfill_features
from pipelines.sample_events import generate
from transforms.io.online.base import StoreError, with_retries
from transforms.io.online.registry import open_online_store
from transforms.io.online.sqlite import SqliteOnlineStore
from transforms.records import FeatureRow, layouts
from transforms.spec import FeatureSpecFile, load_spec

# Every acknowledged write reaches the disk before the reply, so a killed server restarts with
# all of them: what the store holds afterwards can be compared with a fault-free run.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")
RETRY_LOGGER = "transforms.io.online.base"
MIN_BUDGET_S, MAX_BUDGET_S = 3.1, 6.2  # with_retries' five waits with the defaults


@pytest.fixture
def durable_redis(tmp_path):
    server = RedisServer(tmp_path, *DURABLE).start()
    yield server
    server.stop()


class RetryLog(logging.Handler):
    """Collects with_retries' warnings (FnApiRunner runs the DoFns in this process)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.times: list[float] = []
        self.messages: list[str] = []
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage():
            self.times.append(time.monotonic())
            self.messages.append(record.getMessage())
            self.first.set()

    def __enter__(self) -> "RetryLog":
        logging.getLogger(RETRY_LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(RETRY_LOGGER).removeHandler(self)


def in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as err:  # handed to the test thread
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def chain(err: Optional[BaseException]):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


# --- with_retries itself ------------------------------------------------------------------------


def test_backoff_is_exponential_jittered_bounded_and_bridges_two_seconds():
    waits: list[float] = []
    retried: list[int] = []

    def always_down():
        raise ConnectionError("down")

    for _ in range(200):
        waits.clear()
        with pytest.raises(StoreError, match=r"^db: failed after 6 attempts: down$") as err:
            with_retries(always_down, (ConnectionError,), "db", sleep=waits.append,
                         on_retry=lambda attempt, e: retried.append(attempt))
        assert isinstance(err.value.__cause__, ConnectionError)
        assert len(waits) == 5
        for n, wait in enumerate(waits):
            cap = 0.2 * 2 ** n
            assert cap / 2 <= wait <= cap
        assert MIN_BUDGET_S <= sum(waits) <= MAX_BUDGET_S
    assert retried[:5] == [1, 2, 3, 4, 5]

    # recovers as soon as the call succeeds; errors it cannot fix are not retried
    calls = iter([ConnectionError("blip"), ConnectionError("blip"), "ok"])

    def flaky():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    waits.clear()
    assert with_retries(flaky, (ConnectionError,), "db", sleep=waits.append) == "ok" and len(waits) == 2
    def refused():
        raise ConnectionError("wrong password")

    waits.clear()
    with pytest.raises(StoreError, match=r"^db: wrong password$"):
        with_retries(refused, (ConnectionError,), "db", sleep=waits.append,
                     give_up=lambda e: "password" in str(e))
    assert waits == []


# --- Redis restarted in the middle of a run ------------------------------------------------------

FEATURES = [{"name": "n", "agg": "count"}, {"name": "s", "agg": "sum", "field": "amount"}]


def two_view_spec(project: str) -> FeatureSpecFile:
    # Both views live in the same Redis hash per user: a restart must not mix them up either.
    return make_spec([
        view("u_1m", window={"type": "fixed", "size": "1m"}, features=FEATURES, ttl="1d"),
        view("u_5m", window={"type": "sliding", "size": "5m", "period": "1m"}, features=FEATURES),
    ], project=project)


def make_batches(n_batches: int = 100, per_batch: int = 30, users: int = 60, seed: int = 11):
    """Batches of current-window rows: windows move forward as batches go, panes grow within a
    window, and one row in five is an older window arriving late (the store must refuse it).
    An entity appears at most once per batch, like a sink that buffers one pane per entity."""
    rng = random.Random(seed)
    batches = []
    for b in range(n_batches):
        rows = []
        for j, user in enumerate(rng.sample(range(users), per_batch)):
            v = rng.choice(["u_1m", "u_5m"])
            end_min = 10 + b // 10 - (3 if rng.random() < 0.2 else 0)
            size = 60_000 if v == "u_1m" else 300_000
            end = end_min * 60_000
            rows.append(FeatureRow(v, f"u{user}", end - size, end, "EARLY", b % 10, end - 1,
                                   (b * 1000 + j, float(b) + j / 100)))
        batches.append(rows)
    return batches


def snapshot(store, users: int = 60) -> dict:
    return {v: store.read(v, [f"u{i}" for i in range(users)]) for v in ("u_1m", "u_5m")}


def test_redis_killed_and_restarted_mid_run_loses_nothing(durable_redis, project):
    assert redis.Redis.from_url(durable_redis.url).config_get("appendonly")["appendonly"] == "yes"
    batches = make_batches()
    reference = open_online_store(durable_redis.url, two_view_spec(project + "ref"))
    expected = [reference.write(rows) for rows in batches]

    store = open_online_store(durable_redis.url, two_view_spec(project))
    results: list = []
    halfway = threading.Event()

    def writer() -> None:
        for i, rows in enumerate(batches):
            results.append(store.write(rows))
            if i == len(batches) // 3:
                halfway.set()
            time.sleep(0.005)

    with RetryLog() as retries:
        thread, errors = in_thread(writer)
        assert halfway.wait(30)
        durable_redis.stop()  # SIGKILL, with batches still to come
        killed = time.monotonic()
        time.sleep(1.0)
        durable_redis.start()  # same port, same append-only file
        restarted = time.monotonic()
        thread.join(60)
    assert not thread.is_alive() and errors == []
    assert retries.times, "the outage never reached the writer"
    bridged = max(retries.times) - min(retries.times)
    print(f"\nRedis down {restarted - killed:.2f} s; {len(retries.times)} retries over {bridged:.2f} s")

    assert len(results) == len(batches)
    # the same rows written and refused as without the fault (a lost reply does not turn rows
    # our first attempt applied into "stale"), and the same final state, entity by entity
    assert sum(r.written for r in results) == sum(r.written for r in expected)
    assert sum(r.stale for r in results) == sum(r.stale for r in expected) > 0
    got, want = snapshot(store), snapshot(reference)
    assert all(record is not None for records in want.values() for record in records)
    assert got == want
    store.close()
    reference.close()


def test_a_lost_reply_is_retried_and_counted_once(redis_url, project, monkeypatch):
    """Redis applied the batch but the reply never arrived (the likeliest moment for a kill to
    land): the retry finds every row already stored and still reports them written, not stale."""
    store = open_online_store(redis_url, two_view_spec(project))
    real_evalsha = redis.Redis.evalsha  # one script call per batch
    replies: list = []

    def evalsha_then_lose_the_reply(self, *args, **kwargs):
        replies.append(real_evalsha(self, *args, **kwargs))
        if len(replies) == 1:
            raise redis.ConnectionError("Connection closed by server.")
        return replies[-1]

    monkeypatch.setattr(redis.Redis, "evalsha", evalsha_then_lose_the_reply)
    rows = make_batches(n_batches=1)[0]
    with RetryLog() as retries:
        assert store.write(rows) == (len(rows), 0)
    assert len(retries.times) == 1 and replies == [b"1" * len(rows), b"2" * len(rows)]
    # a genuine replay, on a first attempt, is still reported stale
    assert store.write(rows) == (0, len(rows))
    store.close()


def spec_file(tmp_path: Path, project: str) -> Path:
    path = tmp_path / f"{project}.yaml"
    path.write_text(EXAMPLE_SPEC.read_text().replace("project: shop", f"project: {project}"))
    return path


USERS, ITEMS = 20, 20


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    # Small on purpose: the faults are timed around the first write, not by the input's size.
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    lines = generate(800, seed=5, users=USERS, items=ITEMS, events_per_second=20)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def backfill(events: Path, spec_path: Path, url: str, offline: Path, preaggregate: str = "true"):
    return backfill_features.run([
        "--events", str(events), "--feature_spec", str(spec_path), "--online_store", url,
        "--offline_store", str(offline), "--runner", "FnApiRunner", "--preaggregate", preaggregate,
    ])


def counters(result) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for counter in result.metrics().query()["counters"]:
        out[f"{counter.key.metric.namespace}.{counter.key.metric.name}"] += counter.committed
    return out


def online_state(url: str, spec_path: Path) -> dict:
    spec = load_spec(spec_path)
    store = open_online_store(url, spec)
    try:
        return {
            "user_5m": store.read("user_5m", [f"u{i}" for i in range(USERS)]),
            "item_1h": store.read("item_1h", [f"i{i}" for i in range(ITEMS)]),
        }
    finally:
        store.close()


def kill_after_preflight_ping(server: RedisServer) -> Callable[[], None]:
    """Arm now (before the backfill starts); the returned function waits until the backfill's
    pre-launch ping is answered and its connection closed, then kills the server: the sink, not
    the ping, meets the outage."""
    client = redis.Redis.from_url(server.url)
    client.config_resetstat()

    def pinged_and_gone() -> bool:
        pings = client.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
        return pings >= 1 and client.info("clients")["connected_clients"] == 1  # just us

    def wait_and_kill() -> None:
        deadline = time.monotonic() + 60
        while not pinged_and_gone():
            if time.monotonic() > deadline:
                raise TimeoutError("the backfill never pinged the store")
            time.sleep(0.002)
        client.close()
        server.stop()

    return wait_and_kill


def test_backfill_bridges_a_redis_restart_and_equals_a_fault_free_run(durable_redis, tmp_path, events):
    clean_spec, faulty_spec = spec_file(tmp_path, "clean"), spec_file(tmp_path, "faulty")
    # --preaggregate false: the per-event path (one element per event and window)
    clean = backfill(events, clean_spec, durable_redis.url, tmp_path / "off_clean", "false")

    kill = kill_after_preflight_ping(durable_redis)

    def outage() -> None:
        kill()
        killed = time.monotonic()
        # down for a second at least, and until the sink has failed at least once
        assert retries.first.wait(30), "the sink never met the outage"
        time.sleep(max(0.0, killed + 1.0 - time.monotonic()) + 0.3)
        durable_redis.start()

    with RetryLog() as retries:
        thread, errors = in_thread(outage)
        faulty = backfill(events, faulty_spec, durable_redis.url, tmp_path / "off_faulty", "false")
        thread.join(30)
    assert errors == []
    got, want = counters(faulty), counters(clean)
    # the sink met the outage, retried (counted in online_store.retries) and got through
    assert got["online_store.retries"] == len(retries.times) >= 1
    for name in ("rows_written", "rows_stale_skipped", "rows_not_current_window", "batches"):
        assert got[f"online_store.{name}"] == want[f"online_store.{name}"], name
    assert got["online_store.rows_written"] > 0
    state = online_state(durable_redis.url, faulty_spec)
    assert state == online_state(durable_redis.url, clean_spec)
    assert all(record is not None for records in state.values() for record in records)


@pytest.mark.slow
def test_redis_gone_after_launch_fails_the_job_with_store_error(durable_redis, tmp_path, events):
    thread, errors = in_thread(kill_after_preflight_ping(durable_redis))
    with RetryLog() as retries, pytest.raises(Exception) as raised:
        backfill(events, spec_file(tmp_path, "gone"), durable_redis.url, tmp_path / "off")
    failed = time.monotonic()
    thread.join(10)
    assert errors == []
    store_errors = [e for e in chain(raised.value) if isinstance(e, StoreError)]
    assert store_errors, f"no StoreError in {raised.value!r}"
    assert re.search(rf"Redis redis://127\.0\.0\.1:{durable_redis.port}/0: failed after 6 attempts: "
                     r"Error 111 connecting", str(store_errors[0]))
    # five waits, then the job fails: the whole budget was spent, and no more than that
    assert len(retries.times) == 5
    print(f"\nbudget spent: {failed - retries.times[0]:.2f} s after the first failure")
    assert MIN_BUDGET_S <= failed - retries.times[0] < MAX_BUDGET_S + 3.0


@pytest.mark.slow
def test_unreachable_redis_fails_the_cli_with_one_line(tmp_path, events):
    port = free_port()  # nothing listens there
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.backfill_features", "--events", str(events),
         "--feature_spec", str(EXAMPLE_SPEC), "--online_store", f"redis://admin:hunter2@127.0.0.1:{port}/0",
         "--offline_store", str(tmp_path / "off"), "--runner", "FnApiRunner"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    errors = [line for line in lines if line.startswith("backfill_features: error:")]
    assert errors == lines[-1:], out.stderr
    assert re.fullmatch(rf"backfill_features: error: Redis redis://admin:\*\*\*@127\.0\.0\.1:{port}/0: "
                        rf"failed after 6 attempts: Error 111 connecting to 127\.0\.0\.1:{port}\. "
                        r"Connection refused\.", errors[0])
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout
    assert not (tmp_path / "off").exists()  # failed before launching anything


# --- SQLite locked by another connection ------------------------------------------------------


def sqlite_rows(entity_count: int = 20, end_min: int = 6):
    end = end_min * 60_000
    return [FeatureRow("u_1m", f"u{i}", end - 60_000, end, "ON_TIME", 0, end - 1, (i, float(i)))
            for i in range(entity_count)]


def hold_write_lock(path: str, release: threading.Event, locked: threading.Event,
                    seconds: Optional[float] = None) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    release.wait(seconds)
    conn.execute("ROLLBACK")
    conn.close()


@pytest.mark.parametrize("busy_timeout", [5.0, 0.1], ids=["busy-handler", "with-retries"])
def test_sqlite_write_waits_out_a_lock_held_for_a_second(tmp_path, project, busy_timeout):
    path = str(tmp_path / "online.db")
    spec = two_view_spec(project)
    store = SqliteOnlineStore(f"sqlite:///{path}", spec, layouts(spec), busy_timeout=busy_timeout)
    locked, release = threading.Event(), threading.Event()
    holder, errors = in_thread(lambda: hold_write_lock(path, release, locked, seconds=1.0))
    assert locked.wait(10)
    started = time.monotonic()
    with RetryLog() as retries:
        assert store.write(sqlite_rows()) == (20, 0)
    waited = time.monotonic() - started
    holder.join(10)
    assert errors == [] and 0.8 < waited < MIN_BUDGET_S
    # the default busy timeout waits inside SQLite; a short one falls back on with_retries
    assert (len(retries.times) > 0) == (busy_timeout < 1)
    assert store.read("u_1m", ["u0", "u19"])[1].features == {"n": 19, "s": 19.0}
    store.close()


@pytest.mark.slow
def test_sqlite_lock_held_past_the_budget_is_a_store_error(tmp_path, project):
    path = str(tmp_path / "online.db")
    spec = two_view_spec(project)
    store = SqliteOnlineStore(f"sqlite:///{path}", spec, layouts(spec), busy_timeout=0.1)
    locked, release = threading.Event(), threading.Event()
    holder, errors = in_thread(lambda: hold_write_lock(path, release, locked))
    assert locked.wait(10)
    started = time.monotonic()
    try:
        with RetryLog() as retries, pytest.raises(StoreError) as err:
            store.write(sqlite_rows())
    finally:
        release.set()
        holder.join(10)
    waited = time.monotonic() - started
    assert errors == [] and len(retries.times) == 5
    assert str(err.value) == f"SQLite {path}: failed after 6 attempts: database is locked"
    assert MIN_BUDGET_S < waited < MAX_BUDGET_S + 6 * 0.1 + 1.0
    # nothing half-written, and the store works again once the lock is gone
    assert store.read("u_1m", ["u0"]) == [None]
    assert store.write(sqlite_rows()).written == 20
    store.close()


def test_sqlite_errors_that_waiting_cannot_fix_are_not_retried(tmp_path, project):
    path = tmp_path / "online.db"
    spec = two_view_spec(project)
    store = SqliteOnlineStore(f"sqlite:///{path}", spec, layouts(spec))
    sqlite3.connect(path, isolation_level=None).execute(f'DROP TABLE "{project}_u_1m"')
    started = time.monotonic()
    with RetryLog() as retries, pytest.raises(StoreError, match=rf"^SQLite {path}: no such table"):
        store.write(sqlite_rows())
    assert retries.times == [] and time.monotonic() - started < 1
    store.close()
