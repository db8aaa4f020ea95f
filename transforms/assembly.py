"""Windows from tiles, vectorised: every window of one (view, entity) at once.

A window of size S over tiles of length P holds the tiles that start in [end - S, end); with
K = S/P that is at most K tiles, the k-th of which starts at end - S + k*P. `Gather` finds, for
every window end and every k, that tile (if present) with numpy searches, so counts, sums,
means, min/max and first/last become K vector operations over all windows instead of a
Python merge per window. Sums add the tiles oldest first, the order `merge_accumulators` uses,
so results are bit-for-bit those of merging accumulators. Sketches (HLL, KLL) are merged per
window by their own unions.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import numpy as np

from transforms.aggregate import (
    FeatureViewCombineFn,
    _Count,
    _Distinct,
    _First,
    _Last,
    _Max,
    _Mean,
    _Min,
    _Op,
    _Percentile,
    _Sum,
)


class Gather:
    """For each window end and each k < K, the index of the window's k-th tile, if present."""

    def __init__(self, starts: np.ndarray, tile_ms: int, size_ms: int):
        k_max = size_ms // tile_ms
        self.ends = np.unique((starts[:, None] + tile_ms * np.arange(1, k_max + 1)).ravel())
        self.lo = np.searchsorted(starts, self.ends - size_ms)
        self.hi = np.searchsorted(starts, self.ends)
        last = len(starts) - 1
        self.slots: list[tuple[np.ndarray, np.ndarray]] = []
        for k in range(k_max):
            want = self.ends - size_ms + k * tile_ms
            index = np.minimum(np.searchsorted(starts, want), last)
            self.slots.append((index, starts[index] == want))

    def add(self, values: np.ndarray, zero: Any) -> np.ndarray:
        """Sum over each window's tiles, oldest first."""
        out = np.full(len(self.ends), zero, dtype=values.dtype)
        for index, present in self.slots:
            out += np.where(present, values[index], zero)
        return out

    def reduce(self, values: np.ndarray, ufunc: np.ufunc, empty: Any) -> np.ndarray:
        out = np.full(len(self.ends), empty, dtype=values.dtype)
        for index, present in self.slots:
            out = ufunc(out, np.where(present, values[index], empty))
        return out


def _none_for_nan(values: np.ndarray) -> list:
    return [None if v != v else v for v in values.tolist()]


def _window_values(op: _Op, states: list, gather: Gather) -> list:
    if isinstance(op, _Count):
        return gather.add(np.array(states, dtype=np.int64), 0).tolist()
    if isinstance(op, _Sum):
        return gather.add(np.array(states, dtype=np.float64), 0.0).tolist()
    if isinstance(op, _Mean):
        total = gather.add(np.array([s[0] for s in states], dtype=np.float64), 0.0)
        n = gather.add(np.array([s[1] for s in states], dtype=np.int64), 0)
        return [t / c if c else None for t, c in zip(total.tolist(), n.tolist())]
    if isinstance(op, (_Min, _Max)):
        values = np.array([np.nan if s is None else s for s in states], dtype=np.float64)
        return _none_for_nan(gather.reduce(values, np.fmin if isinstance(op, _Min) else np.fmax, np.nan))
    if isinstance(op, (_First, _Last)):
        # Rank the (time, value) states once; the window's state is the one of extreme rank.
        ordered = sorted((s for s in states if s is not None), reverse=isinstance(op, _First))
        rank = {state: r for r, state in enumerate(ordered)}
        ranks = np.array([-1 if s is None else rank[s] for s in states], dtype=np.int64)
        return [None if r < 0 else ordered[r][1] for r in gather.reduce(ranks, np.maximum, -1).tolist()]
    assert isinstance(op, (_Distinct, _Percentile)), op  # sketches: merged per window
    return [op.window(states[lo:hi]) for lo, hi in zip(gather.lo.tolist(), gather.hi.tolist())]


class Windows(NamedTuple):
    ends: list[int]  # window ends, ascending
    max_event_times: list[int]
    values: Iterator[tuple]  # the features of each window


def assemble_windows(fn: FeatureViewCombineFn, starts: list[int], accs: list[list], tile_ms: int,
                     size_ms: int) -> Windows:
    """Every window of `size_ms` holding at least one tile, where (max event time, *values)
    equals fn.extract_output(fn.merge_accumulators(the window's tiles)). `starts` is sorted;
    the tile accumulators are left unchanged."""
    gather = Gather(np.array(starts, dtype=np.int64), tile_ms, size_ms)
    times = gather.reduce(np.array([acc[0] for acc in accs], dtype=np.int64), np.maximum, -1)
    columns = [_window_values(op, [acc[i] for acc in accs], gather) for i, op in enumerate(fn._ops, 1)]
    return Windows(gather.ends.tolist(), times.tolist(), zip(*columns))
