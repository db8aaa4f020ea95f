"""Benchmark suite for issue 6: `python -m benchmarks.run [--quick]` (`make bench`).

In one run on one machine: a seeded event set, the suite's feature spec, then each measurement
in a fresh subprocess (so peak memory is per run):
  B1  backfill events/s (FnApiRunner, --preaggregate true) at the small and large size, the event
      path (--preaggregate false) at the small size, 2 workers (multi_processing) at the large
      size, and the large size packed into the small size's time span (memory vs distinct keys)
  B2  streaming events/s on the same events: the replay (TestStream on the BundleBasedDirectRunner)
      and the files read as a stream on Prism and on Flink's mini cluster (plus a tiny run each:
      the engine's fixed start-up cost), each next to the hand-written streaming pipeline on the
      same engine; at scale (300k events) on Prism and Flink, and on Prism the streaming graph
      event at a time (--preaggregate false), for the steady rate and CPU per event
  B3  feature rows/s into Redis: ours vs redis-py pipelined vs per-row vs redis-benchmark
  training set (issue 16): pipelines.training_set on 1M labels x 10 features, Feast's
      get_historical_features on 100k of them (benchmarks/training_bench.py)
  online reads (issue 14 item 5): FeatureReader vs Feast's get_online_features from Redis, and
      one get_features CLI call (benchmarks/online_read_bench.py)
  (a) the hand-written Beam pipeline, (b) pyarrow alone and (c) DuckDB SQL, as baselines
B1 and its baselines run on two event shapes (issue 14): "plain" (the generator's epoch-ms
times, no ids, 1,000 users) and "real" (RFC 3339 times mixed with epoch ms, string ids with ~1 %
redelivered, 50,000 users, the spec with `id_field`); the outputs of (b) and (c) are
cross-checked against ours on each shape.
Writes results/results.json, results/chart.png and the results table in benchmarks/README.md
(--quick: a small smoke run into results/quick/, README untouched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks import engines, environment, report
from benchmarks.crosscheck import compare
from benchmarks.measure import load_average, run_case
from benchmarks.redis_sink import RedisServer
from benchmarks.report import SHAPES
from benchmarks.workload import (
    FIXED_VIEW,
    REAL_SPEC,
    SLIDING_VIEW,
    STREAM_EARLY_S,
    STREAM_LATENESS_S,
    STREAM_SPEC,
    EventSet,
    write_events,
    write_spec,
)

_LOG = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
# How the hand-written streaming pipeline's run time on the DirectRunner grows with its events
STREAM_GROWTH = 1.5


@dataclass(frozen=True)
class Plan:
    tiny: int = 1_000  # the fixed cost of a run: pipeline construction and runner start-up
    small: int = 100_000
    large: int = 1_000_000
    stream: int = 10_000  # the streaming DirectRunner does a few hundred events/s: keep it < ~2 min
    # B2 on Prism and Flink: a run this small is the engine's fixed cost (start-up; 0: skip)
    stream_tiny: int = 500
    # B2 on Prism and Flink at scale (issue 14 item 4): the streaming fast path's steady rate and
    # CPU per event without the start-up (0: skip), and the same graph event at a time
    # (--preaggregate false) at stream_event_path events, for the CPU per event of both; then
    # both again on a denser stream (the same users at stream_dense_rate events/s instead of 50:
    # ~30 events per user and minute instead of ~3; 0: skip)
    stream_large: int = 300_000
    stream_event_path: int = 100_000
    stream_dense_rate: float = 500.0
    # the hand-written streaming pipeline on the BundleBasedDirectRunner is several times slower
    # than ours there: it runs at this size first, and at `stream` only if that projects it under
    # handwritten_budget_s (as the batch baseline does)
    handwritten_stream_probe: int = 2_000
    handwritten_probe: int = 20_000
    handwritten: int = 100_000  # run only if the probe projects it under handwritten_budget_s
    # 2 min: the real-shaped 100k run took 209 s (its cost per event grows with the windows it
    # keeps), which would put `make bench` over 15 minutes; the probe rate is then used, which
    # flatters the hand-written pipeline (620 events/s at 20k vs 480 at 100k)
    handwritten_budget_s: float = 120.0
    redis_rows: int = 50_000
    redis_per_row_rows: int = 10_000
    redis_benchmark_requests: int = 200_000
    timeout_s: float = 600.0
    # memory on real-shaped logs (RFC 3339 times, ids, 1 % redelivered) over 20,000 users: this
    # many events, then 4x as many in the same span of event time
    real_memory: int = 500_000
    real_memory_users: int = 20_000
    # B1 on real-shaped logs (issue 14): the large count over this many users
    real_users: int = 50_000
    duckdb_threads: int = 1  # like for like with one worker and the one-thread pyarrow limit
    # issue 16 (benchmarks/training_bench.py): `training_events` shop events over `training_users`
    # users backfilled into an offline store, then pipelines.training_set on `training_labels`
    # labels x 10 features (goal: 1M in < 60 s) and Feast's get_historical_features on the first
    # `training_feast` of them (0: skip)
    training_labels: int = 1_000_000
    training_events: int = 300_000
    training_users: int = 20_000
    training_feast: int = 100_000
    # issue 14 item 5 (benchmarks/online_read_bench.py): entities written to Redis and read by
    # FeatureReader and Feast's get_online_features (goal: >= 10,000 entities/s), plus the CLI
    online_read_entities: int = 20_000


FULL = Plan()
QUICK = Plan(
    tiny=500,
    small=5_000,
    large=20_000,
    stream=500,
    stream_tiny=0,
    stream_large=0,
    stream_event_path=0,
    stream_dense_rate=0.0,
    handwritten_stream_probe=300,
    handwritten_probe=2_000,
    handwritten=5_000,
    handwritten_budget_s=30.0,
    redis_rows=5_000,
    redis_per_row_rows=1_000,
    redis_benchmark_requests=20_000,
    timeout_s=180.0,
    real_memory=10_000,
    real_memory_users=2_000,
    training_labels=20_000,
    training_events=10_000,
    training_users=2_000,
    training_feast=2_000,
    online_read_entities=2_000,
)


class Suite:
    def __init__(self, plan: Plan, workdir: Path, results_dir: Path):
        self.plan = plan
        self.workdir = workdir
        self.results_dir = results_dir
        self.spec = str(write_spec(workdir / "spec.yaml"))
        self.real_spec = str(write_spec(workdir / "spec_real.yaml", REAL_SPEC))
        self.stream_spec = str(write_spec(workdir / "spec_stream.yaml", STREAM_SPEC))
        shutil.copy(self.spec, results_dir / "spec.yaml")
        shutil.copy(self.stream_spec, results_dir / "spec_stream.yaml")
        shutil.copy(self.real_spec, results_dir / "spec_real.yaml")
        self.cases: dict[str, dict[str, Any]] = {}
        self.data: dict[str, dict[str, Any]] = {}

    def events(self, name: str, event_set: EventSet) -> dict[str, Any]:
        started = time.perf_counter()
        meta = write_events(self.workdir, event_set)
        _LOG.info(
            "event set %s: %s events, %.0f s of event time, %.1f%% out of order (%.1f s to write)",
            name,
            f"{meta['events']:,}",
            meta["span_s"],
            100 * meta["out_of_order_share"],
            time.perf_counter() - started,
        )
        self.data[name] = meta
        return meta

    def skip(self, label: str, case: str, reason: str) -> dict[str, Any]:
        """A case that cannot run here (an engine not installed): recorded, not a failure."""
        _LOG.warning("%s skipped: %s", label, reason)
        self.cases[label] = {"case": case, "ok": False, "skipped": reason, "error": f"skipped: {reason}"}
        return self.cases[label]

    def measure(self, label: str, case: str, **params: Any) -> dict[str, Any]:
        load_before = load_average()
        outcome = run_case(case, {"label": label, **params}, self.workdir, self.plan.timeout_s)
        result = {
            "case": case,
            "load_avg_before": load_before,
            "load_avg_after": load_average(),
            **outcome.as_dict(),
        }
        self.cases[label] = result
        if outcome.ok:
            rate = result.get("events_per_s")
            _LOG.info(
                "%-22s %s",
                label,
                f"{rate:,.0f} events/s in {result['elapsed_s']:.1f} s, "
                f"peak RSS {result['peak_tree_rss_mb']:.0f} MB"
                if rate
                else "done",
            )
        else:
            _LOG.error("%s failed: %s", label, outcome.error)
        return result

    def backfill(
        self,
        label: str,
        meta: dict[str, Any],
        preaggregate: str = "true",
        extra_args: Optional[list[str]] = None,
        spec: Optional[str] = None,
    ) -> dict[str, Any]:
        return self.measure(
            label,
            "backfill",
            events_path=meta["path"],
            events=meta["events"],
            spec=spec or self.spec,
            out_dir=str(self.workdir / label),
            preaggregate=preaggregate,
            extra_args=extra_args or [],
        )

    def shape_trio(self, shape: str, meta: dict[str, Any], spec: str, id_field: Optional[str]) -> None:
        """B1 at the large count with the pyarrow limit before it and DuckDB after it (back to
        back: the ratios see one machine load), all on the same file."""
        labels = SHAPES[shape]
        self.measure(labels["limit"], "arrow_limit", events_path=meta["path"], events=meta["events"],
                     out_dir=str(self.workdir / labels["limit"]), id_field=id_field)
        self.backfill(labels["ours"], meta, spec=spec)
        self.measure(labels["duckdb"], "duckdb_sql", events_path=meta["path"], events=meta["events"], spec=spec,
                     out_dir=str(self.workdir / labels["duckdb"]), threads=self.plan.duckdb_threads)

    def crosschecks(self) -> dict[str, dict[str, Any]]:
        """Per shape: ours vs the pyarrow limit (exact features) and vs DuckDB (approximate too)."""
        out: dict[str, dict[str, Any]] = {}
        for shape, labels in SHAPES.items():
            ours = self.cases.get(labels["ours"], {})
            if not ours.get("ok"):
                continue
            offline = self.workdir / labels["ours"] / "offline"
            for baseline in ("limit", "duckdb"):
                if self.cases.get(labels[baseline], {}).get("ok"):
                    out.setdefault(shape, {})[baseline] = compare(
                        offline, self.workdir / labels[baseline], judge_approx=baseline == "duckdb")
        return out

    def handwritten(self, shape: str, probe: dict[str, Any], full: EventSet, redis_url: str,
                    id_field: Optional[str]) -> None:
        """The hand-written pipeline at the probe size, then at the full size only if the probe
        projects it under the budget."""
        plan = self.plan
        probe_label, full_label = SHAPES[shape]["handwritten"][::-1]
        first = self.measure(probe_label, "handwritten", events_path=probe["path"], events=probe["events"],
                             redis_url=redis_url, id_field=id_field)
        projected = (full.events / first["events_per_s"]) if first.get("ok") else float("inf")
        if projected <= plan.handwritten_budget_s:
            meta = self.events(full_label, full)
            self.measure(full_label, "handwritten", events_path=meta["path"], events=meta["events"],
                         redis_url=redis_url, id_field=id_field)
        else:
            _LOG.info(
                "hand-written baseline (%s): %s events would take ~%.0f s (> %.0f s): using the "
                "%s-event run, per event", shape, f"{full.events:,}", projected, plan.handwritten_budget_s,
                f"{probe['events']:,}")

    def streaming(self, stream: dict[str, Any], redis_url: str) -> None:
        """B2 on each engine, then the hand-written streaming pipeline on the same engine (back
        to back: the ratio sees one machine load). Same events, same spec (STREAM_SPEC)."""
        plan = self.plan
        views = [SLIDING_VIEW, FIXED_VIEW]
        tiny = self.events("stream_tiny", EventSet(plan.stream_tiny)) if plan.stream_tiny else None
        for engine in engines.ENGINES:
            label = "b2_streaming" if engine == "direct" else f"b2_streaming_{engine}"
            hw_label = f"baseline_stream_{engine}"
            why = engines.missing(engine)
            if why:
                self.skip(label, "streaming_engine", why)
                self.skip(hw_label, "handwritten_streaming", why)
                continue
            if engine == "direct":  # the replay: TestStream, the DirectRunner's streaming source
                self.measure(label, "streaming", events_path=stream["path"], events=stream["events"],
                             spec=self.stream_spec, out_dir=str(self.workdir / label), views=views)
            else:
                if tiny:
                    self.measure(f"{label}_tiny", "streaming_engine", events_path=tiny["path"],
                                 events=tiny["events"], spec=self.stream_spec,
                                 out_dir=str(self.workdir / f"{label}_tiny"), views=views, engine=engine)
                self.measure(label, "streaming_engine", events_path=stream["path"], events=stream["events"],
                             spec=self.stream_spec, out_dir=str(self.workdir / label), views=views,
                             engine=engine)
                # (density prefix, its rate of events) x (fast path, event at a time)
                densities = [("", EventSet(0).events_per_second)]
                if plan.stream_dense_rate:
                    densities.append(("dense_", plan.stream_dense_rate))
                for prefix, rate in densities:
                    for kind, n, extra in (("large", plan.stream_large, []),
                                           ("event_path", plan.stream_event_path, ["--preaggregate", "false"])):
                        if not n:
                            continue
                        scale_label = f"{label}_{prefix}{kind}"
                        meta = self.events(report.stream_data_name(prefix, n), EventSet(n, events_per_second=rate))
                        self.measure(scale_label, "streaming_engine", events_path=meta["path"],
                                     events=meta["events"], spec=self.stream_spec,
                                     out_dir=str(self.workdir / scale_label), views=views, engine=engine,
                                     extra_args=extra)
            params = {"spec": self.stream_spec, "redis_url": redis_url, "engine": engine,
                      "early_s": STREAM_EARLY_S, "allowed_lateness_s": STREAM_LATENESS_S}
            if engine == "direct" and plan.handwritten_stream_probe < plan.stream:
                probe = self.events("handwritten_stream_probe", EventSet(plan.handwritten_stream_probe))
                first = self.measure(f"{hw_label}_probe", "handwritten_streaming", events_path=probe["path"],
                                     events=probe["events"], **params)
                # The DirectRunner's cost per event grows with the run: time ~ events^1.5 (2k
                # events in 34 s, 10k in 383 s, December 2026), not linear in events.
                projected = (first["elapsed_s"] * (plan.stream / first["events"]) ** STREAM_GROWTH
                             if first.get("ok") else float("inf"))
                if projected > plan.handwritten_budget_s:
                    _LOG.info(
                        "hand-written streaming on %s: %s events would take ~%.0f s (> %.0f s): using "
                        "the %s-event run, per event", engine, f"{plan.stream:,}", projected,
                        plan.handwritten_budget_s, f"{plan.handwritten_stream_probe:,}")
                    continue
            self.measure(hw_label, "handwritten_streaming", events_path=stream["path"],
                         events=stream["events"], **params)

    def training(self) -> dict[str, Any]:
        """Issue 16: pipelines.training_set on labels x 10 features, Feast's historical retrieval
        beside it (benchmarks/training_bench.py)."""
        plan = self.plan
        result = self.measure("training_set", "training_set", out_dir=str(self.workdir / "training_set"),
                              labels=plan.training_labels, events=plan.training_events,
                              users=plan.training_users, feast=plan.training_feast)
        if result.get("ok"):
            _LOG.info("training set: %s labels x %d features in %.2f s (%s labels/s); Feast %s labels in %s s",
                      f"{result['labels']:,}", result["features"], result["training_set_s"],
                      f"{result['labels_per_s']:,}", f"{result.get('feast_labels', 0):,}", result.get("feast_s"))
        return result

    def online_read(self, redis_url: str) -> dict[str, Any]:
        """Issue 14 item 5: FeatureReader vs Feast's get_online_features on redis_url, and one
        get_features CLI call (benchmarks/online_read_bench.py)."""
        result = self.measure("online_read", "online_read", redis_url=redis_url,
                              entities=self.plan.online_read_entities)
        if result.get("ok"):
            _LOG.info("online reads: %s; CLI call %s; goals %s",
                      {b: (v["ours_entities_per_s"], v["feast_entities_per_s"]) for b, v in result["batches"].items()},
                      result["cli_call"], result["goals"])
        return result

    def run(self) -> dict[str, Any]:
        plan = self.plan
        tiny = self.events("tiny", EventSet(plan.tiny))
        small = self.events("small", EventSet(plan.small))
        large = self.events("large", EventSet(plan.large))
        # Memory vs keys: the large count in the small set's time span (10x the events per key),
        # and twice that in the same span again (keys saturate: every user is active each minute).
        rate = EventSet(plan.small).events_per_second * plan.large / plan.small
        dense = self.events("large_dense", EventSet(plan.large, events_per_second=rate))
        dense2 = self.events("large_dense_x2", EventSet(2 * plan.large, events_per_second=2 * rate))
        stream = self.events("stream", EventSet(plan.stream))
        probe = self.events("handwritten_probe", EventSet(plan.handwritten_probe))
        real = self.events("large_real", EventSet(plan.large, users=plan.real_users, shape="real"))
        real_probe = self.events("handwritten_probe_real",
                                 EventSet(plan.handwritten_probe, users=plan.real_users, shape="real"))
        id_field = REAL_SPEC["source"]["id_field"]

        # Pairs whose ratio matters run back to back, so they see the same machine load.
        self.shape_trio("plain", large, self.spec, None)
        self.shape_trio("real", real, self.real_spec, id_field)
        self.backfill("b1_tiled_small", small)
        self.backfill("b1_tiled_tiny", tiny)
        self.backfill(
            "b1_tiled_large_2workers",
            large,
            extra_args=["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
        )
        self.backfill("b1_tiled_large_dense", dense)
        self.backfill("b1_tiled_large_dense_x2", dense2)
        self.backfill("b1_event_path_small", small, preaggregate="false")
        # peak memory follows distinct (entity, window) state, not events: 4x the events over the
        # same users and span of event time, real-shaped (ids de-duplicated, RFC 3339 times)
        span_s = 10_000
        for label, n in (("b1_real_memory", plan.real_memory), ("b1_real_memory_x4", 4 * plan.real_memory)):
            meta = self.events(label, EventSet(n, users=plan.real_memory_users, events_per_second=n / span_s,
                                               shape="real"))
            self.backfill(label, meta, spec=self.real_spec)
        with RedisServer(self.workdir) as server:
            self.streaming(stream, server.url)
        with RedisServer(self.workdir) as server:
            self.handwritten("plain", probe, EventSet(plan.handwritten), server.url, None)
            self.handwritten("real", real_probe, EventSet(plan.handwritten, users=plan.real_users, shape="real"),
                             server.url, id_field)
            self.measure(
                "b3_redis",
                "redis_sink",
                redis_url=server.url,
                redis_port=server.port,
                spec=self.spec,
                rows=plan.redis_rows,
                per_row_rows=plan.redis_per_row_rows,
                benchmark_requests=plan.redis_benchmark_requests,
            )
        self.training()
        with RedisServer(self.workdir) as server:  # a fresh, empty server, as B3's
            self.online_read(server.url)
        crosschecks = self.crosschecks()
        return {
            "plan": asdict(plan),
            "stream_trigger": {"early_s": STREAM_EARLY_S, "allowed_lateness_s": STREAM_LATENESS_S},
            "data": self.data,
            "cases": self.cases,
            # ours vs the pyarrow limit, plain shape (issue 6's check), and every check per shape
            "crosscheck": crosschecks.get("plain", {}).get("limit"),
            "crosschecks": crosschecks,
        }


def run_suite(
    quick: bool,
    results_dir: Optional[Path] = None,
    workdir: Optional[Path] = None,
    keep_data: bool = False,
    update_readme: Optional[bool] = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    results_dir = results_dir or (HERE / "results" / ("quick" if quick else ""))
    results_dir.mkdir(parents=True, exist_ok=True)
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.run" + (" --quick" if quick else "")
    info = environment.describe(command)
    _LOG.info(
        "benchmarks (%s) in %s; machine: %s cores, %s; load average %.2f",
        "quick" if quick else "full",
        workdir,
        info["nproc"],
        info["cpu_model"],
        load_average(),
    )
    try:
        measured = Suite(QUICK if quick else FULL, workdir, results_dir).run()
    finally:
        if own_workdir and not keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {"quick": quick, "environment": info, **measured}
    results["summary"] = report.summarise(results)
    results["suite_wall_s"] = round(time.perf_counter() - started, 1)
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    (results_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report.chart(results, results_dir / "chart.png")
    if update_readme if update_readme is not None else not quick:
        report.update_readme(results, HERE / "README.md")
    _LOG.info("suite took %.0f s; results in %s", results["suite_wall_s"], results_dir)
    print(report.table(results))
    return results


def run_quick() -> dict[str, Any]:
    """The --quick suite as a function (for a smoke test): raises RuntimeError if a case failed."""
    results = run_suite(quick=True)
    failed = {
        label: case.get("error")
        for label, case in results["cases"].items()
        if not case.get("ok") and not case.get("skipped")
    }
    if failed:
        raise RuntimeError(f"benchmark cases failed: {failed}")
    disagree = {
        f"{shape} vs {baseline}": check
        for shape, checks in results["crosschecks"].items()
        for baseline, check in checks.items()
        if not check["agree"]
    }
    if disagree:
        raise RuntimeError(f"the backfill's outputs disagree with a baseline's: {disagree}")
    return results


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run into results/quick/")
    parser.add_argument(
        "--workdir", type=Path, help="where event sets and outputs go (default: a temp dir)"
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the temporary work directory"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    results = run_suite(args.quick, workdir=args.workdir, keep_data=args.keep_data)
    if any(not case.get("ok") and not case.get("skipped") for case in results["cases"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
