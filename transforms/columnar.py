"""Vectorized parse and pre-aggregation of JSONL chunks with pyarrow, for the bounded fast path.

A chunk of lines is parsed by `pyarrow.json` against a schema derived from the spec (one JSON
type per field), checked column-wise, and aggregated per (entity, tile) with Arrow group-bys into
the same accumulators `FeatureViewCombineFn` builds event by event. Anything the columnar path is
not sure about - a block Arrow refuses, a row with a null timestamp or key, a non-finite number -
goes back to the event-at-a-time parser, which gives the exact dead letter. Results therefore
equal the event path's (sums up to floating-point rounding, sketches within their error).
"""

from __future__ import annotations

import io
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from datasketches import hll_sketch, kll_doubles_sketch

from transforms.aggregate import (
    HLL_LG_K,
    KLL_K,
    FeatureViewCombineFn,
    _Count,
    _Distinct,
    _First,
    _Last,
    _Max,
    _Mean,
    _Min,
    _Percentile,
    _Sum,
)
from transforms.events import MAX_EPOCH_MS, ParsePlan
from transforms.spec import FeatureViewSpec

TILE = "__tile"
MIN_BLOCK = 64  # below this many lines a refused block is parsed line by line


def _where_type(values: tuple) -> Optional[pa.DataType]:
    if all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if all(isinstance(v, str) for v in values):
        return pa.string()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return None


def columnar_schema(plan: ParsePlan) -> Optional[pa.Schema]:
    """One Arrow type per field the spec reads, or None when a field needs two JSON types."""
    types: dict[str, pa.DataType] = {plan.timestamp_field: pa.int64()}

    def want(field: str, kind: Optional[pa.DataType]) -> bool:
        if kind is None or types.setdefault(field, kind) != kind:
            return False
        return True

    ok = True
    for _, key, dtype in plan.entities:
        ok &= want(key, pa.int64() if dtype == "int64" else pa.string())
    for field in plan.num_fields:
        ok &= want(field, pa.float64())
    for field in plan.str_fields:
        ok &= want(field.name, pa.string())  # numbers for "text" fields take the event path
    for clause in plan.where_clauses:
        for field, allowed in clause:
            ok &= want(field, _where_type(allowed))
    if plan.id_field:
        ok &= want(plan.id_field, pa.string())
    return pa.schema(list(types.items())) if ok else None


class ColumnarChunks:
    """Parses chunks of JSONL lines into Arrow tables; returns the lines it leaves to the event path."""

    def __init__(self, plan: ParsePlan, schema: pa.Schema):
        self._plan = plan
        self._parse_options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        self._exclude: Optional[pa.Array] = None

    def parse(self, lines: list[bytes], exclude_ids: Optional[pa.Array] = None) -> tuple[list[pa.Table], list[bytes]]:
        """-> (tables of clean rows, lines for the event path). Rows whose id is in
        `exclude_ids` (known duplicates) also go to the event path."""
        tables: list[pa.Table] = []
        slow: list[bytes] = []
        self._exclude = exclude_ids if exclude_ids is not None and len(exclude_ids) else None
        self._parse_block(lines, tables, slow)
        return tables, slow

    def _parse_block(self, lines: list[bytes], tables: list[pa.Table], slow: list[bytes]) -> None:
        try:
            table = pj.read_json(io.BytesIO(b"\n".join(lines)), parse_options=self._parse_options,
                                 read_options=pj.ReadOptions(use_threads=False, block_size=1 << 26))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            if len(lines) <= MIN_BLOCK:
                slow.extend(lines)
                return
            middle = len(lines) // 2  # bisect to isolate the lines Arrow refuses
            self._parse_block(lines[:middle], tables, slow)
            self._parse_block(lines[middle:], tables, slow)
            return
        if table.num_rows != len(lines):  # e.g. a line with two objects: let the event path judge
            slow.extend(lines)
            return
        good = self._valid_rows(table)
        if not pc.all(good).as_py():
            bad = pc.invert(good)
            slow.extend(line for line, is_bad in zip(lines, bad.to_pylist()) if is_bad)
            table = table.filter(good)
        tables.append(table)

    def _valid_rows(self, table: pa.Table) -> pa.ChunkedArray:
        plan = self._plan
        ts = table[plan.timestamp_field]
        good = pc.and_kleene(pc.greater_equal(ts, 0), pc.less_equal(ts, MAX_EPOCH_MS))
        for _, key, dtype in plan.entities:
            column = table[key]
            present = pc.is_valid(column) if dtype == "int64" else pc.not_equal(column, "")
            good = pc.and_kleene(good, present)
        for field in plan.num_fields:
            column = table[field]
            good = pc.and_kleene(good, pc.or_kleene(pc.is_null(column), pc.is_finite(column)))
        if self._exclude is not None:
            duplicate = pc.fill_null(pc.is_in(table[plan.id_field], value_set=self._exclude), False)
            good = pc.and_kleene(good, pc.invert(duplicate))
        return pc.fill_null(good, False)


def _keys(table: pa.Table, names: list[str]) -> list[tuple]:
    return list(zip(*(table[n].to_pylist() for n in names)))


class ColumnarAggregator:
    """Arrow tables -> {(entity, tile_start): accumulator} for one view, in CombineFn layout."""

    def __init__(self, plan: ParsePlan, view: FeatureViewSpec, fn: FeatureViewCombineFn, tile_ms: int):
        self._plan = plan
        self._fn = fn
        self._tile = tile_ms
        self._key = next(k for name, k, _ in plan.entities if name == view.entity)
        self._masks = {op.mask: clause for op, clause in zip(fn._ops, self._clauses(view))}

    def _clauses(self, view: FeatureViewSpec) -> list:
        from transforms.events import where_key

        return [where_key(f.where) if f.where else None for f in view.features]

    def aggregate(self, table: pa.Table, into: dict) -> None:
        ts = table[self._plan.timestamp_field].to_numpy()
        table = table.append_column(TILE, pa.array(ts - ts % self._tile))
        if table.schema.field(self._key).type != pa.string():  # the event path keys by str
            index = table.schema.get_field_index(self._key)
            table = table.set_column(index, self._key, pc.cast(table[self._key], pa.string()))
        keys = [self._key, TILE]
        grouped = table.group_by(keys, use_threads=False).aggregate([(self._plan.timestamp_field, "max")])
        fn = self._fn
        accs: dict[tuple, list] = {}
        for key, max_ts in zip(_keys(grouped, keys), grouped[f"{self._plan.timestamp_field}_max"].to_pylist()):
            acc = fn.create_accumulator()
            acc[0] = max_ts
            accs[key] = acc
        filtered: dict[int, pa.Table] = {}
        for i, op in enumerate(fn._ops, 1):
            rows = filtered.get(op.mask)
            if rows is None:
                rows = filtered[op.mask] = self._filter(table, op.mask)
            if rows.num_rows:
                self._fill(op, i, rows, keys, accs)
        for key, acc in accs.items():
            current = into.get(key)
            into[key] = acc if current is None else fn.merge_accumulators([current, acc])

    def _filter(self, table: pa.Table, mask: int) -> pa.Table:
        if not mask:
            return table
        clause = self._masks[mask]
        keep = None
        for field, allowed in clause:
            kind = table.schema.field(field).type
            match = pc.is_in(table[field], value_set=pa.array(list(allowed), kind))
            keep = match if keep is None else pc.and_(keep, match)
        return table.filter(pc.fill_null(keep, False))

    def _fill(self, op: Any, i: int, rows: pa.Table, keys: list[str], accs: dict) -> None:
        plan = self._plan
        if isinstance(op, _Count):
            g = rows.group_by(keys, use_threads=False).aggregate([(keys[0], "count")])
            for key, n in zip(_keys(g, keys), g[f"{keys[0]}_count"].to_pylist()):
                accs[key][i] = n
            return
        if isinstance(op, (_First, _Last)):
            field = plan.num_fields[op.slot] if op.values == "nums" else plan.str_fields[op.slot].name
        elif isinstance(op, _Distinct):
            field = plan.str_fields[op.slot].name
        else:
            field = plan.num_fields[op.slot]
        rows = rows.filter(pc.is_valid(rows[field]))
        if not rows.num_rows:
            return
        if isinstance(op, (_Sum, _Mean, _Min, _Max)):
            g = rows.group_by(keys, use_threads=False).aggregate(
                [(field, "sum"), (field, "count"), (field, "min"), (field, "max")])
            columns = [g[f"{field}_{a}"].to_pylist() for a in ("sum", "count", "min", "max")]
            for key, total, n, lo, hi in zip(_keys(g, keys), *columns):
                accs[key][i] = (total if isinstance(op, _Sum) else (total, n) if isinstance(op, _Mean)
                                else lo if isinstance(op, _Min) else hi)
        elif isinstance(op, (_First, _Last)):
            ts = plan.timestamp_field
            rows = rows.sort_by([(k, "ascending") for k in keys] + [(ts, "ascending"), (field, "ascending")])
            which = "first" if isinstance(op, _First) else "last"
            g = rows.group_by(keys, use_threads=False).aggregate([(ts, which), (field, which)])
            for key, t, value in zip(_keys(g, keys), g[f"{ts}_{which}"].to_pylist(), g[f"{field}_{which}"].to_pylist()):
                accs[key][i] = (t, value)
        elif isinstance(op, _Distinct):
            g = rows.group_by(keys, use_threads=False).aggregate([(field, "list")])
            for key, values in zip(_keys(g, keys), g[f"{field}_list"].to_pylist()):
                sketch = hll_sketch(HLL_LG_K)
                for value in values:
                    sketch.update(value)
                accs[key][i] = sketch
        else:
            assert isinstance(op, _Percentile), op
            g = rows.group_by(keys, use_threads=False).aggregate([(field, "list")])
            for key, values in zip(_keys(g, keys), g[f"{field}_list"].to_pylist()):
                sketch = kll_doubles_sketch(KLL_K)
                sketch.update(np.asarray(values, dtype=np.float64))
                accs[key][i] = sketch
