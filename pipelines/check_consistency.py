r"""Online/offline consistency: for a sample of entities, the online row against the offline store.

    python -m pipelines.check_consistency --feature_spec shop.yaml --online_store sqlite:///online.db \
        --offline_store offline/ [--sample 1000] [--seed 0] [--view user_5m]

Per view, for each sampled entity (drawn from the offline store), the online row must be
- the entity's current window (fixed: the latest window; sliding: the window ending at the first
  period boundary after its latest event, i.e. the latest window end minus size - period;
  sessions: the latest session), unless the entity expired online (ttl counted from the last write);
- equal to the offline final pane of that same window (greatest pane_index; late panes included):
  the same window start, pane index and every feature value.
Prints one line per mismatch and a summary per view; exit 0 when there is none, 1 otherwise, 2 on
a usage or spec error. Chronon measures online/offline consistency the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.records import ViewLayout
from transforms.spec import FeatureSpecFile, FeatureViewSpec, SlidingWindow, load_spec

PROGRAM = "check_consistency"


@dataclass
class ViewReport:
    view: str
    sampled: int = 0
    compared: int = 0
    expired: int = 0
    mismatches: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.view}: {self.sampled} entities sampled, {self.compared} compared, {self.expired} expired "
                f"online (ttl), {len(self.mismatches)} mismatches")


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def _plain(value: Any) -> Any:
    """Parquet maps read back as (key, value) pairs; the online store decodes them to dicts."""
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return dict(value)
    if isinstance(value, list) and not value:
        return value
    return value


def _current_end(view: FeatureViewSpec, latest_end_ms: int) -> int:
    """The window end the online store should hold, from the entity's latest offline window end."""
    if isinstance(view.window, SlidingWindow):
        return latest_end_ms - (view.window.size - view.window.period) * 1000
    return latest_end_ms


def check_view(spec: FeatureSpecFile, store, offline: str, view: FeatureViewSpec, sample: int,
               seed: int, now_ms: Optional[int] = None) -> ViewReport:
    from transforms.io.offline import read_offline

    report = ViewReport(view.name)
    layout = ViewLayout.from_view(spec, view)
    key = layout.join_key
    rows = read_offline(offline, layout)
    if rows.num_rows == 0:
        return report
    entities = pc.unique(rows[key])
    if len(entities) > sample:
        chosen = np.sort(np.random.default_rng(seed).choice(len(entities), sample, replace=False))
        entities = entities.take(pa.array(chosen))
    rows = rows.filter(pc.is_in(rows[key], value_set=entities))
    report.sampled = len(entities)
    # per (entity, window end): the final pane; per entity: the latest window end and last write
    finals: dict[tuple, dict] = {}
    latest: dict[Any, int] = {}
    written: dict[Any, int] = {}
    for row in rows.to_pylist():  # a sample: a few thousand rows
        entity, end = row[key], _ms(row["window_end"])
        if (entity, end) not in finals or row["pane_index"] > finals[(entity, end)]["pane_index"]:
            finals[(entity, end)] = row
        latest[entity] = max(latest.get(entity, end), end)
        written[entity] = max(written.get(entity, 0), _ms(row["created_timestamp"]))
    keys = entities.to_pylist()
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    for entity, online in zip(keys, store.read(view.name, keys)):
        where = f"{view.name} {key}={entity!r}"
        if online is None:
            if view.ttl and written[entity] + view.ttl * 1000 < now_ms:
                report.expired += 1
            else:
                report.mismatches.append(f"{where}: missing online (offline has windows up to "
                                         f"{dt.datetime.fromtimestamp(latest[entity] / 1000, dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ})")
            continue
        report.compared += 1
        expected_end = _current_end(view, latest[entity])
        if online.window_end_ms != expected_end:
            report.mismatches.append(f"{where}: online holds the window ending {online.window_end_ms}, the current "
                                     f"window ends {expected_end}")
            continue
        final = finals.get((entity, online.window_end_ms))
        if final is None:
            report.mismatches.append(f"{where}: online window ending {online.window_end_ms} is not offline")
            continue
        if (online.window_start_ms, online.pane_index) != (_ms(final["window_start"]), final["pane_index"]):
            report.mismatches.append(
                f"{where}: online pane (start {online.window_start_ms}, index {online.pane_index}) != offline "
                f"final pane (start {_ms(final['window_start'])}, index {final['pane_index']})")
            continue
        for name in layout.feature_names:
            got, want = _plain(online.features.get(name)), _plain(final[name])
            if got != want:
                report.mismatches.append(f"{where} window ending {online.window_end_ms}: {name} online {got!r} "
                                         f"!= offline {want!r}")
    return report


def check_consistency(spec_path: str, online_store: str, offline_store: str, sample: int = 1000,
                      seed: int = 0, views: Sequence[str] = ()) -> list[ViewReport]:
    from transforms.io.online.registry import open_online_store

    spec = load_spec(spec_path)
    chosen = [spec.view(v) for v in views] if views else list(spec.feature_views)
    store = open_online_store(online_store, spec)
    try:
        return [check_view(spec, store, offline_store, view, sample, seed) for view in chosen]
    finally:
        store.close()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{PROGRAM}", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature_spec", required=True, help="The feature spec (YAML, local or gs://).")
    parser.add_argument("--online_store", required=True, help="sqlite:///path.db or redis(s)://host:port/db")
    parser.add_argument("--offline_store", required=True, help="The offline store directory (local or gs://).")
    parser.add_argument("--sample", type=int, default=1000, help="Entities per view (default: 1000).")
    parser.add_argument("--seed", type=int, default=0, help="Of the sample (default: 0).")
    parser.add_argument("--view", action="append", default=[], help="Only these views (repeatable).")
    parser.add_argument("--verbose", action="store_true", help="On a runtime failure, print the full traceback.")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)  # --help answers here, before Beam is imported
    from pipelines.common import UsageError, run_main

    mismatches = 0

    def _main() -> None:
        nonlocal mismatches
        if args.sample < 1:
            raise UsageError(f"--sample must be at least 1 (got {args.sample})")
        for report in check_consistency(args.feature_spec, args.online_store, args.offline_store,
                                        args.sample, args.seed, args.view):
            for line in report.mismatches:
                print(f"  mismatch: {line}")
            print(report.line())
            mismatches += len(report.mismatches)

    run_main(PROGRAM, _main, argv)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
