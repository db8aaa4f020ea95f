"""Online reads: FeatureReader against Feast's own get_online_features on the same Redis, and the
time of one `get_features` call.

    python -m benchmarks.online_read_bench [--entities 20000] [--out results/online_read.json]

One redis-server of our own (or the empty one given as `run(..., redis_url=)`: `make bench`
passes one) is filled by RedisOnlineStore.write (the sliding view of the benchmark spec: 7
features, one row per entity); then, for batch sizes 100 and 1,000, both readers ask for
every entity (the same keys, the same order) and entities/s is the best of 3 passes. The values
they return are cross-checked. A CLI call is timed as a subprocess (median of 5, wall and CPU) on
Redis and on SQLite. Goals (issue 14, item 5): >= 10,000 entities/s, <= 0.3 s per CLI call.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from benchmarks.redis_sink import RedisServer, feature_rows
from benchmarks.workload import SLIDING_VIEW, SPEC
from transforms.io.online.reader import FeatureReader
from transforms.io.online.registry import open_online_store
from transforms.records import layouts
from transforms.spec import FeatureSpecFile, parse_spec

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (100, 1_000)


def fill(url: str, spec: FeatureSpecFile, entities: int) -> list[str]:
    store = open_online_store(url, spec)
    rows = feature_rows(spec, entities)
    for i in range(0, len(rows), 500):
        store.write(rows[i:i + 500])
    store.close()
    return [row.entity for row in rows]


def best_rate(read: Callable[[Sequence[str]], Any], keys: list[str], batch: int, passes: int = 3) -> float:
    """Entities/s over all keys in batches of `batch`, the best of `passes`."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for i in range(0, len(keys), batch):
            read(keys[i:i + batch])
        best = min(best, time.perf_counter() - start)
    return len(keys) / best


def feast_store(workdir: Path, spec: FeatureSpecFile, redis_url: str):
    """A Feast repository (config in code) over our Redis, with the sliding view declared."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.types import Float64, Int64, String

    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    config = RepoConfig(project=spec.project, registry=str(workdir / "registry.db"), provider="local",
                        online_store={"type": "redis", "connection_string": f"127.0.0.1:{port},db=0"},
                        offline_store={"type": "file"}, entity_key_serialization_version=3)
    store = FeatureStore(config=config)
    layout = layouts(spec)[SLIDING_VIEW]
    types = {"int64": Int64, "double": Float64, "string": String}
    user = Entity(name="user", join_keys=[layout.join_key], value_type=ValueType.STRING)
    view = FeatureView(
        name=SLIDING_VIEW, entities=[user], ttl=dt.timedelta(0), online=True,
        schema=[Field(name=n, dtype=types[t]) for n, t in zip(layout.feature_names, layout.value_types)],
        source=FileSource(path=str(workdir / "unused.parquet"), timestamp_field="event_timestamp"),
    )
    store.apply([user, view])
    refs = [f"{SLIDING_VIEW}:{name}" for name in layout.feature_names]

    def read(keys: Sequence[str]) -> dict:
        return store.get_online_features(features=refs, entity_rows=[{layout.join_key: k} for k in keys]).to_dict()

    return read


def cli_call(spec_path: Path, url: str, entity: str, runs: int = 5) -> dict[str, float]:
    """One `get_features` call as a subprocess: median wall and CPU seconds of `runs` calls after a
    first one (which compiles the project's modules: bytecode is cached as on a user's machine, even
    where PYTHONDONTWRITEBYTECODE is set)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    walls, cpus = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipelines.get_features", "--feature_spec", str(spec_path),
                        "--online_store", url, "--view", SLIDING_VIEW, "--entity", entity],
                       cwd=ROOT, check=True, capture_output=True, timeout=60, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3)}


def run(entities: int, redis_url: str | None = None) -> dict[str, Any]:
    """The measurements on `redis_url` (an empty database: `make bench` passes a fresh server of
    its own), or on a redis-server this starts."""
    spec = parse_spec(SPEC)
    layout = layouts(spec)[SLIDING_VIEW]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        url = redis_url or stack.enter_context(RedisServer(workdir)).url
        spec_path = workdir / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(SPEC))
        keys = fill(url, spec, entities)
        reader = FeatureReader(spec, url)
        feast_read = feast_store(workdir, spec, url)

        ours_rows = reader.get(SLIDING_VIEW, keys[:500])
        feast_rows = feast_read(keys[:500])
        for name in layout.feature_names:  # the same values, or the comparison means nothing
            if [r.features[name] for r in ours_rows] != feast_rows[name]:
                raise AssertionError(f"FeatureReader and Feast disagree on {name}")

        result: dict[str, Any] = {"entities": entities, "features": len(layout.feature_names), "batches": {}}
        for batch in BATCHES:
            ours = best_rate(lambda ks: reader.get(SLIDING_VIEW, ks), keys, batch)
            feast = best_rate(feast_read, keys, batch)
            result["batches"][str(batch)] = {"ours_entities_per_s": round(ours), "feast_entities_per_s": round(feast),
                                             "ratio": round(ours / feast, 2)}
        reader.close()

        sqlite_url = f"sqlite:///{workdir}/online.db"
        fill(sqlite_url, spec, 100)
        result["cli_call"] = {"redis": cli_call(spec_path, url, keys[0]),
                              "sqlite": cli_call(spec_path, sqlite_url, keys[0])}
    result["goals"] = {
        "entities_per_s>=10000": min(b["ours_entities_per_s"] for b in result["batches"].values()) >= 10_000,
        "cli_call_cpu_s<=0.3": max(c["cpu_s"] for c in result["cli_call"].values()) <= 0.3,
        "cli_call_wall_s<=0.3": max(c["wall_s"] for c in result["cli_call"].values()) <= 0.3,
    }
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.online_read_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=20_000, help="Entities written and read (default 20000).")
    parser.add_argument("--out", help="Also write the results as JSON to this file.")
    args = parser.parse_args(argv)
    result = run(args.entities)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
