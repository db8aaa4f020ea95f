"""One CombineFn per feature view: every feature of the view in one pass over its events.

The accumulator is a flat list `[max_event_time_ms, state_0, state_1, ...]`, one state per
feature, each kept by its aggregation (transforms/aggregations.py); states serialize through
`AccumulatorCoder` as primitives (sketches as their compact bytes).
"""

from __future__ import annotations

from typing import Iterable

import apache_beam as beam
from apache_beam.coders import Coder, FastPrimitivesCoder

from transforms.aggregations import AGGREGATIONS, Aggregation
from transforms.parse import ParsePlan
from transforms.records import Event
from transforms.spec import FeatureSpecFile, FeatureViewSpec


def compile_aggregations(spec: FeatureSpecFile, view: FeatureViewSpec, plan: ParsePlan) -> list[Aggregation]:
    """One aggregation per feature of the view, wired to where the parser puts its field."""
    out: list[Aggregation] = []
    for feature in view.features:
        cls = AGGREGATIONS[feature.agg]
        values, slot = plan.slot_of(spec, feature)
        out.append(cls(feature, plan.where_bit(feature.where), values, slot, feature.field))
    return out


class AccumulatorCoder(Coder):
    """Encodes accumulators as primitives (sketches as their compact bytes) - no pickling."""

    def __init__(self, ops: list[Aggregation]):
        self.aggregations = ops
        self._inner = FastPrimitivesCoder()
        # Only sketches change form; the other states are primitives already.
        self._convert = [(i, op) for i, op in enumerate(ops, 1) if type(op).encode is not Aggregation.encode]

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
        self.aggregations = compile_aggregations(spec, view, ParsePlan.from_spec(spec))

    def create_accumulator(self) -> list:
        return [-1] + [op.create() for op in self.aggregations]

    def add_input(self, acc: list, event: Event) -> list:
        if event.event_time_ms > acc[0]:
            acc[0] = event.event_time_ms
        matches = event.matches
        for i, op in enumerate(self.aggregations, 1):
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
            for i, op in enumerate(self.aggregations, 1):
                result[i] = op.merge(result[i], acc[i])
        return result

    def extract_output(self, acc: list) -> tuple:
        return (acc[0],) + tuple(op.extract(state) for op, state in zip(self.aggregations, acc[1:]))

    def get_accumulator_coder(self) -> Coder:
        coder = getattr(self, "_coder", None)  # one per CombineFn: callers ask for it per element
        if coder is None:
            coder = self._coder = AccumulatorCoder(self.aggregations)
        return coder
