"""Windows from tiles, vectorised: every window of one (view, entity) at once.

A window of size S over tiles of length P holds the tiles that start in [end - S, end); with
K = S/P that is at most K tiles, the k-th of which starts at end - S + k*P. `gather` finds, for
every window end and every k, that tile (if present) with numpy searches; each aggregation's
`over_windows` then computes its feature for all windows at once (counts, sums, means, moments,
min/max, first/last as K vector operations, merging tiles oldest first like
`merge_accumulators`, so results are bit-for-bit those of merging accumulators; sketches and
lists merged per window).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from transforms.aggregate import FeatureViewCombineFn
from transforms.aggregations import Gather


def gather(starts: np.ndarray, tile_ms: int, size_ms: int) -> Gather:
    """For each window end and each k < K, the index of the window's k-th tile, if present."""
    k_max = size_ms // tile_ms
    ends = np.unique((starts[:, None] + tile_ms * np.arange(1, k_max + 1)).ravel())
    last = len(starts) - 1
    slots = []
    for k in range(k_max):
        want = ends - size_ms + k * tile_ms
        index = np.minimum(np.searchsorted(starts, want), last)
        slots.append((index, starts[index] == want))
    return Gather(ends, np.searchsorted(starts, ends - size_ms), np.searchsorted(starts, ends), slots)


class Windows(NamedTuple):
    ends: list[int]  # window ends, ascending
    max_event_times: list[int]
    values: Iterator[tuple]  # the features of each window


def assemble_windows(fn: FeatureViewCombineFn, starts: list[int], accs: list[list], tile_ms: int,
                     size_ms: int) -> Windows:
    """Every window of `size_ms` holding at least one tile, where (max event time, *values)
    equals fn.extract_output(fn.merge_accumulators(the window's tiles)). `starts` is sorted;
    the tile accumulators are left unchanged."""
    tiles = gather(np.array(starts, dtype=np.int64), tile_ms, size_ms)
    times = tiles.reduce(np.array([acc[0] for acc in accs], dtype=np.int64), np.maximum, -1)
    columns = [agg.over_windows([acc[i] for acc in accs], tiles) for i, agg in enumerate(fn.aggregations, 1)]
    return Windows(tiles.ends.tolist(), times.tolist(), zip(*columns))
