"""Every aggregation a feature can use, one class each, and nothing else knows their insides.

A class says what it reads from an event, what it stores, and how its state is

- updated by one event (`add`, the event path and streaming),
- merged (`merge`: combiners, tiles of the backfill, windows made of tiles),
- turned into the feature value (`extract`),
- serialized (`encode`/`decode`; sketches as their compact bytes, never pickled),
- built from a block of Arrow rows per (entity, tile) (`group`, the backfill's fast path), and
- assembled over every window of one entity at once from its tiles (`over_windows`).

Every state is a value the CombineFn keeps in its accumulator `[max_event_time_ms, state_0, ...]`.
`merge(a, b)` may reuse `a` but never changes `b`, and `merge(create(), b)` is a copy of `b`,
so windows assembled from tiles leave the tiles unchanged. Adding an aggregation: one class
here, registered in `AGGREGATIONS`, and its name in the spec's enum (transforms/spec.py).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any, Callable, ClassVar, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import (
    frequent_items_error_type,
    frequent_strings_sketch,
    hll_sketch,
    hll_union,
    kll_doubles_sketch,
)

HLL_LG_K = 12  # relative standard error ~1.6 %; a few KB per sketch at most
KLL_K = 200  # normalized rank error ~1.3 %
# top_k: a frequent-items map of 2^10 slots. Exact while a window holds fewer than 768 distinct
# values; beyond that each count is within epsilon * (events in the window) of the true count,
# epsilon = 3.5 / 1024 ~ 0.34 % (DataSketches' a-priori bound, `frequent_strings_sketch.get_epsilon_for_lg_size`).
FREQUENT_LG_K = 10


class Gather(NamedTuple):
    """The tiles of every window of one entity (built by transforms/backfill/assembly.py).

    `slots[k]` = (index of each window's k-th tile, whether that tile exists), oldest first;
    `lo[w]:hi[w]` is the range of window w's tiles in the entity's sorted tiles."""

    ends: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    slots: list

    def add(self, values: np.ndarray, zero: Any) -> np.ndarray:
        """Sum over each window's tiles, oldest first (the order merges use)."""
        out = np.full(len(self.ends), zero, dtype=values.dtype)
        for index, present in self.slots:
            out += np.where(present, values[index], zero)
        return out

    def reduce(self, values: np.ndarray, ufunc: np.ufunc, empty: Any) -> np.ndarray:
        out = np.full(len(self.ends), empty, dtype=values.dtype)
        for index, present in self.slots:
            out = ufunc(out, np.where(present, values[index], empty))
        return out

    def ranges(self) -> zip:
        return zip(self.lo.tolist(), self.hi.tolist())


class Grouping(NamedTuple):
    """How the fast path groups a block of Arrow rows: by `keys` (entity, tile); `time` is the
    event-time column; `want(column, function)` asks for an Arrow hash aggregation (shared
    between features) and returns the name of its output column."""

    keys: list
    time: str
    want: Callable[[str, str], str]


# Reads the states of one feature from the grouped table, in the order of the group keys.
Reader = Callable[[pa.Table, list], list]


class Aggregation:
    """One feature's aggregation over a small state (see the module docstring)."""

    name: ClassVar[str]
    # What it reads from an event: "nothing" (count), "number", "text" (any scalar as canonical
    # text, for sketches of values) or "value" (a number or a string, by the feature's dtype).
    reads: ClassVar[str] = "number"
    empty: ClassVar[Any] = None
    parameter: ClassVar[Optional[str]] = None  # the spec key it takes: q, k or cap

    __slots__ = ("mask", "values", "slot", "field", "param")

    def __init__(self, feature: Any, mask: int, values: Optional[str], slot: int, field: Optional[str]):
        self.mask = mask  # the where-clause bit an event must match (0: every event)
        self.values = values  # "nums" | "strs": which of Event's value lists holds the field
        self.slot = slot  # its index there
        self.field = field  # its name (the Arrow column on the fast path)
        self.param = getattr(feature, self.parameter) if self.parameter else None  # its q, k or cap

    @classmethod
    def output_type(cls, field_type: str) -> str:
        """The stored type: int64 | double | string | double_list | string_list | int64_map."""
        return "double"

    def value(self, event: Any) -> Any:
        return getattr(event, self.values)[self.slot]

    # -- one state -------------------------------------------------------------------------
    def create(self) -> Any:
        return self.empty

    def add(self, state: Any, event: Any) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def extract(self, state: Any) -> Any:
        return state

    def encode(self, state: Any) -> Any:
        return state

    def decode(self, state: Any) -> Any:
        return state

    # -- the fast path -----------------------------------------------------------------------
    def group(self, rows: pa.Table, grouping: Grouping) -> tuple[pa.Table, Reader]:
        """Ask for what this feature needs from one group-by of `rows`; return the rows (with any
        column it added) and the reader of its states."""
        raise NotImplementedError

    def over_windows(self, states: list, gather: Gather) -> list:
        """The feature of every window, from the states of the entity's tiles."""
        return [self.window(states[lo:hi]) for lo, hi in gather.ranges()]

    def window(self, states: Sequence) -> Any:
        """extract(merge of `states`), leaving them unchanged."""
        acc = self.create()
        for state in states:
            acc = self.merge(acc, state)
        return self.extract(acc)


def _column(name: str) -> Reader:
    return lambda g, keys: g[name].to_pylist()


def _lists(column: pa.ChunkedArray) -> tuple[Any, np.ndarray]:
    """A list column as (flat values, offsets): group i's values are values[o[i]:o[i+1]]."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy()
    return lists.values, offsets - offsets[0]


def _none_for_nan(values: np.ndarray) -> list:
    return [None if v != v else v for v in values.tolist()]


def _non_null(rows: pa.Table, field: str) -> pa.Table:
    column = rows[field]
    return rows if column.null_count == 0 else rows.filter(pc.is_valid(column))


def _by_key(rows: pa.Table, keys: list, build: Callable[[list], dict]) -> Reader:
    states = build(list(zip(*(rows[k].to_pylist() for k in keys))) if rows.num_rows else [])
    return lambda g, group_keys: [states.get(key) for key in group_keys]


# -- counts and moments ------------------------------------------------------------------------
class Count(Aggregation):
    name = "count"
    reads = "nothing"
    empty = 0

    @classmethod
    def output_type(cls, field_type: str) -> str:
        return "int64"

    def add(self, state: int, event: Any) -> int:
        return state + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def group(self, rows, grouping):
        return rows, _column(grouping.want(grouping.time, "count"))

    def over_windows(self, states, gather):
        return gather.add(np.array(states, dtype=np.int64), 0).tolist()


class Sum(Aggregation):
    name = "sum"
    empty = 0.0

    def add(self, state: float, event: Any) -> float:
        value = self.value(event)
        return state if value is None else state + value

    def merge(self, a: float, b: float) -> float:
        return a + b

    def group(self, rows, grouping):
        name = grouping.want(self.field, "sum")
        return rows, lambda g, keys: [0.0 if v is None else v for v in g[name].to_pylist()]

    def over_windows(self, states, gather):
        return gather.add(np.array(states, dtype=np.float64), 0.0).tolist()


class Mean(Aggregation):
    name = "mean"
    empty = (0.0, 0)

    def add(self, state: tuple, event: Any) -> tuple:
        value = self.value(event)
        return state if value is None else (state[0] + value, state[1] + 1)

    def merge(self, a: tuple, b: tuple) -> tuple:
        return (a[0] + b[0], a[1] + b[1])

    def extract(self, state: tuple) -> Optional[float]:
        return state[0] / state[1] if state[1] else None

    def group(self, rows, grouping):
        total, count = grouping.want(self.field, "sum"), grouping.want(self.field, "count")

        def read(g, keys):
            return [(0.0, 0) if not n else (t, n) for t, n in zip(g[total].to_pylist(), g[count].to_pylist())]

        return rows, read

    def over_windows(self, states, gather):
        total = gather.add(np.array([s[0] for s in states], dtype=np.float64), 0.0)
        n = gather.add(np.array([s[1] for s in states], dtype=np.int64), 0)
        return [t / c if c else None for t, c in zip(total.tolist(), n.tolist())]


class Variance(Aggregation):
    """Population variance. State (n, mean, M2), merged with Chan et al.'s pairwise update, which
    stays accurate where sum-of-squares cancels (large values, small spread)."""

    name = "variance"
    empty = (0, 0.0, 0.0)

    def add(self, state: tuple, event: Any) -> tuple:
        value = self.value(event)
        if value is None:
            return state
        n, mean, m2 = state
        n += 1
        delta = value - mean
        mean += delta / n
        return (n, mean, m2 + delta * (value - mean))

    def merge(self, a: tuple, b: tuple) -> tuple:
        if not a[0]:
            return b
        if not b[0]:
            return a
        n = a[0] + b[0]
        delta = b[1] - a[1]
        return (n, a[1] + delta * b[0] / n, a[2] + b[2] + delta * delta * a[0] * b[0] / n)

    def extract(self, state: tuple) -> Optional[float]:
        return max(state[2], 0.0) / state[0] if state[0] else None

    def group(self, rows, grouping):
        count, mean = grouping.want(self.field, "count"), grouping.want(self.field, "mean")
        variance = grouping.want(self.field, "variance")  # ddof=0 (Arrow's default): population

        def read(g, keys):
            return [(0, 0.0, 0.0) if not n else (n, m, v * n)
                    for n, m, v in zip(g[count].to_pylist(), g[mean].to_pylist(), g[variance].to_pylist())]

        return rows, read

    def over_windows(self, states, gather):
        """The merges of `merge`, elementwise over all windows, oldest tile first."""
        n_t = np.array([s[0] for s in states], dtype=np.int64)
        mean_t = np.array([s[1] for s in states], dtype=np.float64)
        m2_t = np.array([s[2] for s in states], dtype=np.float64)
        size = len(gather.ends)
        n, mean, m2 = np.zeros(size, dtype=np.int64), np.zeros(size), np.zeros(size)
        with np.errstate(invalid="ignore", divide="ignore"):
            for index, present in gather.slots:
                nb = np.where(present, n_t[index], 0)
                mb, m2b = mean_t[index], m2_t[index]
                total = n + nb
                delta = mb - mean
                merged_mean = mean + delta * nb / total
                merged_m2 = m2 + m2b + delta * delta * n * nb / total
                take_b, keep_a = n == 0, nb == 0
                mean = np.where(keep_a, mean, np.where(take_b, mb, merged_mean))
                m2 = np.where(keep_a, m2, np.where(take_b, m2b, merged_m2))
                n = total
        return [self.extract(state) for state in zip(n.tolist(), mean.tolist(), m2.tolist())]


class Stddev(Variance):
    """Population standard deviation: the square root of `variance`, from the same state."""

    name = "stddev"

    def extract(self, state: tuple) -> Optional[float]:
        variance = super().extract(state)
        return None if variance is None else math.sqrt(variance)


class _Extremum(Aggregation):
    function: ClassVar[str]
    ufunc: ClassVar[np.ufunc]
    better: ClassVar[Callable]

    def add(self, state, event):
        value = self.value(event)
        if value is None:
            return state
        return value if state is None else self.better(state, value)

    def merge(self, a, b):
        return b if a is None else a if b is None else self.better(a, b)

    def group(self, rows, grouping):
        return rows, _column(grouping.want(self.field, self.function))

    def over_windows(self, states, gather):
        values = np.array([np.nan if s is None else s for s in states], dtype=np.float64)
        return _none_for_nan(gather.reduce(values, self.ufunc, np.nan))


class Min(_Extremum):
    name, function, ufunc, better = "min", "min", np.fmin, staticmethod(min)


class Max(_Extremum):
    name, function, ufunc, better = "max", "max", np.fmax, staticmethod(max)


# -- values by event time ----------------------------------------------------------------------
class _Ranked(NamedTuple):
    """first/last on the fast path as a hash min/max of one int64 column: rank of the time * n_values
    + rank of the value, so the least/greatest (time, value) pair wins as in `merge`, without
    sorting the rows."""

    times: list  # time of each time rank
    values: list  # value of each value rank
    n_values: int


def _rank(rows: pa.Table, time: str, field: str) -> tuple[_Ranked, pa.Array]:
    ts_values, ts_rank = np.unique(rows[time].to_numpy(), return_inverse=True)
    column = rows[field].combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_string(column.type):
        encoded = column.dictionary_encode()
        order = pc.array_sort_indices(encoded.dictionary).to_numpy()
        rank_of_code = np.empty(len(order), dtype=np.int64)
        rank_of_code[order] = np.arange(len(order))
        codes = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)
        value_rank = rank_of_code[codes] if len(order) else np.zeros(len(codes), dtype=np.int64)
        values = encoded.dictionary.take(pa.array(order)).to_pylist()
    else:
        numbers = column.to_numpy(zero_copy_only=False)
        values_np, value_rank = np.unique(np.where(valid, numbers, 0.0), return_inverse=True)
        values = values_np.tolist()
    n_values = max(len(values), 1)
    ranked = ts_rank.astype(np.int64) * n_values + value_rank
    return _Ranked(ts_values.tolist(), values, n_values), pa.array(ranked, mask=~valid)


class Last(Aggregation):
    """The value of the latest event (state: (event time, value)); ties broken by the greater
    value, so every merge order gives the same answer."""

    name = "last"
    reads = "value"
    pick: ClassVar[Callable] = staticmethod(max)
    function: ClassVar[str] = "max"

    @classmethod
    def output_type(cls, field_type: str) -> str:
        return field_type

    def add(self, state, event):
        value = self.value(event)
        if value is None:
            return state
        return self.merge(state, (event.event_time_ms, value))

    def merge(self, a, b):
        return b if a is None else a if b is None else self.pick(a, b)

    def extract(self, state):
        return None if state is None else state[1]

    def group(self, rows, grouping):
        ranked, column = _rank(rows, grouping.time, self.field)
        name = f"__ranked_{self.name}_{self.field}"
        rows = rows.append_column(name, column) if name not in rows.column_names else rows
        out = grouping.want(name, self.function)
        times, values, n_values = ranked

        def read(g, keys):
            return [None if r is None else (times[r // n_values], values[r % n_values]) for r in g[out].to_pylist()]

        return rows, read

    def over_windows(self, states, gather):
        # Rank the (time, value) states once (by time, then value: the order `pick` compares
        # them in); the window's state is the one of extreme rank.
        present = [i for i, s in enumerate(states) if s is not None]
        if not present:
            return [None] * len(gather.ends)
        times = np.array([states[i][0] for i in present], dtype=np.int64)
        values = [states[i][1] for i in present]
        try:  # dense ranks of the values: Arrow orders strings by UTF-8 bytes, as Python does
            value_rank = pc.rank(pa.array(values), sort_keys="ascending", tiebreaker="dense").to_numpy()
        except (pa.ArrowException, UnicodeError):  # e.g. a lone surrogate from a JSON escape
            distinct = sorted(set(values))
            position = {v: r for r, v in enumerate(distinct)}
            value_rank = np.array([position[v] for v in values], dtype=np.int64)
        order = np.lexsort((value_rank, times))
        if self.pick is min:
            order = order[::-1]
        ranks = np.full(len(states), -1, dtype=np.int64)
        ranks[np.array(present, dtype=np.int64)[order]] = np.arange(len(order))
        lookup = [values[i] for i in order.tolist()] + [None]
        return list(map(lookup.__getitem__, gather.reduce(ranks, np.maximum, -1).tolist()))


class First(Last):
    """The value of the earliest event; ties broken by the smaller value."""

    name = "first"
    pick = staticmethod(min)
    function = "min"


class LastK(Aggregation):
    """The k latest values by event time, newest first (state: up to k (time, value) pairs in
    ascending order; ties in time broken by value, as `last`)."""

    name = "last_k"
    reads = "value"
    parameter = "k"

    @classmethod
    def output_type(cls, field_type: str) -> str:
        return f"{field_type}_list"

    def _keep(self, pairs: list) -> tuple:
        return tuple(pairs[-self.param:])

    def add(self, state, event):
        value = self.value(event)
        if value is None:
            return state
        return self.merge(state, ((event.event_time_ms, value),))

    def merge(self, a, b):
        if not a or not b:
            return b if not a else a
        return self._keep(list(heapq.merge(a, b)))

    def extract(self, state):
        return None if not state else [value for _, value in reversed(state)]

    def group(self, rows, grouping):
        rows_ = _non_null(rows, self.field)
        ordered = rows_.sort_by([(k, "ascending") for k in grouping.keys]
                                + [(grouping.time, "ascending"), (self.field, "ascending")])

        def build(keys: list) -> dict:
            pairs = list(zip(ordered[grouping.time].to_pylist(), ordered[self.field].to_pylist()))
            states, start = {}, 0
            for i in range(1, len(keys) + 1):
                if i == len(keys) or keys[i] != keys[start]:
                    states[keys[start]] = self._keep(pairs[start:i])
                    start = i
            return states

        return rows, _by_key(ordered, grouping.keys, build)


class FirstK(LastK):
    """The k earliest values by event time, oldest first."""

    name = "first_k"

    def _keep(self, pairs: list) -> tuple:
        return tuple(pairs[:self.param])

    def extract(self, state):
        return None if not state else [value for _, value in state]


# -- sketches and counts of values -------------------------------------------------------------
def _value_counts(rows: pa.Table, grouping: Grouping, field: str) -> pa.Table:
    """(keys..., value, count) for every distinct value of `field` per group."""
    return (_non_null(rows, field).group_by(grouping.keys + [field], use_threads=False)
            .aggregate([([], "count_all")]))


def _per_group(counted: pa.Table, grouping: Grouping, field: str, new: Callable, update: Callable) -> Reader:
    def build(keys: list) -> dict:
        states: dict = {}
        for key, value, count in zip(keys, counted[field].to_pylist(), counted["count_all"].to_pylist()):
            state = states.get(key)
            if state is None:
                state = states[key] = new()
            update(state, value, count)
        return states

    return _by_key(counted, grouping.keys, build)


class _Incremental(Aggregation):
    """A state that is None until the feature's first value, then created (`new`) and updated in
    place (`update`); `combine` merges two states into the first. The sketches and histograms."""

    def new(self) -> Any:
        raise NotImplementedError

    def update(self, state: Any, value: Any) -> None:
        raise NotImplementedError

    def combine(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def copy(self, state: Any) -> Any:
        return self.decode(self.encode(state))

    def add(self, state, event):
        value = self.value(event)
        if value is None:
            return state
        if state is None:
            state = self.new()
        self.update(state, value)
        return state

    def merge(self, a, b):
        if a is None or b is None:  # copy: the merged accumulator may be changed later
            return a if b is None else self.copy(b)
        return self.combine(a, b)

    def over_windows(self, states, gather):
        """`window` per window, except that a window with one state is that state's `extract`
        (the same value: `window` would extract a copy of it), computed once per tile: with many
        entities of few events most windows hold one tile, and a tile is in up to K windows."""
        present = np.array([s is not None for s in states], dtype=bool)
        members = gather.add(present.astype(np.int64), 0)
        single = gather.reduce(np.where(present, np.arange(len(states)), -1), np.maximum, -1)
        single[members != 1] = -1  # -1: no state, or several (those are merged below)
        lookup: list = [None] * len(states) + [self.extract(None)]
        for i in np.unique(single[single >= 0]).tolist():
            lookup[i] = self.extract(states[i])
        out = list(map(lookup.__getitem__, single.tolist()))
        several = np.flatnonzero(members > 1)
        for w, lo, hi in zip(several.tolist(), gather.lo[several].tolist(), gather.hi[several].tolist()):
            out[w] = self.window(states[lo:hi])
        return out


class CountDistinct(_Incremental):
    """Approximate distinct count: an HLL sketch (lg_k 12, ~1.6 % relative standard error)."""

    name = "approx_count_distinct"
    reads = "text"

    @classmethod
    def output_type(cls, field_type: str) -> str:
        return "int64"

    def new(self):
        return hll_sketch(HLL_LG_K)

    def update(self, state, value):
        state.update(value)

    def combine(self, a, b):
        union = hll_union(HLL_LG_K)
        union.update(a)
        union.update(b)
        return union.get_result()

    def extract(self, state) -> int:
        return 0 if state is None else int(round(state.get_estimate()))

    def window(self, states):
        sketches = [s for s in states if s is not None]
        if len(sketches) < 2:
            return self.extract(sketches[0] if sketches else None)
        union = hll_union(HLL_LG_K)
        for sketch in sketches:
            union.update(sketch)
        return int(round(union.get_estimate()))

    def encode(self, state):
        return None if state is None else state.serialize_compact()

    def decode(self, state):
        return None if state is None else hll_sketch.deserialize(state)

    def group(self, rows, grouping):
        name = grouping.want(self.field, "distinct")

        def read(g, keys):
            flat, offsets = _lists(g[name])
            strings = flat.to_pylist()
            out = []
            for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
                if lo == hi:
                    out.append(None)
                    continue
                sketch = hll_sketch(HLL_LG_K)
                if hi - lo == 1:  # most tiles of sparse entities: no slice, no map
                    sketch.update(strings[lo])
                else:
                    deque(map(sketch.update, strings[lo:hi]), maxlen=0)
                out.append(sketch)
            return out

        return rows, read


class Percentile(_Incremental):
    """Approximate quantile q: a KLL sketch (k 200, ~1.3 % normalized rank error)."""

    name = "approx_percentile"
    parameter = "q"

    def new(self):
        return kll_doubles_sketch(KLL_K)

    def update(self, state, value):
        state.update(value)

    def combine(self, a, b):
        a.merge(b)
        return a

    def extract(self, state) -> Optional[float]:
        return None if state is None else float(state.get_quantile(self.param))

    def window(self, states):
        """Merged into a fresh sketch (merging leaves its input unchanged), not into a copy of
        the first: no serialize + deserialize per window. Below KLL_K values in all the same
        answer; above, the same sketch error."""
        sketches = [s for s in states if s is not None]
        if len(sketches) < 2:
            return self.extract(sketches[0] if sketches else None)
        merged = kll_doubles_sketch(KLL_K)
        for sketch in sketches:
            merged.merge(sketch)
        return self.extract(merged)

    def encode(self, state):
        return None if state is None else state.serialize()

    def decode(self, state):
        return None if state is None else kll_doubles_sketch.deserialize(state)

    def group(self, rows, grouping):
        name = grouping.want(self.field, "list")

        def read(g, keys):
            flat, offsets = _lists(g[name])
            # nulls -> NaN (valid values are finite); a writable copy, as the sketch's update requires
            numbers = np.array(flat.to_numpy(zero_copy_only=False), dtype=np.float64)
            offsets = np.asarray(offsets, dtype=np.int64)
            if flat.null_count:  # drop the nulls once: group i's values are then numbers[o[i]:o[i+1]]
                valid = ~np.isnan(numbers)
                offsets = np.concatenate([[0], np.cumsum(valid)])[offsets]
                numbers = numbers[valid]
            out: list = [None] * (len(offsets) - 1)
            for i in np.flatnonzero(np.diff(offsets)).tolist():
                sketch = kll_doubles_sketch(KLL_K)
                sketch.update(numbers[offsets[i]:offsets[i + 1]])
                out[i] = sketch
            return out

        return rows, read


class _ValueCounts(_Incremental):
    """Counts per distinct value of the field (read as text): built on the fast path from one
    group-by per (entity, tile, value)."""

    reads = "text"

    def count(self, state: Any, value: str, n: int) -> None:
        raise NotImplementedError

    def update(self, state, value):
        self.count(state, value, 1)

    def group(self, rows, grouping):
        counted = _value_counts(rows, grouping, self.field)
        return rows, _per_group(counted, grouping, self.field, self.new, self.count)


class TopK(_ValueCounts):
    """The k most frequent values, most frequent first (ties: the smaller value first), from a
    DataSketches frequent-items sketch (see FREQUENT_LG_K for its error bound)."""

    name = "top_k"
    parameter = "k"

    @classmethod
    def output_type(cls, field_type: str) -> str:
        return "string_list"

    def new(self):
        return frequent_strings_sketch(FREQUENT_LG_K)

    def count(self, state, value, n):
        state.update(value, n)

    def combine(self, a, b):
        a.merge(b)
        return a

    def extract(self, state) -> Optional[list]:
        if state is None or state.is_empty():
            return None
        items = state.get_frequent_items(frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
        return [item for item, *_ in sorted(items, key=lambda i: (-i[1], i[0]))[:self.param]]

    def encode(self, state):
        return None if state is None else state.serialize()

    def decode(self, state):
        return None if state is None else frequent_strings_sketch.deserialize(state)


class Histogram(_ValueCounts):
    """Exact counts per distinct value: {value: count}, the `cap` most frequent (ties: the smaller
    value first), most frequent first. The state holds every distinct value of the window (use
    top_k for high-cardinality fields); `cap` bounds what is stored."""

    name = "histogram"
    parameter = "cap"

    @classmethod
    def output_type(cls, field_type: str) -> str:
        return "int64_map"

    def new(self):
        return {}

    def count(self, state, value, n):
        state[value] = state.get(value, 0) + n

    def combine(self, a, b):
        for value, n in b.items():
            a[value] = a.get(value, 0) + n
        return a

    def copy(self, state):
        return dict(state)

    def extract(self, state) -> Optional[dict]:
        if not state:
            return None
        return dict(sorted(state.items(), key=lambda kv: (-kv[1], kv[0]))[:self.param])


AGGREGATIONS: dict[str, type[Aggregation]] = {
    cls.name: cls
    for cls in (Count, Sum, Mean, Min, Max, First, Last, CountDistinct, Percentile,
                Variance, Stddev, FirstK, LastK, TopK, Histogram)
}


def aggregation(name: str) -> type[Aggregation]:
    return AGGREGATIONS[name]
