"""Training-set throughput: 1M labels x 10 features joined as of their time with a real offline store.

    python -m benchmarks.training_bench [--labels 1000000] [--events 300000] [--feast 100000] [--json OUT]

Backfills `--events` generated shop events (pipelines/examples/shop.yaml, FnApiRunner) into a
temporary offline store, draws `--labels` random labels (users, items, times over the events'
span and an hour past it), and times `pipelines.training_set` end to end: read the labels
Parquet, read the offline store, join, write the output. `--beam RUNNER` also times the Beam variant. `--feast N` also times Feast's
get_historical_features on the first N labels through the generated repository (0: skip).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPEC = os.path.join(os.path.dirname(__file__), "..", "pipelines", "examples", "shop.yaml")
FEATURES = ["user_5m:clicks", "user_5m:spend", "user_5m:avg_amount", "user_5m:max_amount", "user_5m:last_item",
            "user_5m:items", "user_5m:p90_amount", "item_1h:views", "item_1h:purchases", "item_1h:revenue"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--feast", type=int, default=0)
    parser.add_argument("--beam", help="Also time the Beam variant on this runner (e.g. FnApiRunner, PrismRunner).")
    parser.add_argument("--json", help="Write the result here too.")
    args = parser.parse_args(argv)

    from pipelines import backfill_features
    from pipelines.sample_events import START_MS, generate
    from pipelines.training_set import main as training_main

    work = tempfile.mkdtemp(prefix="training-bench-")
    events = os.path.join(work, "events.jsonl")
    with open(events, "wb") as handle:
        for line in generate(args.events, seed=1, users=args.users, items=2000, events_per_second=200):
            handle.write(line + b"\n")
    offline = os.path.join(work, "offline")
    started = time.perf_counter()
    backfill_features.run(["--events", events, "--feature_spec", SPEC, "--online_store",
                           f"sqlite:///{work}/online.db", "--offline_store", offline, "--runner", "FnApiRunner"])
    backfill_s = time.perf_counter() - started

    rng = np.random.default_rng(2)
    span_us = int(args.events / 200 * 1e6) + 3600 * 1_000_000
    labels = pa.table({
        "user_id": pa.array([f"u{i}" for i in rng.integers(0, args.users + args.users // 20, args.labels)]),
        "item_id": pa.array([f"i{i}" for i in rng.integers(0, 2100, args.labels)]),
        "event_timestamp": pa.array(START_MS * 1000 + rng.integers(-60_000_000, span_us, args.labels),
                                    pa.timestamp("us", tz="UTC")),
        "label": pa.array(rng.integers(0, 2, args.labels)),
    })
    labels_path = os.path.join(work, "labels.parquet")
    pq.write_table(labels, labels_path)
    out = os.path.join(work, "train.parquet")
    started = time.perf_counter()
    training_main(["--feature_spec", SPEC, "--offline_store", offline, "--labels", labels_path,
                   "--features", ",".join(FEATURES), "--output", out])
    join_s = time.perf_counter() - started
    table = pq.read_table(out)
    offline_rows = sum(pq.ParquetFile(os.path.join(d, f)).metadata.num_rows
                       for d, _, fs in os.walk(offline) if "_dead_letters" not in d
                       for f in fs if f.endswith(".parquet"))
    result = {
        "labels": args.labels, "features": len(FEATURES), "offline_rows": offline_rows,
        "backfill_s": round(backfill_s, 1), "training_set_s": round(join_s, 2),
        "labels_per_s": round(args.labels / join_s),
        "non_null": {c: table.num_rows - table[c].null_count for c in table.column_names[4:6]},
    }
    if args.beam:
        started = time.perf_counter()
        training_main(["--feature_spec", SPEC, "--offline_store", offline, "--labels", labels_path,
                       "--features", ",".join(FEATURES), "--output", os.path.join(work, "train_beam"),
                       "--runner", args.beam])
        result["beam_runner"] = args.beam
        result["beam_s"] = round(time.perf_counter() - started, 1)
        beam_table = pq.read_table(os.path.join(work, "train_beam"))
        result["beam_equal"] = beam_table.equals(table)
    if args.feast:
        from feast import FeatureStore

        from pipelines.feast_repo import write_repo

        repo = os.path.join(work, "repo")
        write_repo(SPEC, f"sqlite:///{work}/online.db", offline, repo)
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "feast"), "apply"], cwd=repo,
                       check=True, capture_output=True)
        store = FeatureStore(repo_path=repo)
        entity_df = labels.slice(0, args.feast).to_pandas()
        started = time.perf_counter()
        store.get_historical_features(entity_df=entity_df, features=FEATURES).to_df()
        result["feast_labels"] = args.feast
        result["feast_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
