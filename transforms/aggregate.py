"""One CombineFn per feature view: every feature of the view in one pass over its events.

The accumulator is a flat list `[max_event_time_ms, state_0, state_1, ...]`; approximate
aggregations keep Apache DataSketches (HLL for distinct counts, KLL for quantiles), which merge
cheaply and serialize compactly through `AccumulatorCoder`.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import apache_beam as beam
from apache_beam.coders import Coder, FastPrimitivesCoder
from datasketches import hll_sketch, hll_union, kll_doubles_sketch

from transforms.parse import ParsePlan
from transforms.records import Event
from transforms.spec import FeatureSpecFile, FeatureViewSpec

HLL_LG_K = 12  # relative standard error ~1.6 %; a few KB per sketch at most
KLL_K = 200  # normalized rank error ~1.3 %


class _Op:
    """One feature's aggregation: create/add/merge/extract over a small state."""

    __slots__ = ("mask", "slot")
    empty: Any = None

    def __init__(self, mask: int, slot: int):
        self.mask = mask
        self.slot = slot

    def create(self) -> Any:
        return self.empty

    def encode(self, state: Any) -> Any:
        return state

    def decode(self, state: Any) -> Any:
        return state

    def extract(self, state: Any) -> Any:
        return state


class _Count(_Op):
    empty = 0

    def add(self, state: int, event: Event) -> int:
        return state + 1

    def merge(self, a: int, b: int) -> int:
        return a + b


class _Sum(_Op):
    empty = 0.0

    def add(self, state: float, event: Event) -> float:
        value = event.nums[self.slot]
        return state if value is None else state + value

    def merge(self, a: float, b: float) -> float:
        return a + b


class _Mean(_Op):
    empty = (0.0, 0)

    def add(self, state: tuple, event: Event) -> tuple:
        value = event.nums[self.slot]
        return state if value is None else (state[0] + value, state[1] + 1)

    def merge(self, a: tuple, b: tuple) -> tuple:
        return (a[0] + b[0], a[1] + b[1])

    def extract(self, state: tuple) -> Optional[float]:
        return state[0] / state[1] if state[1] else None


class _Min(_Op):
    def add(self, state: Optional[float], event: Event) -> Optional[float]:
        value = event.nums[self.slot]
        if value is None:
            return state
        return value if state is None or value < state else state

    def merge(self, a: Optional[float], b: Optional[float]) -> Optional[float]:
        return b if a is None else a if b is None else min(a, b)


class _Max(_Op):
    def add(self, state: Optional[float], event: Event) -> Optional[float]:
        value = event.nums[self.slot]
        if value is None:
            return state
        return value if state is None or value > state else state

    def merge(self, a: Optional[float], b: Optional[float]) -> Optional[float]:
        return b if a is None else a if b is None else max(a, b)


class _Last(_Op):
    """(event time, value) with the greatest time; ties broken by value so merges are deterministic."""

    __slots__ = ("values",)

    def __init__(self, mask: int, slot: int, values: str):
        super().__init__(mask, slot)
        self.values = values  # "nums" or "strs"

    def add(self, state: Optional[tuple], event: Event) -> Optional[tuple]:
        value = getattr(event, self.values)[self.slot]
        if value is None:
            return state
        return self.merge(state, (event.event_time_ms, value))

    def merge(self, a: Optional[tuple], b: Optional[tuple]) -> Optional[tuple]:
        return b if a is None else a if b is None else max(a, b)

    def extract(self, state: Optional[tuple]) -> Any:
        return None if state is None else state[1]


class _First(_Last):
    def merge(self, a: Optional[tuple], b: Optional[tuple]) -> Optional[tuple]:
        return b if a is None else a if b is None else min(a, b)


class _Distinct(_Op):
    def add(self, state: Optional[hll_sketch], event: Event) -> Optional[hll_sketch]:
        value = event.strs[self.slot]
        if value is None:
            return state
        if state is None:
            state = hll_sketch(HLL_LG_K)
        state.update(value)
        return state

    def merge(self, a: Optional[hll_sketch], b: Optional[hll_sketch]) -> Optional[hll_sketch]:
        if a is None or b is None:  # copy: the merged accumulator may be mutated later
            return a if b is None else self.decode(self.encode(b))
        union = hll_union(HLL_LG_K)
        union.update(a)
        union.update(b)
        return union.get_result()

    def extract(self, state: Optional[hll_sketch]) -> int:
        return 0 if state is None else int(round(state.get_estimate()))

    def window(self, states: list) -> int:
        """extract(the union of one window's tile sketches), leaving the tiles unchanged."""
        sketches = [s for s in states if s is not None]
        if len(sketches) < 2:
            return self.extract(sketches[0] if sketches else None)
        union = hll_union(HLL_LG_K)
        for sketch in sketches:
            union.update(sketch)
        return int(round(union.get_estimate()))

    def encode(self, state: Optional[hll_sketch]) -> Optional[bytes]:
        return None if state is None else state.serialize_compact()

    def decode(self, state: Optional[bytes]) -> Optional[hll_sketch]:
        return None if state is None else hll_sketch.deserialize(state)


class _Percentile(_Op):
    __slots__ = ("q",)

    def __init__(self, mask: int, slot: int, q: float):
        super().__init__(mask, slot)
        self.q = q

    def add(self, state: Optional[kll_doubles_sketch], event: Event) -> Optional[kll_doubles_sketch]:
        value = event.nums[self.slot]
        if value is None:
            return state
        if state is None:
            state = kll_doubles_sketch(KLL_K)
        state.update(value)
        return state

    def merge(self, a, b):
        if a is None or b is None:  # copy: the merged accumulator may be mutated later
            return a if b is None else self.decode(self.encode(b))
        a.merge(b)
        return a

    def extract(self, state: Optional[kll_doubles_sketch]) -> Optional[float]:
        return None if state is None else float(state.get_quantile(self.q))

    def window(self, states: list) -> Optional[float]:
        """extract(the merge of one window's tile sketches), leaving the tiles unchanged."""
        sketches = [s for s in states if s is not None]
        if len(sketches) < 2:
            return self.extract(sketches[0] if sketches else None)
        merged = self.decode(self.encode(sketches[0]))  # a copy: the tiles stay unchanged
        for sketch in sketches[1:]:
            merged.merge(sketch)
        return self.extract(merged)

    def encode(self, state: Optional[kll_doubles_sketch]) -> Optional[bytes]:
        return None if state is None else state.serialize()

    def decode(self, state: Optional[bytes]) -> Optional[kll_doubles_sketch]:
        return None if state is None else kll_doubles_sketch.deserialize(state)


def compile_ops(spec: FeatureSpecFile, view: FeatureViewSpec, plan: ParsePlan) -> list[_Op]:
    ops: list[_Op] = []
    for feature in view.features:
        mask = plan.where_bit(feature.where)
        agg = feature.agg
        if agg == "count":
            ops.append(_Count(mask, 0))
        elif agg == "approx_count_distinct":
            ops.append(_Distinct(mask, plan.str_index(feature.field, "text")))
        elif agg in ("first", "last"):
            cls = _First if agg == "first" else _Last
            if spec.value_type(feature) == "double":
                ops.append(cls(mask, plan.num_index(feature.field), "nums"))
            else:
                ops.append(cls(mask, plan.str_index(feature.field, "string"), "strs"))
        elif agg == "approx_percentile":
            ops.append(_Percentile(mask, plan.num_index(feature.field), feature.q))
        else:
            cls = {"sum": _Sum, "mean": _Mean, "min": _Min, "max": _Max}[agg]
            ops.append(cls(mask, plan.num_index(feature.field)))
    return ops


class AccumulatorCoder(Coder):
    """Encodes accumulators as primitives (sketches as their compact bytes) - no pickling."""

    def __init__(self, ops: list[_Op]):
        self._ops = ops
        self._inner = FastPrimitivesCoder()
        # Only sketches change form; the other states are primitives already.
        self._convert = [(i, op) for i, op in enumerate(ops, 1) if type(op).encode is not _Op.encode]

    def encode(self, acc: list) -> bytes:
        if self._convert:
            acc = list(acc)
            for i, op in self._convert:
                acc[i] = op.encode(acc[i])
        return self._inner.encode(acc)

    def decode(self, data: bytes) -> list:
        acc = self._inner.decode(data)
        for i, op in self._convert:
            acc[i] = op.decode(acc[i])
        return acc

    def is_deterministic(self) -> bool:
        return False


class FeatureViewCombineFn(beam.CombineFn):
    """All features of one view in one pass. Output: (max_event_time_ms, value_0, value_1, ...)."""

    def __init__(self, spec: FeatureSpecFile, view: FeatureViewSpec):
        self._ops = compile_ops(spec, view, ParsePlan.from_spec(spec))

    def create_accumulator(self) -> list:
        return [-1] + [op.create() for op in self._ops]

    def add_input(self, acc: list, event: Event) -> list:
        if event.event_time_ms > acc[0]:
            acc[0] = event.event_time_ms
        matches = event.matches
        for i, op in enumerate(self._ops, 1):
            if op.mask and not matches & op.mask:
                continue
            acc[i] = op.add(acc[i], event)
        return acc

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        it = iter(accumulators)
        result = next(it, None)
        if result is None:  # Beam may merge an empty set (e.g. a pane with no new input)
            return self.create_accumulator()
        for acc in it:
            if acc[0] > result[0]:
                result[0] = acc[0]
            for i, op in enumerate(self._ops, 1):
                result[i] = op.merge(result[i], acc[i])
        return result

    def extract_output(self, acc: list) -> tuple:
        return (acc[0],) + tuple(op.extract(state) for op, state in zip(self._ops, acc[1:]))

    def get_accumulator_coder(self) -> Coder:
        return AccumulatorCoder(self._ops)
