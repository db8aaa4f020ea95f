"""Do the backfill's offline rows agree with a baseline's? (The same run's 1M-event outputs.)

The windows must be the same set. Exact features must be equal (sums and means to 1e-9
relative). The approximate ones are summarised (median relative difference, share of windows
within 5 %); against the pyarrow limit (exact distinct counts, a t-digest p90) they are not
judged, against DuckDB (its own HyperLogLog and t-digest) they are, with a tolerance: two
sketches of the same values differ a little, a wrong window or feature differs a lot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from benchmarks.workload import FIXED_VIEW, SLIDING_VIEW

KEYS = {SLIDING_VIEW: "user_id", FIXED_VIEW: "item_id"}
EXACT = {
    SLIDING_VIEW: ("events", "spend", "avg_amount", "max_amount", "last_item"),
    FIXED_VIEW: ("views", "revenue"),
}


def _pipeline_rows(offline: Path, view: str) -> pa.Table:
    table = ds.dataset(offline / view, partitioning="hive").to_table()
    start_ms = pc.divide(pc.cast(table["window_start"], pa.int64()), 1000)
    return table.drop_columns(["window_start"]).append_column("window_start", start_ms)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return a == b


def _compare_view(
    ours: pa.Table, limit: pa.Table, key: str, exact: tuple[str, ...]
) -> dict[str, Any]:
    names = [n for n in limit.column_names if n not in (key, "window_start", "max_event_time")]
    ours_keys = set(zip(ours[key].to_pylist(), ours["window_start"].to_pylist()))
    limit_keys = set(zip(limit[key].to_pylist(), limit["window_start"].to_pylist()))
    both = ours.select([key, "window_start"] + names).join(
        limit.select([key, "window_start"] + names),
        [key, "window_start"],
        join_type="inner",
        left_suffix="_ours",
        right_suffix="_limit",
        use_threads=False,
    )
    out: dict[str, Any] = {
        "rows_pipeline": ours.num_rows,
        "rows_limit": limit.num_rows,
        "windows_compared": both.num_rows,
        "windows_only_in_pipeline": len(ours_keys - limit_keys),
        "windows_only_in_limit": len(limit_keys - ours_keys),
        "exact_feature_mismatches": {},
    }
    for name in names:
        a, b = both[f"{name}_ours"].to_pylist(), both[f"{name}_limit"].to_pylist()
        if name in exact:
            out["exact_feature_mismatches"][name] = sum(not _same(x, y) for x, y in zip(a, b))
            continue
        rel = sorted(
            abs(x - y) / max(abs(y), 1e-9) for x, y in zip(a, b) if x is not None and y is not None
        )
        out[f"{name}_median_rel_diff"] = round(rel[len(rel) // 2], 4) if rel else None
        out[f"{name}_within_5pct"] = (
            round(sum(r <= 0.05 for r in rel) / len(rel), 4) if rel else None
        )
    return out


# Approximate features agree when at least this share of windows is within 5 % (DuckDB vs ours:
# HLL vs HLL, t-digest vs KLL).
APPROX_MIN_SHARE_WITHIN_5PCT = 0.9


def compare(offline: Path, limit_dir: Path, judge_approx: bool = False) -> dict[str, Any]:
    """{view: comparison, "agree": bool} for the backfill's offline store and a baseline's
    output (<view>.parquet per view); approximate features count only when `judge_approx`."""
    report: dict[str, Any] = {
        view: _compare_view(
            _pipeline_rows(offline, view),
            pq.read_table(limit_dir / f"{view}.parquet"),
            key,
            EXACT[view],
        )
        for view, key in KEYS.items()
    }
    report["agree"] = all(
        r["windows_only_in_pipeline"] == 0
        and r["windows_only_in_limit"] == 0
        and not any(r["exact_feature_mismatches"].values())
        for r in report.values()
    )
    if judge_approx:
        shares = {
            f"{view}.{name[: -len('_within_5pct')]}": share
            for view, r in report.items()
            if isinstance(r, dict)
            for name, share in r.items()
            if name.endswith("_within_5pct")
        }
        report["approx_min_share_within_5pct"] = APPROX_MIN_SHARE_WITHIN_5PCT
        report["approx_agree"] = all(
            share is not None and share >= APPROX_MIN_SHARE_WITHIN_5PCT for share in shares.values()
        )
        report["agree"] = report["agree"] and report["approx_agree"]
    return report
