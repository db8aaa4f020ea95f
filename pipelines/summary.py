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


def run_summary(counters: dict[str, int], spec: Optional[FeatureSpecFile], elapsed_s: Optional[float],
                engine: str, lags: Optional[dict[str, tuple[int, int, int]]] = None) -> list[str]:
    """The table every batch run ends with: events in, used, refused by reason, duplicates
    removed, rows written per view and store, dead letters; elapsed and engine; then a warning
    per field that had no value in any event (a typo in the spec, most likely)."""
    def count(name: str) -> int:
        return counters.get(name, 0)

    events_in, parsed = count("parse.events_in"), count("parse.parsed")
    duplicates = count("dedup.duplicates_removed")
    used = parsed - duplicates - count("parse.too_late_for_every_view")
    reasons = {key.split("dead_letter_", 1)[1]: n for key, n in counters.items()
               if key.startswith("parse.dead_letter_") and n}
    took = f"{elapsed_s:,.1f} s" if elapsed_s is not None else "-"
    lines = [f"summary ({took}, engine {engine}):",
             f"  {'events in':<28}{events_in:>14,}",
             f"  {'used':<28}{used:>14,}",
             f"  {'refused':<28}{count('parse.dead_lettered'):>14,}"
             + ("  (" + ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items())) + ")" if reasons else "")]
    if "dedup.duplicates_removed" in counters or (spec is not None and spec.source.id_field):
        lines.append(f"  {'duplicates removed':<28}{duplicates:>14,}")
    if count("parse.too_late_events"):
        lines.append(f"  {'too late (some views)':<28}{count('parse.too_late_events'):>14,}")
    views = [v.name for v in spec.feature_views] + [e.name for e in spec.embeddings] if spec else []
    for view in views:
        key = f"offline_store.rows_written.{view}"
        if key in counters:
            lines.append(f"  {'offline rows ' + view:<28}{counters[key]:>14,}")
    if "online_store.rows_written" in counters:
        stale = count("online_store.rows_stale_skipped")
        lines.append(f"  {'online rows':<28}{count('online_store.rows_written'):>14,}"
                     + (f"  ({stale:,} older than the stored window: skipped)" if stale else ""))
    if "dead_letters.written" in counters:
        lines.append(f"  {'dead letters written':<28}{count('dead_letters.written'):>14,}")
    for view, (n, total, top) in sorted((lags or {}).items()):  # streaming: processing time - window end
        lines.append(f"  {'freshness ' + view:<28}{'':>14}  mean lag {total / n / 1000:,.1f} s, max {top / 1000:,.1f} s "
                     f"over {n:,} online writes")
    if spec is not None and parsed:
        for field, features in _fields_of(spec).items():
            missing = counters.get(f"fields.no_value.{field}")
            if missing is not None and missing >= parsed:
                lines.append(f"warning: field {field!r} had no value in any of the {parsed:,} events "
                             f"(read by {', '.join(features)}): a typo in the spec? "
                             "`python -m pipelines.check_spec` compares a spec with a sample of events")
    return lines


def _fields_of(spec: FeatureSpecFile) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for view in spec.feature_views:
        for feature in view.features:
            if feature.field:
                fields.setdefault(feature.field, []).append(f"{view.name}.{feature.name}")
    return fields
