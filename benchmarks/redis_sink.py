"""B3: feature rows into a real Redis - RedisOnlineStore against the server's and redis-py's limits.

Every variant writes the same rows (Feast layout: entity key v3 + project, 7 feature fields,
`_ts:view`, `_win:view`) to an empty database of our own redis-server:
  ours        RedisOnlineStore.write, batches of 500 (one Lua call a batch: a compare-and-set + TTL a row)
  pipelined   redis-py HSET key mapping, pipelined per 500 rows, values encoded beforehand
  pipelined_encoding  the same, encoding the Feast values inside the timed loop (like ours does)
  per_row     redis-py HSET, one round trip per row
and `redis-benchmark -P 64` HSET on the same server (single-field HSETs: the server's ceiling in
commands/s, not rows of 9 fields).
"""

from __future__ import annotations

import csv
import io
import random
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import redis

from benchmarks.workload import SLIDING_VIEW
from transforms.records import FeatureRow
from transforms.spec import FeatureSpecFile
from transforms.io.online.feast_codec import (
    encode_timestamp,
    encode_value,
    feature_field,
    serialize_entity_key,
)
from transforms.io.online.redis import REGISTRY_PREFIX, RedisOnlineStore
from transforms.records import layouts

WINDOW_END_MS = 1_767_229_200_000
Payload = tuple[bytes, dict[Any, Any]]  # key, {field: value} (bytes; Any for redis-py's stubs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a free local port (no persistence); stopped on exit."""

    def __init__(self, workdir: Path):
        if not shutil.which("redis-server"):
            raise RuntimeError(
                "redis-server is not on PATH (the B3 and baseline (a) cases need it)"
            )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "RedisServer":
        log = open(self._workdir / "redis-server.log", "wb")
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def redis_benchmark_hset(port: int, requests: int, pipeline: int = 64) -> dict[str, float]:
    """`redis-benchmark -t hset -P 64 --csv` -> {"rps": ..., "p50_latency_ms": ...}."""
    out = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            "hset",
            "-n",
            str(requests),
            "-P",
            str(pipeline),
            "-q",
            "--csv",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    for row in csv.DictReader(io.StringIO(out)):
        if row.get("test", "").upper().startswith("HSET"):
            return {k: float(v) for k, v in row.items() if k != "test"}
    raise RuntimeError(f"no HSET line in redis-benchmark output: {out!r}")


def feature_rows(spec: FeatureSpecFile, count: int, seed: int = 11) -> list[FeatureRow]:
    """`count` rows of the sliding view, one per entity, with plausible values."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        purchases = rng.random() < 0.6
        amount = round(rng.lognormvariate(3.0, 0.8), 2)
        features = (
            rng.randint(1, 400),
            amount * 3 if purchases else 0.0,
            amount if purchases else None,
            amount * 1.5 if purchases else None,
            f"i{rng.randint(0, 499)}",
            rng.randint(1, 300),
            amount * 1.2 if purchases else None,
        )
        rows.append(
            FeatureRow(
                SLIDING_VIEW,
                f"u{i}",
                WINDOW_END_MS - 300_000,
                WINDOW_END_MS,
                "ON_TIME",
                0,
                WINDOW_END_MS - 1,
                features,
            )
        )
    return rows


def hset_payloads(spec: FeatureSpecFile, rows: list[FeatureRow]) -> list[Payload]:
    """The same keys, fields and bytes RedisOnlineStore writes, for plain HSETs."""
    project = spec.project.encode()
    views = layouts(spec)
    out = []
    for row in rows:
        layout = views[row.view]
        key = serialize_entity_key([layout.join_key], [row.entity], [layout.key_dtype]) + project
        mapping = {
            f"_win:{row.view}".encode(): (
                f"{row.window_end_ms}:{row.pane_index}:{row.window_start_ms}".encode()
            ),
            f"_ts:{row.view}".encode(): encode_timestamp(row.window_end_ms),
        }
        for name, kind, value in zip(layout.feature_names, layout.value_types, row.features):
            mapping[feature_field(row.view, name)] = encode_value(value, kind)
        out.append((key, mapping))
    return out


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_ours(store: RedisOnlineStore, rows: list[FeatureRow], batch: int) -> int:
    written = 0
    for chunk in _batches(rows, batch):
        written += store.write(chunk).written
    return written


def write_pipelined(client: redis.Redis, payloads: list[Payload], batch: int) -> int:
    for chunk in _batches(payloads, batch):
        pipe = client.pipeline(transaction=False)
        for key, mapping in chunk:
            pipe.hset(key, mapping=mapping)
        pipe.execute()
    return len(payloads)


def write_pipelined_encoding(
    client: redis.Redis, spec: FeatureSpecFile, rows: list[FeatureRow], batch: int
) -> int:
    for chunk in _batches(rows, batch):
        pipe = client.pipeline(transaction=False)
        for key, mapping in hset_payloads(spec, chunk):
            pipe.hset(key, mapping=mapping)
        pipe.execute()
    return len(rows)


def write_per_row(client: redis.Redis, payloads: list[Payload]) -> int:
    for key, mapping in payloads:
        client.hset(key, mapping=mapping)
    return len(payloads)


def _timed(client: redis.Redis, write: Callable[[], int], expect_keys: int) -> float:
    """Rows/s of one write pass into an empty database (checked: every key landed)."""
    client.flushdb()
    started = time.perf_counter()
    written = write()
    elapsed = time.perf_counter() - started
    # our writer also records the project's views once, in the hash feature_pipelines:<project>
    keys = client.dbsize() - len(client.keys(f"{REGISTRY_PREFIX}*"))
    if written != expect_keys or keys != expect_keys:
        raise RuntimeError(f"wrote {written} rows, {keys} keys in Redis; expected {expect_keys}")
    return written / elapsed


def measure(
    url: str,
    port: int,
    spec: FeatureSpecFile,
    rows: int,
    per_row_rows: int,
    benchmark_requests: int,
    batch: int = 500,
    repeats: int = 3,
) -> dict[str, Any]:
    """Median rows/s of each variant over `repeats` interleaved passes, plus redis-benchmark."""
    all_rows = feature_rows(spec, rows)
    payloads = hset_payloads(spec, all_rows)
    store = RedisOnlineStore(url, spec)
    client = redis.Redis.from_url(url)
    samples: dict[str, list[float]] = {
        "ours": [],
        "pipelined": [],
        "pipelined_encoding": [],
        "per_row": [],
    }
    try:
        for _ in range(repeats):
            samples["ours"].append(_timed(client, lambda: write_ours(store, all_rows, batch), rows))
            samples["pipelined"].append(
                _timed(client, lambda: write_pipelined(client, payloads, batch), rows)
            )
            samples["pipelined_encoding"].append(
                _timed(
                    client, lambda: write_pipelined_encoding(client, spec, all_rows, batch), rows
                )
            )
            samples["per_row"].append(
                _timed(client, lambda: write_per_row(client, payloads[:per_row_rows]), per_row_rows)
            )
        client.flushdb()
        server = redis_benchmark_hset(port, benchmark_requests)
    finally:
        store.close()
        client.close()
    rates = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "rows": rows,
        "per_row_rows": per_row_rows,
        "batch": batch,
        "repeats": repeats,
        "fields_per_row": len(payloads[0][1]),
        "ours_rows_per_s": rates["ours"],
        "redis_py_pipelined_rows_per_s": rates["pipelined"],
        "redis_py_pipelined_encoding_rows_per_s": rates["pipelined_encoding"],
        "redis_py_per_row_rows_per_s": rates["per_row"],
        "redis_benchmark_hset_rps": server["rps"],
        "redis_benchmark": server,
        "samples": samples,
    }
