"""`make demo`: the streaming job on embedded defaults, end to end.

Generates a realistic event stream (skewed users and items, clicks and purchases, out-of-order,
late and malformed events), replays it through `streaming_features --replay` into SQLite (online)
and Parquet (offline), shows progress, then reads features back.

On Prism (`make demo` builds it, as `make engines` does): 6,000 events (10 minutes of event
time) played in real time at 60 seconds of event time per second, start-up included 15 s (17-18 s
with the interpreter and the events' generation) on 2 cores. Processing-time triggers fire in real
seconds, so the demo's copy of the spec fires user_5m's early panes every second (shop.yaml: every
10 s, for a stream played at its own pace). It also leaves out shop.yaml's `source.id_field`: the
generated events have no redelivered copies, and per-id state is what Prism schedules slowest
(README, Engines: 23-40 s with it here). Without Prism: Beam's Python streaming engine, 1,500
events in TestStream's simulated time (~6 s), with the spec as it is.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import yaml

from pipelines import streaming_features
from pipelines.common import prism_cached
from pipelines.get_features import get_features
from pipelines.sample_events import generate, write_jsonl
from pipelines.summary import output_summary, pane_counts
from transforms.io.sinks import read_dead_letters
from transforms.spec import load_spec

SPEC = Path(__file__).parent / "examples" / "shop.yaml"
MINUTES = 10  # of event time: events up to 10 minutes late come in
PRISM_EVENTS, PYTHON_EVENTS = 6000, 1500  # Prism plays 10 minutes in 10 s; the Python engine 1,500 in ~5 s
REPLAY_SPEED = 60  # Prism: seconds of event time per second
DEMO_EARLY_EVERY = "1s"  # Prism: user_5m's early panes (a 5-minute window lasts 5 s of real time)


class Progress(threading.Thread):
    """Prints what has reached the offline store every couple of seconds while the job runs."""

    def __init__(self, offline: Path, total_events: int):
        super().__init__(daemon=True)
        self.offline = offline
        self.total = total_events
        self.done = threading.Event()
        self.started = time.time()

    def run(self) -> None:
        while not self.done.wait(3):
            panes = sum((pane_counts(str(self.offline), v) for v in ("user_5m", "item_1h")),
                        collections.Counter())
            letters = sum(1 for _ in read_dead_letters(str(self.offline / "_dead_letters")))
            print(
                f"  {time.time() - self.started:5.0f}s  panes written: {sum(panes.values()):6,} "
                f"(early {panes['EARLY']:,}, on time {panes['ON_TIME']:,}, late {panes['LATE']:,}), "
                f"dead letters: {letters}",
                flush=True,
            )


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--events", type=int, default=None,
                        help=f"events to generate (default {PRISM_EVENTS:,} on Prism, {PYTHON_EVENTS:,} without)")
    parser.add_argument("--python_engine", action="store_true",
                        help="replay on Beam's Python streaming engine even when Prism is cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    events = out / "events.jsonl"
    online = f"sqlite:///{out / 'online.db'}"
    offline = out / "offline"

    on_prism = prism_cached() and not args.python_engine
    n_events = args.events or (PRISM_EVENTS if on_prism else PYTHON_EVENTS)
    per_second = n_events / (MINUTES * 60)
    count = write_jsonl(str(events), generate(
        n_events, seed=42, users=50, items=80, events_per_second=per_second,
        out_of_order_fraction=0.05, late_fraction=0.03, late_delay_ms=600_000, malformed_every=500,
    ))
    print(f"1/3 generated {count:,} events ({count / per_second / 60:.1f} minutes of event time; 5 % out of order, "
          f"3 % up to 10 minutes late, 1 in 500 malformed) -> {events}")
    spec_path, engine_args = SPEC, ["--runner", "BundleBasedDirectRunner"]
    if on_prism:
        spec_path = out / SPEC.name
        data = yaml.safe_load(SPEC.read_text())
        # no redeliveries to remove, and per-id state is what Prism schedules slowest (docstring)
        dropped_id = data["source"].pop("id_field", None)
        for view in data["feature_views"]:
            if view.get("trigger", {}).get("early_every"):
                view["trigger"]["early_every"] = DEMO_EARLY_EVERY
        spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
        engine_args = ["--runner", "PrismRunner", "--replay_speed", str(REPLAY_SPEED)]
        without_id = f", without source.id_field {dropped_id!r}: no redeliveries" if dropped_id else ""
        print(f"2/3 replaying them through streaming_features on Prism, {REPLAY_SPEED} s of event time per "
              f"second (spec {SPEC.name}, early panes every {DEMO_EARLY_EVERY}{without_id}: {spec_path}) ...",
              flush=True)
    else:
        print(f"2/3 replaying them through streaming_features on Beam's Python streaming engine (no Prism "
              f"cached: `make engines`; spec {SPEC.name}) ...", flush=True)

    progress = Progress(offline, count)
    stats_box = {}

    def on_start(result, stats) -> None:
        stats_box["stats"] = stats
        progress.start()

    started = time.time()
    streaming_features.run([
        "--events", str(events), "--replay", "--feature_spec", str(spec_path),
        "--online_store", online, "--offline_store", str(offline), *engine_args,
    ], on_start=on_start)
    progress.done.set()
    elapsed = time.time() - started

    spec = load_spec(spec_path)
    summary = output_summary(spec, str(offline), str(offline / "_dead_letters"))
    panes = summary["panes"]
    stats = stats_box["stats"]
    print(f"3/3 done in {elapsed:.0f}s\n")

    users = [f"u{i}" for i in range(5)]
    rows = get_features(str(spec_path), online, "user_5m", users)
    names = list(spec.view("user_5m").features)
    header = ["user_id", "window (UTC)"] + [f.name for f in names]
    table = [header]
    for row in rows:
        window = f"{row['window_start'][11:16]}-{row['window_end'][11:16]}" if row["window_start"] else "-"
        table.append([row["entity"], window] + [_fmt(row["features"][f.name]) for f in names])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print("Online features (user_5m: sliding 5 min every 1 min), read back with pipelines.get_features:")
    for i, r in enumerate(table):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))

    reasons = summary["dead_letter_reasons"]
    too_late_all, too_late_some = summary["too_late_every_view"], summary["too_late_some_views"]
    print()
    print(f"Events in:        {stats.events:,}")
    print(f"  used:           {stats.events - summary['refused'] - too_late_all:,}")
    print(f"  refused:        {summary['refused']:,}  "
          f"({', '.join(f'{r} {n}' for r, n in sorted(reasons.items()) if r != 'too_late')})")
    print(f"  too late:       {too_late_all:,} for every view, {too_late_some:,} for some (dead letters, reason too_late)")
    print(f"  late on arrival:{stats.late_on_arrival:>6,}  (behind the watermark; counted in LATE panes)")
    for view, counts in panes.items():
        print(f"Panes {view + ':':9s} early {counts['EARLY']:,}, on time {counts['ON_TIME']:,}, late {counts['LATE']:,}")
    print("\nFiles:")
    print(f"  events        {events}")
    print(f"  online store  {online}   (Feast SQLite layout)")
    print(f"  offline store {offline}/<view>/date=YYYY-MM-DD/*.parquet")
    print(f"  dead letters  {offline / '_dead_letters'}/*.jsonl")
    print("\nNext: copy pipelines/examples/shop.yaml, edit it, and run pipelines.backfill_features or "
          "pipelines.streaming_features on your own events (see README).")


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main(sys.argv[1:])
