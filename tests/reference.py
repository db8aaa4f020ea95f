"""Plain-Python reference for feature values: no Beam, no sketches, obviously correct."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable

from transforms.spec import FeatureSpecFile, FeatureViewSpec, FixedWindow, SlidingWindow


def windows_of(view: FeatureViewSpec, t_ms: int) -> list[tuple[int, int]]:
    w = view.window
    if isinstance(w, FixedWindow):
        size = w.size * 1000
        start = t_ms - t_ms % size
        return [(start, start + size)]
    if isinstance(w, SlidingWindow):
        size, period = w.size * 1000, w.period * 1000
        last_start = t_ms - t_ms % period
        return [(s, s + size) for s in range(last_start, t_ms - size, -period)]
    raise ValueError("sessions: use the TestStream tests")


def _matches(record: dict, where: dict | None) -> bool:
    if not where:
        return True
    for field, allowed in where.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if record.get(field) not in allowed:
            return False
    return True


def feature_value(feature, records: list[dict], ts_field: str) -> Any:
    rows = [r for r in records if _matches(r, feature.where)]
    if feature.agg == "count":
        return len(rows)
    values = [(r[ts_field], r[feature.field]) for r in rows if r.get(feature.field) is not None]
    nums = [v for _, v in values]
    if feature.agg == "sum":
        return math.fsum(nums)
    if not values:
        return 0 if feature.agg == "approx_count_distinct" else None
    if feature.agg == "mean":
        return math.fsum(nums) / len(nums)
    if feature.agg == "min":
        return min(nums)
    if feature.agg == "max":
        return max(nums)
    if feature.agg == "first":
        return min(values)[1]
    if feature.agg == "last":
        return max(values)[1]
    if feature.agg == "approx_count_distinct":
        return len(set(nums))
    if feature.agg == "approx_percentile":
        return sorted(nums)
    if feature.agg in ("variance", "stddev"):
        variance = statistics.pvariance(nums)
        return variance if feature.agg == "variance" else math.sqrt(variance)
    if feature.agg == "first_k":
        return [v for _, v in sorted(values)[:feature.k]]
    if feature.agg == "last_k":
        return [v for _, v in sorted(values, reverse=True)[:feature.k]]
    if feature.agg in ("top_k", "histogram"):
        counts = Counter(_text(v) for v in nums)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [v for v, _ in ranked[:feature.k]] if feature.agg == "top_k" else dict(ranked[:feature.cap])
    raise ValueError(feature.agg)


def _text(value: Any) -> str:
    """A value as the parser's canonical text (strings as they are, numbers as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def all_windows(spec: FeatureSpecFile, view: FeatureViewSpec, records: Iterable[dict]) -> dict:
    """{(entity, window_start, window_end): {feature: value}} over every window with events."""
    ts_field = spec.source.timestamp_field
    key = spec.entities[view.entity].join_key
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        for start, end in windows_of(view, r[ts_field]):
            grouped[(r[key], start, end)].append(r)
    return {
        k: {f.name: feature_value(f, rs, ts_field) for f in view.features} for k, rs in grouped.items()
    }


def current_windows(spec: FeatureSpecFile, view: FeatureViewSpec, records: list[dict]) -> dict:
    """{entity: (window_start, window_end, {feature: value})}: what the online store must hold."""
    ts_field = spec.source.timestamp_field
    key = spec.entities[view.entity].join_key
    latest: dict[str, int] = {}
    for r in records:
        latest[r[key]] = max(latest.get(r[key], -1), r[ts_field])
    windows = all_windows(spec, view, records)
    out = {}
    for entity, t in latest.items():
        start, end = min(windows_of(view, t), key=lambda w: w[1])
        out[entity] = (start, end, windows[(entity, start, end)])
    return out


def assert_close(feature, got: Any, expected: Any, rel: float = 1e-9) -> None:
    """Exact for counts and strings; float tolerance for sums; sketch bounds for approximations."""
    if feature.agg == "approx_percentile":
        if expected is None:
            assert got is None, feature.name
            return
        n = len(expected)
        below = sum(x < got for x in expected) / n
        at_or_below = sum(x <= got for x in expected) / n
        assert below - 0.03 <= feature.q <= at_or_below + 0.03, (feature.name, got)
    elif feature.agg == "approx_count_distinct":
        assert abs(got - expected) <= max(1, 0.05 * expected), (feature.name, got, expected)
    elif isinstance(expected, list) and expected and isinstance(expected[0], float):
        assert got is not None and len(got) == len(expected), (feature.name, got, expected)
        for g, e in zip(got, expected):
            assert abs(g - e) <= rel * max(1.0, abs(e)) + 1e-9, (feature.name, got, expected)
    elif isinstance(expected, float):
        assert got is not None and abs(got - expected) <= rel * max(1.0, abs(expected)) + 1e-9, (
            feature.name, got, expected)
    else:
        assert got == expected, (feature.name, got, expected)
