"""Windows assembled from tiles in one vectorised pass equal merging each window's tile
accumulators and extracting: sliding and fixed windows, gaps between tiles, empty states."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from test_aggregate import CODER, FN, PLAN, events_strategy
from transforms.backfill.assembly import assemble_entities, assemble_windows

TILE = 1_000


def tiles_of(records: list[dict]) -> dict[int, list]:
    tiles: dict[int, list] = {}
    for record in records:
        event = PLAN.parse(record)
        start = event.event_time_ms - event.event_time_ms % TILE
        tiles[start] = FN.add_input(tiles.get(start) or FN.create_accumulator(), event)
    return tiles


def merged(accs: list[list]) -> tuple:
    copies = [CODER.decode(CODER.encode(acc)) for acc in accs]
    return FN.extract_output(FN.merge_accumulators([FN.create_accumulator()] + copies))


@settings(max_examples=60, deadline=None)
@given(events_strategy, st.sampled_from([1, 2, 3, 5]))
def test_assembled_windows_equal_merged_accumulators(records, per_window):
    for record in records:
        record["ts"] *= 7  # spread over ~70 tiles so windows have gaps
    tiles = tiles_of(records)
    starts = sorted(tiles)
    accs = [tiles[s] for s in starts]
    before = [merged([acc]) for acc in accs]
    size = TILE * per_window
    windows = assemble_windows(FN, starts, accs, TILE, size)
    got = {end: (t, *values) for end, t, values in zip(windows.ends, windows.max_event_times, windows.values)}

    ends = {s + TILE * k for s in starts for k in range(1, per_window + 1)}
    assert sorted(got) == sorted(ends)
    for end in ends:
        members = [tiles[s] for s in starts if end - size <= s < end]
        assert got[end] == merged(members), end
    assert [merged([acc]) for acc in accs] == before  # tiles are shared: left unchanged


@settings(max_examples=40, deadline=None)
@given(st.lists(events_strategy, min_size=1, max_size=6), st.sampled_from([1, 2, 5]))
def test_many_entities_in_one_pass_equal_each_entity_alone(per_entity, per_window):
    entities = []
    for records in per_entity:
        if not records:
            continue
        for record in records:
            record["ts"] *= 7
        tiles = tiles_of(records)
        starts = sorted(tiles)
        entities.append((starts, [tiles[s] for s in starts]))
    if not entities:
        return
    size = TILE * per_window
    alone = [assemble_windows(FN, starts, accs, TILE, size) for starts, accs in entities]
    together = assemble_entities(FN, entities, TILE, size)
    assert len(together) == len(alone)
    for a, b in zip(alone, together):
        assert (a.ends, a.max_event_times, list(a.values)) == (b.ends, b.max_event_times, list(b.values))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(st.integers(0, 5), st.text(max_size=3))), min_size=1, max_size=30),
       st.lists(st.one_of(st.none(), st.tuples(st.integers(0, 5), st.floats(-3, 3))), min_size=1, max_size=30),
       st.sampled_from([1, 2, 3, 5]))
def test_first_and_last_over_windows_equal_merging_each_window(text_states, number_states, per_window):
    """first/last rank (time, value) states vectorised (Arrow's order of strings, lone surrogates
    included, which Arrow cannot hold); each window equals merging its states one by one."""
    from transforms.aggregations import First, Last
    from transforms.backfill.assembly import gather

    text_states = text_states + [(3, "é"), (3, "z"), (3, "\U0001f600"), (3, "\uffff")]
    for states in (text_states, text_states + [(3, "\ud800")], number_states):
        tiles = gather(np.arange(len(states), dtype=np.int64) * TILE, TILE, TILE * per_window)
        for kind in (First, Last):
            agg = kind.__new__(kind)
            got = agg.over_windows(states, tiles)
            assert got == [agg.window(states[lo:hi]) for lo, hi in tiles.ranges()]


@given(st.lists(st.integers(-50, 200), max_size=40), st.sampled_from([1, 7, 60_000]), st.integers(1, 6),
       st.booleans())
def test_window_ends_laid_out_in_runs_equal_the_sorted_distinct_ends(starts, tile, k, on_grid):
    from transforms.backfill.assembly import _window_ends

    starts = np.unique(np.array(starts, dtype=np.int64)) * (tile if on_grid else 1)
    expected = np.unique((starts[:, None] + tile * np.arange(1, k + 1)).ravel())
    assert np.array_equal(_window_ends(starts, tile, k), expected)
