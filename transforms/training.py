"""Point-in-time correct training sets from the offline store: the as-of join, in Arrow and numpy.

For a label (entity e, time t) and a view V: among V's windows of e with window_end <= t, the one
with the greatest window_end; null when t - window_end > V's ttl, when e is unknown, or when no
window ends by t. Of that window's panes the final one (greatest pane_index); for `discarding`
views the panes combined (count and sum added, min and max taken; other aggregations cannot be
combined from their values and are refused when a window holds more than one pane). With
`as_of_created`, panes created after t are ignored too (what the online store could know at t).

This is Feast's `get_historical_features` over our layout (event_timestamp = window end, ties
broken by created_timestamp), with the final pane chosen by pane_index rather than by write time.
One sort of panes and labels together per view, no loop per label: `TrainingJoin` is used by the
local command and, per entity group, by the Beam variant (transforms/training_beam.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.records import ViewLayout
from transforms.spec import FeatureSpecFile, FeatureViewSpec, SpecError

TS = pa.timestamp("us", tz="UTC")
# discarding views: how a feature's pane values combine into the window's value
COMBINE = {"count": "sum", "sum": "sum", "min": "min", "max": "max"}
_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):([A-Za-z_][A-Za-z0-9_]*)$")


class TrainingSetError(ValueError):
    """A user mistake (features, labels, their columns): one line, exit 2."""


@dataclass(frozen=True)
class ViewRequest:
    """The features wanted from one view, and what the join needs to know about that view."""

    view: FeatureViewSpec
    layout: ViewLayout
    features: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [f"{self.view.name}__{f}" for f in self.features]

    def combine(self) -> dict[str, str]:
        """discarding views: feature -> sum | min | max (features absent cannot be combined)."""
        if self.view.accumulation != "discarding":
            return {}
        aggs = {f.name: f.agg for f in self.view.features}
        return {f: COMBINE[aggs[f]] for f in self.features if aggs[f] in COMBINE}


def parse_features(spec: FeatureSpecFile, refs: Sequence[str]) -> list[ViewRequest]:
    """'VIEW:FEATURE' references (also comma-separated) -> one request per view, in first-seen order."""
    wanted: dict[str, list[str]] = {}
    for ref in (r.strip() for item in refs for r in item.split(",")):
        if not ref:
            continue
        match = _REF.match(ref)
        if not match:
            raise TrainingSetError(f"--features: expected VIEW:FEATURE (got {ref!r})")
        view_name, feature = match.groups()
        try:
            view = spec.view(view_name)
        except SpecError as err:
            raise TrainingSetError(f"--features: {err}") from None
        names = [f.name for f in view.features]
        if feature not in names:
            raise TrainingSetError(f"--features: view {view_name!r} has no feature {feature!r} "
                                   f"(features: {', '.join(names)})")
        if feature not in wanted.setdefault(view_name, []):
            wanted[view_name].append(feature)
    if not wanted:
        raise TrainingSetError("--features: name at least one VIEW:FEATURE")
    return [ViewRequest(spec.view(v), ViewLayout.from_view(spec, spec.view(v)), tuple(fs)) for v, fs in wanted.items()]


# -- labels ------------------------------------------------------------------------------------------
def timestamps_us(column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """A label time column as int64 microseconds since the epoch (UTC); nulls as INT64 min.
    Timestamps (naive ones read as UTC), epoch milliseconds (integers) or RFC 3339 strings."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        us = pc.cast(column, pa.timestamp("us", tz=kind.tz)) if kind.unit != "us" else column
        values = pc.cast(us, pa.int64())
    elif pa.types.is_integer(kind):
        values = pc.multiply_checked(pc.cast(column, pa.int64()), 1000)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            parsed = pc.cast(column, TS)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise TrainingSetError(f"labels: column {name!r} holds a value that is not RFC 3339 with a "
                                   f"time zone ({str(err).splitlines()[0]})") from None
        values = pc.cast(parsed, pa.int64())
    else:
        raise TrainingSetError(f"labels: column {name!r} must hold timestamps, epoch milliseconds or "
                               f"RFC 3339 strings (got {kind})")
    return pc.fill_null(values, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False).astype(np.int64)


def entity_keys(labels: pa.Table, layout: ViewLayout) -> pa.ChunkedArray:
    """The label column of a view's join key, as the store's key type."""
    if layout.join_key not in labels.column_names:
        raise TrainingSetError(f"labels: no column {layout.join_key!r} (the join key of view "
                               f"{layout.name!r}; columns: {', '.join(labels.column_names)})")
    column = labels[layout.join_key]
    target = pa.int64() if layout.key_dtype == "int64" else pa.string()
    if column.type == target:
        return column
    try:
        return pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise TrainingSetError(f"labels: column {layout.join_key!r} must be {layout.key_dtype} keys "
                               f"(got {column.type})") from None


# -- panes ---------------------------------------------------------------------------------------
def prepare_panes(panes: pa.Table, request: ViewRequest) -> pa.Table:
    """One view's offline rows (de-duplicated, as read_offline returns them) sorted by (entity,
    window_end, pane_index), with discarding panes combined cumulatively: each pane then holds
    its window's value as of that pane."""
    key = request.layout.join_key
    panes = panes.select([key, "window_end", "created_timestamp", "pane_index", *request.features])
    panes = panes.sort_by([(key, "ascending"), ("window_end", "ascending"), ("pane_index", "ascending")])
    if request.view.accumulation != "discarding" or panes.num_rows == 0:
        return panes
    ends = pc.cast(panes["window_end"], pa.int64()).to_numpy()
    codes = pc.index_in(panes[key], pc.unique(panes[key])).to_numpy()
    first = np.ones(len(ends), dtype=bool)
    first[1:] = (codes[1:] != codes[:-1]) | (ends[1:] != ends[:-1])
    start = np.maximum.accumulate(np.where(first, np.arange(len(ends)), 0))  # row of each window's first pane
    combine = request.combine()
    for name in request.features:
        if name in combine:
            panes = panes.set_column(panes.column_names.index(name), name,
                                     _combine(panes[name], start, combine[name]))
        elif not first.all():
            raise TrainingSetError(
                f"view {request.view.name!r} is discarding and {name!r} cannot be combined from its panes' "
                f"values (count, sum, min and max can); a window in the store holds several panes")
    return panes


def _combine(column: pa.ChunkedArray, start: np.ndarray, how: str) -> pa.Array:
    """Each pane's window value as of that pane: the sum / min / max of the window's panes so far,
    added in pane order (as combining pane by pane would). Loops over pane depth, not rows."""
    kind = column.type
    integer = pa.types.is_integer(kind)
    values = column.to_numpy(zero_copy_only=False)
    values = values.astype(np.int64) if integer else values.astype(np.float64)  # nulls -> NaN
    if how == "sum" and not integer:
        values = np.nan_to_num(values)  # sums are never null (empty: 0); defensive
    op = {"sum": np.add, "min": np.fmin, "max": np.fmax}[how]
    out = values.copy()
    depth = np.arange(len(values)) - start
    for d in range(1, int(depth.max(initial=0)) + 1):  # panes per window: a handful
        rows = np.nonzero(depth == d)[0]
        out[rows] = op(out[rows - 1], values[rows])
    if integer:
        return pa.array(out, kind)
    return pa.array(out, kind, mask=np.isnan(out))


# -- the join ------------------------------------------------------------------------------------
def as_of_rows(panes: pa.Table, request: ViewRequest, keys: pa.ChunkedArray, times_us: np.ndarray,
               as_of_created: bool = False) -> np.ndarray:
    """For each label (keys[i], times_us[i]): the row of `panes` (prepared) it gets, or -1."""
    n = len(times_us)
    if panes.num_rows == 0 or n == 0:
        return np.full(n, -1, dtype=np.int64)
    key = request.layout.join_key
    dictionary = pc.unique(panes[key])
    pane_codes = pc.index_in(panes[key], dictionary).to_numpy().astype(np.int64)
    label_codes = pc.fill_null(pc.index_in(keys, dictionary), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = pc.cast(panes["window_end"], pa.int64()).to_numpy()
    visible = ends
    if as_of_created:
        visible = np.maximum(ends, pc.cast(panes["created_timestamp"], pa.int64()).to_numpy())
    known = (label_codes >= 0) & (times_us != np.iinfo(np.int64).min)
    labels_at = np.nonzero(known)[0]
    m = panes.num_rows
    # panes (kind 0) sort before labels (kind 1) at the same instant: window_end <= t includes t
    codes = np.concatenate([pane_codes, label_codes[labels_at]])
    times = np.concatenate([visible, times_us[labels_at]])
    kinds = np.concatenate([np.zeros(m, np.int8), np.ones(len(labels_at), np.int8)])
    order = np.lexsort((kinds, times, codes))
    # pane rows are sorted by (entity, window_end, pane_index) and entities by code, so the running
    # maximum of row numbers is, for each label, its entity's latest visible pane (if it has one)
    rank = np.concatenate([np.arange(m, dtype=np.int64), np.full(len(labels_at), -1, np.int64)])
    best = np.maximum.accumulate(rank[order])
    is_label = order >= m
    picked = np.full(n, -1, dtype=np.int64)
    picked[labels_at[order[is_label] - m]] = best[is_label]
    found = picked >= 0
    same = np.zeros(n, dtype=bool)
    same[found] = pane_codes[picked[found]] == label_codes[found]
    picked[~same] = -1
    ttl = request.view.ttl
    if ttl:
        hit = picked >= 0
        stale = np.zeros(n, dtype=bool)
        stale[hit] = times_us[hit] - ends[picked[hit]] > ttl * 1_000_000
        picked[stale] = -1
    return picked


def feature_columns(panes: pa.Table, request: ViewRequest, picked: np.ndarray) -> list[tuple[str, pa.Array]]:
    """The requested feature columns taken at `picked` rows (-1: null), named VIEW__FEATURE."""
    indices = pa.array(picked, pa.int64(), mask=picked < 0)
    out = []
    for name, column in zip(request.features, request.columns):
        values = panes[name]
        out.append((column, values.take(indices) if panes.num_rows else pa.nulls(len(picked), values.type)))
    return out


def join_labels(labels: pa.Table, timestamp_field: str, requests: Sequence[ViewRequest],
                panes_of: dict[str, pa.Table], as_of_created: bool = False) -> pa.Table:
    """Labels with one VIEW__FEATURE column per requested feature, in label order.
    `panes_of[view]`: the view's offline rows as read_offline returns them."""
    if timestamp_field not in labels.column_names:
        raise TrainingSetError(f"labels: no timestamp column {timestamp_field!r} (columns: "
                               f"{', '.join(labels.column_names)}; --label_timestamp_field names another)")
    times = timestamps_us(labels[timestamp_field], timestamp_field)
    out = labels
    for request in requests:
        clash = [c for c in request.columns if c in labels.column_names]
        if clash:
            raise TrainingSetError(f"labels: column {clash[0]!r} already exists (it would hold that feature)")
        keys = entity_keys(labels, request.layout)
        panes = prepare_panes(panes_of[request.view.name], request)
        picked = as_of_rows(panes, request, keys, times, as_of_created)
        for name, column in feature_columns(panes, request, picked):
            out = out.append_column(name, column)
    return out
