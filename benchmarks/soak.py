"""Soak: publish events at a fixed rate for minutes into Pub/Sub (the in-process fake gRPC server,
or PUBSUB_EMULATOR_HOST), run streaming_features on the DirectRunner, and record throughput,
backlog (lag), memory and the runner's keyed state over time. Pass: no memory growth after the
warm-up and no backlog growth at the rate.

    python -m benchmarks.soak [--engine direct|prism|flink] [--minutes 8] [--rate 20]
                              [--warmup SECONDS] [--direct-runner-gc] [--out benchmarks/results]

`--engine prism|flink` runs the same feature pipeline (transforms.feature_pipeline.FeaturePipeline,
as streaming_features builds it, into SQLite and Parquet) on Prism or on Flink's embedded mini
cluster (`make engines`). Those cannot run Python's ReadFromPubSub, so the events come from an
unbounded source inside the pipeline instead: Beam's PeriodicImpulse ticking every second, each
tick mapped to `rate` generated JSON events of the same shape (benchmarks/soak_source.py). Memory
is then the RSS of the whole process tree (this Python process, which also hosts the LOOPBACK SDK
worker, plus the Prism binary or Flink's JVM), sampled with each part; the backlog is the events
due at the rate since the first tick minus the events the source has emitted, and the output lag
is wall-clock time minus the newest on-time window end the pipeline has emitted (it must not
grow either). Results go to soak_<engine>.json/.png.

The soak spec is the example spec with every window, the allowed lateness and the dedup horizon
shortened (`_spec`), so that the state a correct runner keeps (open windows, remembered ids)
reaches its steady size after `state_horizon_s` (the longest window + lateness). The baseline
is taken after the warm-up (default: that horizon + 60 s); samples before it are recorded but not
compared. Exits non-zero when, from the first to the last third of the samples after the
warm-up, the RSS, the Python heap (`sys.getallocatedblocks()`: free to sample, and not masked by
the ~250 MB of imported libraries that dominate the RSS) or the state values the DirectRunner
buffers for its stateful steps grow more than 10 %, or when the backlog grows over the run.

Beam's DirectRunner itself does not bound streaming state (see benchmarks/README.md, "Soak"):
it never garbage-collects a window's trigger state after window end + allowed lateness, never
drops a key's emptied state, and keeps every empty bundle of the Pub/Sub read. With
`--direct-runner-gc` the soak patches those three places (in this process only) so that it
measures our pipeline rather than the runner's leaks; the summary records the flag.

The rate is the DirectRunner's (a development runner, a few hundred events/s at best on one
core); on Dataflow the same job scales out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python benchmarks/soak.py` too
WITH_IDS = os.environ.get("SOAK_DEDUP", "1") != "0"
LATENESS_S = 30  # allowed lateness of every view in the soak spec
DEDUP_HORIZON_S = 30
PERIOD_S = 20  # sliding period; fixed windows are 3 periods long, session gaps 1 period
SETTLE_S = 60  # after the state horizon: the watermark trails the newest event, timers fire
MIN_MEASURED_S = 180  # the comparison needs at least this much time after the warm-up
MAX_GROWTH_PCT = 10
SAMPLE_EVERY_S = 5
JVM_HEAP = "1g"  # the soak's cap on Flink's job server JVM (--jvm-heap)
JVM_SAMPLE_EVERY_S = 30
FLINK_MAX_BUNDLE_S = 5.0  # the generator's bundles on Flink (benchmarks/soak_source.py: apache/beam#27648)


class SoakConfigError(ValueError):
    """Options that cannot give a meaningful soak (e.g. too short for the warm-up)."""


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _spec(path: Path) -> tuple[Path, int]:
    """The example spec with short windows, lateness and dedup horizon, so the state a streaming
    job must keep (open windows, remembered ids) reaches its steady size within the soak's
    minutes. Sliding windows keep their number of windows per event. Returns the spec's path and
    its state horizon in seconds (longest window + lateness, or the dedup horizon)."""
    from transforms.spec import parse_duration

    spec = yaml.safe_load((REPO / "pipelines" / "examples" / "shop.yaml").read_text())
    horizon = 0
    if not WITH_IDS:
        spec["source"].pop("id_field", None)
    else:
        spec["source"]["dedup_horizon"] = f"{DEDUP_HORIZON_S}s"
        horizon = DEDUP_HORIZON_S
    for view in spec["feature_views"]:
        view["allowed_lateness"] = f"{LATENESS_S}s"
        window = view["window"]
        if window["type"] == "sliding":
            per_event = parse_duration(window["size"]) // parse_duration(window["period"])
            window.update(size=f"{per_event * PERIOD_S}s", period=f"{PERIOD_S}s")
            size = per_event * PERIOD_S
        elif window["type"] == "fixed":
            size = 3 * PERIOD_S
            window["size"] = f"{size}s"
        else:  # sessions: bounded only for keys that pause longer than the gap
            size = PERIOD_S
            window["gap"] = f"{size}s"
        horizon = max(horizon, size + LATENESS_S)
    spec_path = path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return spec_path, horizon


def _runner_state(result: Any) -> dict[str, int] | None:
    """Keys and buffered state values held by the DirectRunner for its stateful steps (private
    attributes: best effort, None when unavailable)."""
    try:
        keyed_states = result._evaluation_context._transform_keyed_states
        keys = values = 0
        for states in list(keyed_states.values()):
            for state in list(states.values()):
                keys += 1
                for tags in list(state.state.values()):
                    values += sum(len(v) for v in list(tags.values()) if isinstance(v, list))
        return {"keys": keys, "values": values}
    except (AttributeError, RuntimeError, TypeError):  # another runner or Beam version; a dict resized
        return None


def patch_direct_runner() -> None:
    """Work around three places where Beam's Python DirectRunner keeps streaming state forever
    (this process only; the soak's summary records that it ran patched):

    - transforms/trigger.py GeneralTriggerDriver: no garbage collection of a window's state at
      window end + allowed lateness (Java's ReduceFnRunner sets a GC timer). With a late trigger
      the window never finishes, so in accumulating mode every element stays buffered. Patched:
      a watermark timer at end + lateness clears the window's state, timers and id.
    - runners/direct/evaluation_context.py: a key's DirectUnmergedState is never removed from
      `_transform_keyed_states`, even when empty (one per event id for de-duplication). Patched:
      emptied states are dropped when the bundle commits.
    - runners/direct/watermark_manager.py WatermarkManager._update_pending: a consumed input
      bundle leaves the pending set only if it had elements; the Pub/Sub read's "unprocessed"
      bundle (one per pull) is empty, so the root's pending set grows forever. Patched: consumed
      empty bundles are removed too.
    """
    from apache_beam.runners.direct import evaluation_context, watermark_manager
    from apache_beam.transforms import trigger
    from apache_beam.transforms.timeutil import TimeDomain
    from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP

    driver = trigger.GeneralTriggerDriver
    if getattr(driver, "_soak_patched", False):
        return
    gc_timer = "__soak_gc"
    process_elements, process_timer = driver.process_elements, driver.process_timer

    def process_elements_gc(self, state, windowed_values, output_watermark, input_watermark=MIN_TIMESTAMP):
        out = list(process_elements(self, state, windowed_values, output_watermark, input_watermark))
        windows = trigger.MergeableStateAdapter(state)
        for window in windows.known_windows():
            if window.end < MAX_TIMESTAMP:
                windows.set_timer(window, gc_timer, TimeDomain.WATERMARK, window.end + self.allowed_lateness)
        return out

    def process_timer_gc(self, window_id, name, time_domain, timestamp, state, input_watermark=None):
        if name != gc_timer:
            return process_timer(self, window_id, name, time_domain, timestamp, state, input_watermark)
        windows = trigger.MergeableStateAdapter(state)
        try:
            window = windows.get_window(window_id)
        except ValueError:
            return []
        for raw_id in windows.window_ids.pop(window, []):
            state.state.pop(raw_id, None)
            state.timers.pop(raw_id, None)
        windows._persist_window_ids()
        return []

    def is_empty(state) -> bool:
        return (not any(state.timers.values()) and not any(state.global_state.values())
                and all(not values for tags in state.state.values() for values in tags.values()))

    handle_result = evaluation_context.EvaluationContext.handle_result

    def handle_result_gc(self, completed_bundle, completed_timers, result):
        committed = handle_result(self, completed_bundle, completed_timers, result)
        with self._lock:
            existing = self._transform_keyed_states[result.transform]
            for key, state in result.partial_keyed_state.items():
                if existing.get(key) is state and is_empty(state):
                    del existing[key]
        return committed

    update_pending = watermark_manager.WatermarkManager._update_pending

    def update_pending_gc(self, input_committed_bundle, applied_ptransform, completed_timers, outputs,
                          unprocessed_bundles):
        update_pending(self, input_committed_bundle, applied_ptransform, completed_timers, outputs,
                       unprocessed_bundles)
        if input_committed_bundle is not None and not input_committed_bundle.has_elements():
            self._transform_to_watermarks[applied_ptransform].remove_pending(input_committed_bundle)

    driver.process_elements, driver.process_timer = process_elements_gc, process_timer_gc
    evaluation_context.EvaluationContext.handle_result = handle_result_gc
    watermark_manager.WatermarkManager._update_pending = update_pending_gc
    driver._soak_patched = True


def _slope_per_min(rows: list[dict], key: str) -> float:
    """Least-squares slope of rows[key] over rows['t'], per minute."""
    if len(rows) < 2:
        return 0.0
    ts = [r["t"] for r in rows]
    ys = [r[key] for r in rows]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var else 0.0


def run(minutes: float, rate: float, out: Path, warmup: float | None = None,
        direct_runner_gc: bool = False, engine: str = "direct", jvm_heap: str = JVM_HEAP) -> dict:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    spec_path, horizon = _spec(work)
    warmup = float(horizon + SETTLE_S) if warmup is None else float(warmup)
    if minutes * 60 < warmup + MIN_MEASURED_S:
        shutil.rmtree(work, ignore_errors=True)
        raise SoakConfigError(
            f"--minutes {minutes:g} leaves less than {MIN_MEASURED_S} s after the {warmup:g} s warm-up "
            f"(state horizon {horizon} s + {SETTLE_S} s): use --minutes {(warmup + MIN_MEASURED_S) / 60:.1f} "
            "or more")
    if engine != "direct":
        if direct_runner_gc:
            raise SoakConfigError("--direct-runner-gc patches the DirectRunner: only with --engine direct")
        from benchmarks.engines import missing

        why = missing(engine)
        if why:
            shutil.rmtree(work, ignore_errors=True)
            raise SoakConfigError(f"--engine {engine}: {why}")
        return _run_portable(engine, minutes, rate, out, warmup, horizon, work, spec_path, jvm_heap)
    sys.path.insert(0, str(REPO / "tests"))
    from google.cloud import pubsub_v1

    from pipelines import streaming_features

    if direct_runner_gc:
        patch_direct_runner()

    server = None
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        from pubsub_fake import FakePubSubServer

        server = FakePubSubServer(record=False)  # the fake lives in this process: keep it flat
        server.start()
        server.set_emulator_env()
    topic = f"projects/soak-project/topics/events-{uuid.uuid4().hex[:6]}"
    subscription = f"projects/soak-project/subscriptions/soak-{uuid.uuid4().hex[:6]}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)

    result = streaming_features.run([
        "--input_subscription", subscription, "--feature_spec", str(spec_path),
        "--online_store", f"sqlite:///{work}/online.db", "--offline_store", str(work / "offline"),
        "--runner", "BundleBasedDirectRunner",
    ], wait=False)

    stop = threading.Event()
    published = [0]

    def publish() -> None:
        rng = random.Random(1)
        started = time.time()
        while not stop.is_set():
            due = int((time.time() - started) * rate)
            while published[0] < due:
                record = {"event_id": f"e{published[0]}", "event_time": int(time.time() * 1000),
                          "user_id": f"u{int(rng.paretovariate(1.2)) % 500}", "item_id": f"i{rng.randrange(300)}",
                          "event_type": rng.choice(["view", "view", "click", "purchase"]),
                          "amount": round(rng.uniform(1, 100), 2)}
                publisher.publish(topic, json.dumps(record).encode())
                published[0] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    samples = []
    started = time.time()
    try:
        while time.time() - started < minutes * 60:
            time.sleep(5)
            backlog = server.backlog(subscription) if server else None
            consumed = published[0] - (backlog or 0)
            sample = {"t": round(time.time() - started, 1), "published": published[0],
                      "backlog": backlog, "consumed": consumed, "rss_mb": round(rss_mb(), 1),
                      "heap_kblocks": round(sys.getallocatedblocks() / 1000, 1)}
            state = _runner_state(result)
            if state is not None:
                sample["state_keys"], sample["state_values"] = state["keys"], state["values"]
            samples.append(sample)
            print(f"  {samples[-1]}", flush=True)
    finally:
        stop.set()
        result.cancel()
        if server:
            server.stop()
    summary = summarize(samples, minutes, rate, warmup, horizon, backlog_known=server is not None)
    summary["direct_runner_gc"] = direct_runner_gc
    summary["engine"] = "direct"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(summary, indent=2))
    _chart(summary, out / "soak.png")
    return summary


def _process_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _process_tree(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of `pid` and all its descendants."""
    from benchmarks.measure import children

    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/comm") as handle:
                out.append((current, handle.read().strip()))
        except OSError:
            continue
        stack += children(current)
    return out


def _jvm_heap_mb(pid: int) -> dict[str, float] | None:
    """Used heap of a JVM (`jstat -gc`: eden + survivors + old generation) and of its old
    generation, in MB; None when jstat is missing or fails."""
    jstat = shutil.which("jstat")
    if not jstat:
        return None
    try:
        lines = subprocess.run([jstat, "-gc", str(pid)], capture_output=True, text=True, check=False,
                               timeout=20).stdout.split("\n")
        values = dict(zip(lines[0].split(), (float(v) for v in lines[1].split())))
        used = sum(values[k] for k in ("S0U", "S1U", "EU", "OU"))
        return {"used": round(used / 1024, 1), "old": round(values["OU"] / 1024, 1),
                "committed": round(sum(values[k] for k in ("S0C", "S1C", "EC", "OC")) / 1024, 1)}
    except (OSError, subprocess.SubprocessError, IndexError, KeyError, ValueError):
        return None


def _run_portable(engine: str, minutes: float, rate: float, out: Path, warmup: float, horizon: int,
                  work: Path, spec_path: Path, jvm_heap: str = JVM_HEAP) -> dict:
    """The soak on Prism or Flink: generated events (PeriodicImpulse) -> FeaturePipeline."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from benchmarks import soak_source
    from benchmarks.engines import runner_args
    from pipelines.common import check_online_store
    from transforms.feature_pipeline import FeaturePipeline, WriteFeatures
    from transforms.spec import load_spec

    spec = load_spec(spec_path)
    online, offline = f"sqlite:///{work}/online.db", str(work / "offline")
    check_online_store(online, spec)
    soak_source.reset()
    args = runner_args(engine) + ["--streaming"]
    if engine == "flink" and jvm_heap:
        # Without a cap the JVM's heap may grow to a quarter of the machine's memory before it
        # needs to collect, which is not a leak: with one, growth beyond it would be.
        args.append(f"--job_server_jvm_properties=-Xmx{jvm_heap}")
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    outputs = (
        pipeline
        | "Generate events" >> soak_source.GeneratedEvents(rate, max_bundle_s=FLINK_MAX_BUNDLE_S if engine == "flink" else 0.0)
        # as streaming_features builds it for a live source (Pub/Sub): wall-clock lateness guard
        | "Features" >> FeaturePipeline(spec, clock="wall")
    )
    outputs | "Write" >> WriteFeatures(spec, online, offline, dead_letter=offline + "/_dead_letters")
    outputs.rows | "Tally rows" >> beam.ParDo(soak_source.TallyRows())

    me = os.getpid()
    started = time.time()
    result = pipeline.run()  # portable runners return once the job is submitted
    samples: list[dict] = []
    jvm: dict[str, float] | None = None
    jvm_sampled = 0.0
    try:
        while time.time() - started < minutes * 60:
            time.sleep(SAMPLE_EVERY_S)
            now = time.time()
            tally = soak_source.snapshot()
            due = int((now - tally["first_tick_s"]) * rate) if tally["first_tick_s"] else 0
            tree = _process_tree(me)
            parts: dict[str, float] = {}
            for pid, name in tree:
                key = "python" if pid == me else "prism" if name.startswith("apache_beam") else name
                parts[key] = parts.get(key, 0.0) + _process_rss_mb(pid)
            python_mb = parts.pop("python", 0.0)
            java = [pid for pid, name in tree if name == "java"]
            if java and now - jvm_sampled >= JVM_SAMPLE_EVERY_S:  # jstat starts a JVM: not every 5 s
                jvm, jvm_sampled = _jvm_heap_mb(java[0]), now
            newest = tally["newest_on_time_end_ms"]
            sample = {
                "t": round(now - started, 1), "published": due, "consumed": tally["generated"],
                "backlog": max(0, due - tally["generated"]),
                "rss_mb": round(python_mb + sum(parts.values()), 1),  # the whole process tree
                "python_rss_mb": round(python_mb, 1),
                "engine_rss_mb": {name: round(mb, 1) for name, mb in sorted(parts.items())},
                "heap_kblocks": round(sys.getallocatedblocks() / 1000, 1),
                **({"jvm_heap_used_mb": jvm["used"], "jvm_old_gen_mb": jvm["old"],
                    "jvm_heap_committed_mb": jvm["committed"]} if jvm else {}),
                "rows": tally["rows"],
                "output_lag_s": round(now - newest / 1000, 1) if newest else None,
                "state": str(result.state),
            }
            samples.append(sample)
            print(f"  {sample}", flush=True)
            if beam.runners.runner.PipelineState.is_terminal(result.state):
                raise RuntimeError(f"the {engine} job ended early: {result.state}")
    finally:
        try:
            result.cancel()
        except Exception as err:  # already ended, or the job service is gone
            print(f"  cancel: {err}", flush=True)
    # the samples before the source's first tick (engine start-up) are not the steady run, and
    # the state horizon counts from the first event: the warm-up starts there
    running = [s for s in samples if s["consumed"] > 0] or samples
    startup_s = running[0]["t"] - SAMPLE_EVERY_S if len(running) < len(samples) else 0.0
    warmup += startup_s
    summary = summarize(running, minutes, rate, warmup, horizon, backlog_known=True)
    summary["engine"] = engine
    summary["direct_runner_gc"] = False
    summary["startup_s"] = round(startup_s, 1)
    summary["jvm_max_heap"] = jvm_heap if engine == "flink" else None
    measured = [s for s in running if s["t"] >= warmup]
    for key in ("python_rss_mb", "jvm_heap_used_mb", "jvm_old_gen_mb"):
        rows = [s for s in measured if s.get(key) is not None]
        if len(rows) >= 2:
            third = max(1, len(rows) // 3)
            summary[f"{key}_first_last_third"] = [round(sum(r[key] for r in rows[:third]) / third, 1),
                                                  round(sum(r[key] for r in rows[-third:]) / third, 1)]
    engine_parts = sorted({n for s in measured for n in s["engine_rss_mb"]})
    if measured and engine_parts:
        third = max(1, len(measured) // 3)
        summary["engine_rss_mb_first_last_third"] = {
            n: [round(sum(s["engine_rss_mb"].get(n, 0.0) for s in measured[:third]) / third, 1),
                round(sum(s["engine_rss_mb"].get(n, 0.0) for s in measured[-third:]) / third, 1)]
            for n in engine_parts}
    lagged = [s for s in running if s["t"] >= warmup and s["output_lag_s"] is not None]
    if lagged:
        third = max(1, len(lagged) // 3)
        first = sum(s["output_lag_s"] for s in lagged[:third]) / third
        last = sum(s["output_lag_s"] for s in lagged[-third:]) / third
        summary["output_lag_first_third_s"], summary["output_lag_last_third_s"] = round(first, 1), round(last, 1)
        # not growing: within one state horizon (window + lateness) of the first third
        summary["output_lag_ok"] = last <= first + horizon
    else:
        summary["output_lag_ok"] = False  # nothing came out after the warm-up
    summary["passed"] = summary["passed"] and summary["output_lag_ok"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"soak_{engine}.json").write_text(json.dumps(summary, indent=2))
    _chart(summary, out / f"soak_{engine}.png")
    shutil.rmtree(work, ignore_errors=True)
    return summary


def summarize(samples: list[dict], minutes: float, rate: float, warmup: float, horizon: int,
              backlog_known: bool = True) -> dict:
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
    growth = lambda first, last: round(100 * (last / first - 1), 1)
    measured = [s for s in samples if s["t"] >= warmup] or samples[-1:]
    third = max(1, len(measured) // 3)
    first, last = measured[:third], measured[-third:]
    run_third = max(1, len(samples) // 3)
    run_first, run_last = samples[:run_third], samples[-run_third:]
    duration = samples[-1]["t"] - samples[0]["t"] if len(samples) > 1 else 1
    summary = {
        "minutes": minutes, "target_rate": rate, "state_horizon_s": horizon, "warmup_s": warmup,
        "throughput_eps": round((samples[-1]["consumed"] - samples[0]["consumed"]) / duration, 1),
        # memory: samples after the warm-up, first third vs last third
        "rss_first_third_mb": round(mean(first, "rss_mb"), 1), "rss_last_third_mb": round(mean(last, "rss_mb"), 1),
        "rss_slope_mb_per_min": round(_slope_per_min(measured, "rss_mb"), 2),
        "heap_first_third_kblocks": round(mean(first, "heap_kblocks"), 1),
        "heap_last_third_kblocks": round(mean(last, "heap_kblocks"), 1),
        "heap_slope_kblocks_per_min": round(_slope_per_min(measured, "heap_kblocks"), 1),
        # backlog: the whole run, as the runner may fall behind during the warm-up too
        "backlog_first_third": mean(run_first, "backlog") if backlog_known else None,
        "backlog_last_third": mean(run_last, "backlog") if backlog_known else None,
        "samples": samples,
    }
    state_known = all("state_values" in s for s in first + last)
    if state_known:
        summary["runner_state_first_third"] = {k: round(mean(first, f"state_{k}")) for k in ("keys", "values")}
        summary["runner_state_last_third"] = {k: round(mean(last, f"state_{k}")) for k in ("keys", "values")}
        summary["state_growth_pct"] = growth(max(1, summary["runner_state_first_third"]["values"]),
                                             max(1, summary["runner_state_last_third"]["values"]))
    summary["memory_growth_pct"] = growth(summary["rss_first_third_mb"], summary["rss_last_third_mb"])
    summary["heap_growth_pct"] = growth(summary["heap_first_third_kblocks"], summary["heap_last_third_kblocks"])
    if backlog_known:
        summary["lag_seconds_last_third"] = round(summary["backlog_last_third"] / rate, 2)
    # Pass: after the warm-up, RSS, Python heap and the runner's buffered state values flat
    # (<= 10 % from the first to the last third; state only when the runner exposes it), and
    # the backlog not growing (last third of the run within 5 seconds' worth of events of the
    # first).
    summary["memory_ok"] = (summary["memory_growth_pct"] <= MAX_GROWTH_PCT
                            and summary["heap_growth_pct"] <= MAX_GROWTH_PCT)
    summary["state_ok"] = (not state_known) or summary["state_growth_pct"] <= MAX_GROWTH_PCT
    summary["backlog_ok"] = (not backlog_known) or (
        summary["backlog_last_third"] <= summary["backlog_first_third"] + 5 * rate)
    summary["passed"] = summary["memory_ok"] and summary["state_ok"] and summary["backlog_ok"]
    return summary


def _chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = summary["samples"]
    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(t, [s["consumed"] for s in samples], label="consumed")
    axes[0].plot(t, [s["published"] for s in samples], label="published", linestyle="--")
    axes[0].set_ylabel("events")
    axes[0].legend()
    axes[1].plot(t, [s["backlog"] or 0 for s in samples], color="tab:red")
    axes[1].set_ylabel("backlog (events)")
    tree = "python_rss_mb" in samples[0]
    axes[2].plot(t, [s["rss_mb"] for s in samples], color="tab:green",
                 label="all processes" if tree else "RSS")
    if tree:
        axes[2].plot(t, [s["python_rss_mb"] for s in samples], color="tab:olive", linestyle="--",
                     label="Python (pipeline + SDK worker)")
        for name in sorted({n for s in samples for n in s["engine_rss_mb"]}):
            axes[2].plot(t, [s["engine_rss_mb"].get(name, 0.0) for s in samples], linestyle=":", label=name)
        jvm = [(s["t"], s["jvm_heap_used_mb"]) for s in samples if s.get("jvm_heap_used_mb") is not None]
        if jvm:
            axes[2].plot([x for x, _ in jvm], [y for _, y in jvm], color="tab:brown", linestyle="-.",
                         label="JVM heap used (jstat)")
        axes[2].legend(fontsize=7)
    axes[2].set_ylabel("RSS (MB)")
    axes[3].plot(t, [s["heap_kblocks"] for s in samples], color="tab:purple", label="Python heap (k blocks)")
    if all("state_values" in s for s in samples):
        twin = axes[3].twinx()
        twin.plot(t, [s["state_values"] / 1000 for s in samples], color="tab:gray", linestyle=":",
                  label="runner state (k values)")
        twin.set_ylabel("state (k values)")
    axes[3].set_ylabel("heap (k blocks)")
    axes[3].set_xlabel("seconds")
    for ax in axes[1:]:
        ax.axvline(summary["warmup_s"], color="black", linewidth=0.8, linestyle="--")
    patched = ", DirectRunner patched (--direct-runner-gc)" if summary.get("direct_runner_gc") else ""
    engine = {"direct": "BundleBasedDirectRunner", "prism": "Prism", "flink": "Flink mini cluster"}.get(
        summary.get("engine", "direct"), summary.get("engine"))
    fig.suptitle(f"Soak on {engine}: {summary['target_rate']:.0f} events/s for {summary['minutes']} min{patched}\n"
                 f"after {summary['warmup_s']:.0f} s warm-up: RSS {summary['memory_growth_pct']:+} %, "
                 f"Python heap {summary['heap_growth_pct']:+} %, runner state "
                 + (f"{summary['state_growth_pct']:+} %" if "state_growth_pct" in summary else "n/a"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["direct", "prism", "flink"], default="direct",
                        help="direct: Pub/Sub on the BundleBasedDirectRunner; prism/flink: a generated "
                             "unbounded source (PeriodicImpulse) on Prism or Flink's mini cluster")
    parser.add_argument("--minutes", type=float, default=8)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the memory baseline (default: state horizon + 60 s)")
    parser.add_argument("--direct-runner-gc", action="store_true",
                        help="patch the DirectRunner's known state leaks (see the module docstring)")
    parser.add_argument("--jvm-heap", default=JVM_HEAP,
                        help="--engine flink: the job server JVM's -Xmx (it hosts the mini cluster); "
                             "'' for the JVM's default (a quarter of the machine's memory)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    try:
        summary = run(args.minutes, args.rate, Path(args.out), args.warmup, args.direct_runner_gc, args.engine,
                      args.jvm_heap)
    except SoakConfigError as err:
        parser.error(str(err))
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
