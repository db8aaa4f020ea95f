"""One benchmark case per fresh process: `python -m benchmarks.cases CASE --params JSON --out FILE`.

Run by benchmarks.measure (which measures the process from outside). Each case times only its
own work - pipeline construction, runner start-up and the run - not interpreter start-up or
imports, and writes what it measured as JSON to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Callable

_CASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc/self/status, in MB.

    Not ru_maxrss: Linux carries the parent's RSS high-water mark at fork over the exec into the
    child's ru_maxrss, so a child of a big parent reports the parent's peak. VmHWM belongs to the
    address space exec created.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def case(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    _CASES[fn.__name__] = fn
    return fn


_TICK = os.sysconf("SC_CLK_TCK")


def live_descendants_cpu_s(pid: int) -> float:
    """User + system CPU of the live descendants of `pid` (and what they reaped): the Prism
    binary and Flink's Java job server outlive the run (Beam stops them at interpreter exit), so
    RUSAGE_CHILDREN, which counts reaped children only, does not see them."""
    from benchmarks.measure import children

    total, stack = 0, children(pid)
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
        stack += children(current)
    return total / _TICK


class _Clock:
    """Wall and CPU time of a block; CPU includes child processes, reaped (SDK workers) or still
    running (the Prism binary, Flink's job server and mini cluster)."""

    def __enter__(self) -> "_Clock":
        self.rss_before_mb = memory_mb("VmRSS")
        self._children = self._children_cpu()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.elapsed_s = time.perf_counter() - self._wall
        self.cpu_self_s = time.process_time() - self._cpu
        self.cpu_children_s = self._children_cpu() - self._children
        self.cpu_s = self.cpu_self_s + self.cpu_children_s

    @staticmethod
    def _children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime + live_descendants_cpu_s(os.getpid())

    def as_dict(self, events: int) -> dict[str, Any]:
        return {
            "events": events,
            "elapsed_s": round(self.elapsed_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            # this process (the pipeline's Python side under LOOPBACK) and its descendants
            # (SDK worker processes, the Prism binary, Flink's JVM)
            "cpu_self_s": round(self.cpu_self_s, 3),
            "cpu_children_s": round(self.cpu_children_s, 3),
            "events_per_s": round(events / self.elapsed_s, 1),
            "cpu_events_per_s": round(events / self.cpu_s, 1) if self.cpu_s else None,
            "rss_before_run_mb": round(self.rss_before_mb, 1),
        }


def _counters(result: Any) -> dict[str, int]:
    from pipelines.common import report

    return report(result, out=io.StringIO())


@case
def backfill(p: dict[str, Any]) -> dict[str, Any]:
    """pipelines.backfill_features.run on FnApiRunner: parse, windows, features, SQLite, Parquet."""
    from pipelines.backfill_features import run

    out = Path(p["out_dir"])
    argv = _store_args(p, out) + ["--runner", "FnApiRunner", "--preaggregate", p["preaggregate"]] + p.get(
        "extra_args", [])
    with _Clock() as clock:
        result = run(argv)
    return {**clock.as_dict(p["events"]), "argv": argv, "counters": _counters(result)}


def _store_args(p: dict[str, Any], out: Path) -> list[str]:
    """The pipeline flags every B1/B2 case shares: its events, spec and stores under out."""
    return ["--events", p["events_path"], "--feature_spec", p["spec"],
            "--online_store", f"sqlite:///{out / 'online.db'}", "--offline_store", str(out / "offline")]


def _panes(offline: Path, views: list[str]) -> dict[str, dict[str, int]]:
    from pipelines.summary import pane_counts

    return {view: dict(pane_counts(str(offline), view)) for view in views}


@case
def streaming(p: dict[str, Any]) -> dict[str, Any]:
    """pipelines.streaming_features.run --replay (TestStream on the BundleBasedDirectRunner)."""
    from pipelines.streaming_features import run

    out = Path(p["out_dir"])
    argv = _store_args(p, out) + ["--replay", "--runner", "BundleBasedDirectRunner"]
    with _Clock() as clock:
        run(argv)
    return {**clock.as_dict(p["events"]), "argv": argv, "engine": "direct",
            "panes": _panes(out / "offline", p["views"])}


@case
def streaming_engine(p: dict[str, Any]) -> dict[str, Any]:
    """pipelines.streaming_features.run --events (files read as a stream) on Prism or Flink."""
    from benchmarks.engines import runner_args
    from pipelines.streaming_features import run

    out = Path(p["out_dir"])
    argv = _store_args(p, out) + ["--streaming", *runner_args(p["engine"]), *p.get("extra_args", [])]
    with _Clock() as clock:
        result = run(argv)
    try:
        counters = _counters(result)
    except Exception as err:  # metrics are a nicety here; the panes are read from the files
        counters = {"error": str(err)}
    return {**clock.as_dict(p["events"]), "argv": argv, "engine": p["engine"],
            "panes": _panes(out / "offline", p["views"]), "counters": counters}


@case
def handwritten_streaming(p: dict[str, Any]) -> dict[str, Any]:
    """Baseline (a), streaming: the same windows with AfterWatermark(early, late) triggers, on
    the BundleBasedDirectRunner (a TestStream of the lines: the replay ours uses), Prism or Flink
    (ReadFromText read as a stream). One HSET per pane's row."""
    import apache_beam as beam

    from benchmarks import handwritten
    from benchmarks.engines import runner_args
    from transforms.parse import ParsePlan
    from transforms.spec import load_spec
    from transforms.streaming.replay import build_replay, read_lines

    class ReplayLines(beam.PTransform):
        """The lines of the file as the replay plays them (TestStream; same watermark steps and
        processing time as ours), without the replay's clock."""

        def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
            stream, _ = build_replay(read_lines(p["events_path"]), ParsePlan.from_spec(load_spec(p["spec"])))
            return pbegin | "Replay" >> stream | "Line" >> beam.Map(lambda pair: pair[0])

    with _Clock() as clock:
        result = handwritten.run_streaming(
            p["events_path"],
            p["redis_url"],
            runner_args(p["engine"]),
            p["early_s"],
            p["allowed_lateness_s"],
            lines=ReplayLines() if p["engine"] == "direct" else None,
        )
    panes: dict[str, dict[str, int]] = {}
    for (view, timing), count in sorted(handwritten.PANES.items()):
        panes.setdefault(view, {})[timing] = count
    try:
        counters = _counters(result)
    except Exception as err:
        counters = {"error": str(err)}
    return {**clock.as_dict(p["events"]), "engine": p["engine"], "panes": panes, "counters": counters}


@case
def handwritten(p: dict[str, Any]) -> dict[str, Any]:
    """Baseline (a): built-in combiners per feature, CoGroupByKey, one HSET per row."""
    from benchmarks.handwritten import run

    with _Clock() as clock:
        result = run(p["events_path"], p["redis_url"], id_field=p.get("id_field"))
    return {**clock.as_dict(p["events"]), "counters": _counters(result)}


@case
def arrow_limit(p: dict[str, Any]) -> dict[str, Any]:
    """Baseline (b): pyarrow alone, one thread."""
    import pyarrow

    pyarrow.set_cpu_count(1)
    pyarrow.set_io_thread_count(1)
    from benchmarks.arrow_limit import run

    with _Clock() as clock:
        rows = run(p["events_path"], Path(p["out_dir"]), p.get("id_field"))
    return {**clock.as_dict(p["events"]), "rows": rows}


@case
def duckdb_sql(p: dict[str, Any]) -> dict[str, Any]:
    """Baseline (c): DuckDB, the spec's views in SQL over the same file, `threads` threads."""
    import duckdb
    import yaml

    from benchmarks.duckdb_baseline import run

    spec = yaml.safe_load(Path(p["spec"]).read_text(encoding="utf-8"))
    with _Clock() as clock:
        rows = run(p["events_path"], spec, Path(p["out_dir"]), p["threads"])
    return {**clock.as_dict(p["events"]), "rows": rows, "threads": p["threads"], "duckdb": duckdb.__version__}


@case
def redis_sink(p: dict[str, Any]) -> dict[str, Any]:
    """B3: RedisOnlineStore.write vs redis-py and redis-benchmark on the same server."""
    from benchmarks.redis_sink import measure
    from transforms.spec import load_spec

    return measure(
        p["redis_url"],
        p["redis_port"],
        load_spec(p["spec"]),
        p["rows"],
        p["per_row_rows"],
        p["benchmark_requests"],
    )


@case
def training_set(p: dict[str, Any]) -> dict[str, Any]:
    """Issue 16: benchmarks.training_bench - backfill shop events into an offline store, then
    `pipelines.training_set` on `labels` random labels x 10 features (timed end to end: read the
    labels, read the store, join, write), and Feast's get_historical_features on the first
    `feast` labels through the generated repository."""
    import tempfile

    from benchmarks import training_bench

    out = Path(p["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(out)  # its work directory (events, store, labels) goes with the suite's
    argv = ["--labels", str(p["labels"]), "--events", str(p["events"]), "--users", str(p["users"]),
            "--feast", str(p["feast"])]
    with _Clock() as clock:
        result = training_bench.main(argv)
    return {**result, "argv": argv, "shop_events": p["events"], "shop_users": p["users"],
            "case_elapsed_s": round(clock.elapsed_s, 3), "case_cpu_s": round(clock.cpu_s, 3)}


@case
def online_read(p: dict[str, Any]) -> dict[str, Any]:
    """Issue 14 item 5: benchmarks.online_read_bench - FeatureReader vs Feast's
    get_online_features on the suite's redis-server, and one `get_features` CLI call."""
    from benchmarks import online_read_bench

    with _Clock() as clock:
        result = online_read_bench.run(p["entities"], redis_url=p["redis_url"])
    return {**result, "case_elapsed_s": round(clock.elapsed_s, 3), "case_cpu_s": round(clock.cpu_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(_CASES))
    parser.add_argument("--params", required=True, help="JSON object of the case's parameters")
    parser.add_argument("--out", required=True, help="where to write the case's JSON result")
    args = parser.parse_args()
    result = _CASES[args.case](json.loads(args.params))
    result["peak_rss_mb"] = round(memory_mb("VmHWM"), 1)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
