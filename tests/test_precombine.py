"""The streaming fast path's own combiner lifting (transforms/streaming/tiles.py
PreCombinePerWindow): a bundle's tile partials merged per (entity, window) after Beam's WindowInto
give the same features as the window's events added one by one, leave their inputs unchanged,
and travel encoded when a runner ships them."""

from __future__ import annotations

import pickle
import random

import pytest

from apache_beam.transforms.window import SlidingWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from helpers import event, make_spec, view
from transforms.combine import FeatureViewCombineFn
from transforms.parse import ParsePlan
from transforms.streaming.tiles import MergeTiles, Partial, PreCombinePerWindow
from transforms.windows import tile_ms, tile_start

FEATURES = [
    {"name": "n", "agg": "count"},
    {"name": "s", "agg": "sum", "field": "amount"},
    {"name": "avg", "agg": "mean", "field": "amount"},
    {"name": "top", "agg": "max", "field": "amount"},
    {"name": "last_item", "agg": "last", "field": "item"},
    {"name": "items", "agg": "approx_count_distinct", "field": "item"},
    {"name": "p90", "agg": "approx_percentile", "field": "amount", "q": 0.9},
]
SPEC = make_spec([view("v", window={"type": "sliding", "size": "5m", "period": "1m"}, features=FEATURES)])
VIEW = SPEC.feature_views[0]
WINDOWS = SlidingWindows(size=300, period=60)


def _events(n: int, seed: int = 3) -> list:
    rng = random.Random(seed)
    plan = ParsePlan.from_spec(SPEC)
    return [plan.parse(event(rng.uniform(0, 600), user=rng.choice(["u1", "u2", "u3"]),
                             amount=round(rng.uniform(0, 50), 2), item=f"i{rng.randrange(40)}"))
            for _ in range(n)]


def _tiles(events: list, fn: FeatureViewCombineFn) -> dict:
    """{(entity, tile start ms): accumulator}, as the tile step builds them."""
    tiles: dict = {}
    for e in events:
        key = (e.keys[0], tile_start(e.event_time_ms, tile_ms(VIEW)))
        acc = tiles.get(key)
        if acc is None:
            acc = tiles[key] = fn.create_accumulator()
        fn.add_input(acc, e)
    return tiles


def _windowed(entity: str, start_ms: int, partial: Partial) -> WindowedValue:
    """A partial after Beam's WindowInto: its tile's start as timestamp, in every window of it."""
    timestamp = Timestamp(micros=start_ms * 1000)
    windows = WINDOWS.assign(WINDOWS.AssignContext(timestamp))
    return WindowedValue((entity, partial), timestamp, windows)


def _run(dofn: PreCombinePerWindow, inputs: list[WindowedValue]) -> list[WindowedValue]:
    dofn.setup()
    dofn.start_bundle()
    out = []
    for windowed in inputs:
        out += list(dofn.process(windowed.value, windowed=windowed) or [])
    out += list(dofn.finish_bundle() or [])
    return out


def _per_window_events(events: list) -> dict:
    expected: dict = {}
    for e in events:
        timestamp = Timestamp(micros=e.event_time_ms * 1000)
        for w in WINDOWS.assign(WINDOWS.AssignContext(timestamp)):
            expected.setdefault((e.keys[0], w), []).append(e)
    return expected


def _close(got: tuple, want: tuple) -> bool:
    """Equal features, floats to 1e-9 relative (sums in another order)."""
    return len(got) == len(want) and all(
        g == pytest.approx(w, rel=1e-9) if isinstance(w, float) else g == w for g, w in zip(got, want))


def test_one_output_per_entity_and_window_with_the_windows_features():
    fn = FeatureViewCombineFn(SPEC, VIEW)
    coder = fn.get_accumulator_coder()
    events = _events(400)
    tiles = _tiles(events, fn)
    before = {key: coder.encode(acc) for key, acc in tiles.items()}
    inputs = [_windowed(entity, start, Partial(acc, coder)) for (entity, start), acc in tiles.items()]
    out = _run(PreCombinePerWindow(fn), inputs)

    expected = _per_window_events(events)
    got = {(wv.value[0], wv.windows[0]): wv for wv in out}
    assert len(got) == len(out) == len(expected)  # one element per (entity, window)
    assert len(out) < sum(len(wv.windows) for wv in inputs)  # fewer than one per tile and window
    for key, window_events in expected.items():
        acc = fn.create_accumulator()
        for e in window_events:
            fn.add_input(acc, e)
        wv = got[key]
        assert _close(MergeTiles(fn).extract_output(coder.decode(wv.value[1])), fn.extract_output(acc))
        # timestamped at the earliest tile start among the window's partials
        earliest = min(tile_start(e.event_time_ms, tile_ms(VIEW)) for e in window_events)
        assert wv.timestamp == Timestamp(micros=earliest * 1000)
    # the partials' accumulators were merged into fresh ones, never changed
    assert {key: coder.encode(acc) for key, acc in tiles.items()} == before


def test_flushes_when_full_or_held_too_long_and_the_pieces_merge_to_the_same_values():
    fn = FeatureViewCombineFn(SPEC, VIEW)
    coder = fn.get_accumulator_coder()
    events = _events(300, seed=5)
    inputs = [_windowed(entity, start, Partial(acc, coder)) for (entity, start), acc in _tiles(events, fn).items()]
    whole = _run(PreCombinePerWindow(fn), inputs)
    small = PreCombinePerWindow(fn)
    small.MAX_GROUPS = 7
    pieces = _run(small, inputs)
    assert len(pieces) > len(whole)
    impatient = PreCombinePerWindow(fn)
    impatient.FLUSH_SECONDS = 0.0  # every partial held for "too long": each leaves at once
    one_by_one = _run(impatient, inputs)
    assert len(one_by_one) == sum(len(wv.windows) for wv in inputs)
    merge = MergeTiles(fn)

    def merged(outputs):
        per_key: dict = {}
        for wv in outputs:
            key = (wv.value[0], wv.windows[0])
            per_key[key] = merge.add_input(per_key.get(key) or merge.create_accumulator(), wv.value[1])
        return {key: merge.extract_output(acc) for key, acc in per_key.items()}

    assert merged(pieces) == merged(whole)
    assert merged(one_by_one) == merged(whole)


def test_a_shipped_partial_carries_its_encoded_accumulator():
    fn = FeatureViewCombineFn(SPEC, VIEW)
    coder = fn.get_accumulator_coder()
    acc = next(iter(_tiles(_events(50), fn).values()))
    shipped = pickle.loads(pickle.dumps(Partial(acc, coder)))
    assert shipped.encoded(coder) == coder.encode(acc)
    assert fn.extract_output(shipped.accumulator(coder)) == fn.extract_output(acc)


def test_merge_tiles_gives_the_same_values_however_partials_are_grouped():
    """MergeTiles' first partial becomes the accumulator (no copy of an empty one): adding all
    partials, merging per-partial accumulators with empty ones among them, and merging nothing
    agree with the events added one by one."""
    fn = FeatureViewCombineFn(SPEC, VIEW)
    coder = fn.get_accumulator_coder()
    events = [e for e in _events(200, seed=9) if e.keys[0] == "u1"]
    encoded = [coder.encode(acc) for acc in _tiles(events, fn).values()]
    merge = MergeTiles(fn)
    want = fn.create_accumulator()
    for e in events:
        fn.add_input(want, e)

    added = merge.create_accumulator()
    for data in encoded:
        added = merge.add_input(added, data)
    singles = [merge.add_input(merge.create_accumulator(), data) for data in encoded]
    merged = merge.merge_accumulators([merge.create_accumulator()] + singles + [merge.create_accumulator()])
    assert _close(merge.extract_output(added), fn.extract_output(want))
    assert _close(merge.extract_output(merged), fn.extract_output(want))
    # merging only empty accumulators gives an empty one, which a later partial replaces
    empty = merge.merge_accumulators([merge.create_accumulator(), merge.create_accumulator()])
    assert merge.extract_output(empty) == fn.extract_output(fn.create_accumulator())
    assert _close(merge.extract_output(merge.add_input(empty, encoded[0])),
                  fn.extract_output(coder.decode(encoded[0])))
