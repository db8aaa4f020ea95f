"""Counts read back from a local run's outputs (Beam's DirectRunner under-reports streaming metrics)."""

from __future__ import annotations

import collections
import os
from typing import Optional

import pyarrow.dataset as ds

from transforms.io.sinks import read_dead_letters
from transforms.spec import FeatureSpecFile


def pane_counts(offline: str, view: str) -> collections.Counter:
    """Rows per pane timing in OFFLINE/<view> (empty when nothing was written yet)."""
    counts: collections.Counter = collections.Counter()
    path = os.path.join(offline, view)
    if not os.path.isdir(path):
        return counts
    try:
        table = ds.dataset(path, partitioning="hive").to_table(columns=["pane_timing"])
    except (OSError, ValueError):
        return counts  # a file is being renamed into place; the next look will see it
    counts.update(table.column("pane_timing").to_pylist())
    return counts


def output_summary(spec: FeatureSpecFile, offline: str, dead_letter: Optional[str]) -> dict:
    letters = list(read_dead_letters(dead_letter)) if dead_letter and "://" not in dead_letter else []
    n_views = len(spec.feature_views)
    too_late = [letter for letter in letters if letter["reason"] == "too_late"]
    return {
        "panes": {v.name: pane_counts(offline, v.name) for v in spec.feature_views},
        "dead_letters": len(letters),
        "dead_letter_reasons": collections.Counter(letter["reason"] for letter in letters),
        # one dead letter per event: refused by the parser, or too late for some or every view
        "refused": len(letters) - len(too_late),
        "too_late_every_view": sum(len(letter.get("views") or ()) >= n_views for letter in too_late),
        "too_late_some_views": sum(len(letter.get("views") or ()) < n_views for letter in too_late),
    }


def print_summary(summary: dict, events_in: Optional[int] = None, out=None) -> None:
    """events in = used + refused + too late for every view (each event counted once)."""
    lines = []
    if events_in is not None:
        used = events_in - summary["refused"] - summary["too_late_every_view"]
        lines.append(f"events in: {events_in:,}  used: {used:,}  refused: {summary['refused']:,}  "
                     f"too late for every view: {summary['too_late_every_view']:,}  "
                     f"(too late for some views, used by the others: {summary['too_late_some_views']:,})")
    reasons = summary["dead_letter_reasons"]
    if reasons:
        lines.append("dead letters by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
    for view, counts in summary["panes"].items():
        lines.append(f"panes {view}: early {counts['EARLY']:,}, on time {counts['ON_TIME']:,}, "
                     f"late {counts['LATE']:,}")
    print("\n".join(lines), file=out)
