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

from transforms.combine import FeatureViewCombineFn
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


def assemble_entities(fn: FeatureViewCombineFn, entities: list[tuple[list[int], list[list]]], tile_ms: int,
                      size_ms: int) -> list[Windows]:
    """`assemble_windows` for many entities in one vectorised pass (per-entity numpy calls cost
    more than the arithmetic when entities have few tiles, as with many entities).

    Each entity's tiles are laid out on one axis counted in tiles, entity after entity, with a
    gap of a window's length between them, so no window reaches two entities; the windows are
    then cut back per entity. Values equal `assemble_windows` on each entity alone."""
    if len(entities) == 1:
        starts, accs = entities[0]
        return [assemble_windows(fn, starts, accs, tile_ms, size_ms)]
    k = size_ms // tile_ms
    positions, bases, offsets, all_accs = [], [], [], []
    offset = 0
    for starts, accs in entities:
        first = starts[0]
        index = (np.array(starts, dtype=np.int64) - first) // tile_ms + offset
        positions.append(index)
        bases.append(first)
        offsets.append(offset)
        all_accs.extend(accs)
        offset = int(index[-1]) + k + 1
    tiles = gather(np.concatenate(positions), 1, k)
    times = tiles.reduce(np.array([acc[0] for acc in all_accs], dtype=np.int64), np.maximum, -1).tolist()
    columns = [agg.over_windows([acc[i] for acc in all_accs], tiles) for i, agg in enumerate(fn.aggregations, 1)]
    rows = list(zip(*columns))
    # every entity's windows are one run of the (ascending) ends
    cuts = np.searchsorted(tiles.ends, np.array(offsets[1:] + [offset], dtype=np.int64)).tolist()
    out, lo = [], 0
    ends = tiles.ends
    for base, first_index, hi in zip(bases, offsets, cuts):
        entity_ends = ((ends[lo:hi] - first_index) * tile_ms + base).tolist()
        out.append(Windows(entity_ends, times[lo:hi], iter(rows[lo:hi])))
        lo = hi
    return out
