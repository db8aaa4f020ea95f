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
    ends = _window_ends(starts, tile_ms, k_max)
    last = len(starts) - 1
    slots = []
    for k in range(k_max):
        want = ends - size_ms + k * tile_ms
        index = np.minimum(np.searchsorted(starts, want), last)
        slots.append((index, starts[index] == want))
    return Gather(ends, np.searchsorted(starts, ends - size_ms), np.searchsorted(starts, ends), slots)


def _window_ends(starts: np.ndarray, tile_ms: int, k_max: int) -> np.ndarray:
    """The sorted distinct `start + k * tile_ms` for k in 1..k_max over the (sorted, distinct)
    starts of tiles on a grid of `tile_ms`: runs of starts less than a window apart give one
    run of consecutive ends each, laid out without sorting."""
    if not len(starts):
        return starts.copy()
    if (starts % tile_ms).any() or (np.diff(starts) <= 0).any():  # not on one grid: sort them out
        return np.unique((starts[:, None] + tile_ms * np.arange(1, k_max + 1)).ravel())
    new_run = np.ones(len(starts), dtype=bool)
    new_run[1:] = np.diff(starts) > k_max * tile_ms
    first = starts[new_run]  # each run's ends go from its first start + tile to its last + K tiles
    last = starts[np.append(np.flatnonzero(new_run)[1:] - 1, len(starts) - 1)]
    counts = (last - first) // tile_ms + k_max
    step = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(first + tile_ms, counts) + step * tile_ms


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


class Assembled(NamedTuple):
    """The windows of many entities, entity after entity (each entity's ends ascending)."""

    ends: np.ndarray  # window ends, ms
    max_event_times: np.ndarray
    columns: list  # one list per feature, aligned with `ends`
    bounds: list[int]  # entity i's windows are [bounds[i], bounds[i + 1])


def assemble_many(fn: FeatureViewCombineFn, entities: list[tuple[list[int], list[list]]], tile_ms: int,
                  size_ms: int) -> Assembled:
    """`assemble_windows` for many entities in one vectorised pass (per-entity numpy calls cost
    more than the arithmetic when entities have few tiles, as with many entities)."""
    lengths = [len(starts) for starts, _ in entities]
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    starts = np.fromiter((s for starts, _ in entities for s in starts), np.int64, int(bounds[-1]))
    return assemble_sorted(fn, bounds, starts, [acc for _, accs in entities for acc in accs], tile_ms, size_ms)


def assemble_sorted(fn: FeatureViewCombineFn, bounds: np.ndarray, starts: np.ndarray, accs: list,
                    tile_ms: int, size_ms: int) -> Assembled:
    """The windows of many entities whose tiles come entity after entity: entity i's tiles are
    `starts[bounds[i]:bounds[i + 1]]` (ascending, distinct) with accumulators `accs` alike.

    The tiles are laid out on one axis counted in tiles, entity after entity, with a gap of a
    window's length between them, so no window reaches two entities; the windows are then mapped
    back to each entity's time. Values equal `assemble_windows` on each entity alone."""
    k = size_ms // tile_ms
    owner = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    bases = starts[bounds[:-1]]
    index = (starts - bases[owner]) // tile_ms
    spans = index[bounds[1:] - 1] + k + 1  # each entity's stretch of the axis, gap included
    ends_of_stretch = np.cumsum(spans)
    offsets = ends_of_stretch - spans
    tiles = gather(index + offsets[owner], 1, k)
    times = tiles.reduce(np.array([acc[0] for acc in accs], dtype=np.int64), np.maximum, -1)
    columns = [agg.over_windows([acc[i] for acc in accs], tiles) for i, agg in enumerate(fn.aggregations, 1)]
    # every entity's windows are one run of the (ascending) ends
    cuts = np.searchsorted(tiles.ends, ends_of_stretch)
    window_owner = np.repeat(np.arange(len(spans)), np.diff(cuts, prepend=0))
    ends = (tiles.ends - offsets[window_owner]) * tile_ms + bases[window_owner]
    return Assembled(ends, times, columns, [0] + cuts.tolist())


def assemble_entities(fn: FeatureViewCombineFn, entities: list[tuple[list[int], list[list]]], tile_ms: int,
                      size_ms: int) -> list[Windows]:
    """`assemble_many`, cut into one `Windows` per entity."""
    done = assemble_many(fn, entities, tile_ms, size_ms)
    rows = list(zip(*done.columns))
    ends, times = done.ends.tolist(), done.max_event_times.tolist()
    return [Windows(ends[lo:hi], times[lo:hi], iter(rows[lo:hi])) for lo, hi in zip(done.bounds, done.bounds[1:])]
