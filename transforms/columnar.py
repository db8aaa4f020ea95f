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
import re
from collections import deque
from typing import Any, NamedTuple, Optional

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
from transforms.dedup import hash_ids
from transforms.parse import MAX_DEPTH, ParsePlan
from transforms.spec import FeatureViewSpec

TILE = "__tile"
MIN_BLOCK = 64  # below this many lines a refused block is parsed line by line
_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")  # a line bytes.strip() would leave empty


def block_lines(block: bytes) -> list[bytes]:
    """The non-blank lines of a block of JSONL, without line endings."""
    return [line.rstrip(b"\r") for line in block.split(b"\n") if line.strip()]


# Lines where Arrow's JSON reader is more lenient than the parser (decode_json): it takes NaN and
# Infinity, invalid UTF-8 in fields it skips, a byte-order mark, and any depth of nesting. They
# take the event path, so both paths give every line the same verdict.
_LENIENT = (b"NaN", b"Infinity", b"\xef\xbb\xbf")


def _deep(line: bytes) -> bool:
    return len(line) > MAX_DEPTH and line.count(b"[") + line.count(b"{") > MAX_DEPTH


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")  # strict: also refuses encoded surrogates
        return True
    except UnicodeDecodeError:
        return False


def screen_block(block: bytes) -> tuple[bytes, list[bytes]]:
    """(the block without the lines Arrow would judge differently from the parser, those lines)."""
    suspicious = any(token in block for token in _LENIENT) or not _utf8(block)
    if not suspicious and len(block) > MAX_DEPTH:
        breaks = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
        spans = np.diff(breaks, prepend=-1, append=len(block))
        suspicious = bool(spans.max() > MAX_DEPTH)
    if not suspicious:
        return block, []
    clean, slow = [], []
    for line in block_lines(block):
        if any(token in line for token in _LENIENT) or _deep(line) or not _utf8(line):
            slow.append(line)
        else:
            clean.append(line)
    return (b"\n".join(clean) + b"\n" if clean else b""), slow


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
        self._exclude: Optional[np.ndarray] = None

    def parse_block(self, block: bytes, exclude_ids: Optional[np.ndarray] = None) -> tuple[list[pa.Table], list[bytes]]:
        """A block of whole JSONL lines -> (tables of clean rows, lines for the event path).
        Rows whose id hash is in `exclude_ids` (ids that repeat) also go to the event path. The
        block is parsed as it is, without splitting it into lines, unless Arrow refuses it or
        some rows need the event path; then refused lines are isolated by bisection."""
        self._exclude = exclude_ids if exclude_ids is not None and len(exclude_ids) else None
        block, lenient = screen_block(block)
        tables, slow = self._parse_screened(block)
        return tables, lenient + slow

    def _parse_screened(self, block: bytes) -> tuple[list[pa.Table], list[bytes]]:
        if not block:
            return [], []
        body = block[:-1] if block.endswith(b"\n") else block
        if _BLANK_LINE.search(b"\n" + body + b"\n") is None:  # else rows could not be matched to lines
            try:
                table = self._read(block)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                table = None
            if table is not None and table.num_rows == body.count(b"\n") + 1:
                good = self._valid_rows(table)
                if pc.all(good).as_py():
                    return [table], []
                lines = [line.rstrip(b"\r") for line in body.split(b"\n")]
                bad = pc.invert(good).to_pylist()
                return [table.filter(good)], [line for line, is_bad in zip(lines, bad) if is_bad]
        tables: list[pa.Table] = []
        slow: list[bytes] = []
        self._parse_block(block_lines(block), tables, slow)
        return tables, slow

    def _read(self, data: bytes) -> pa.Table:
        return pj.read_json(io.BytesIO(data), parse_options=self._parse_options,
                            read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(data) + 1)))

    def _parse_block(self, lines: list[bytes], tables: list[pa.Table], slow: list[bytes]) -> None:
        try:
            table = self._read(b"\n".join(lines))
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
        good = pc.and_kleene(pc.greater_equal(ts, 0), pc.less_equal(ts, plan.max_event_ms))
        for _, key, dtype in plan.entities:
            column = table[key]
            present = pc.is_valid(column) if dtype == "int64" else pc.not_equal(column, "")
            good = pc.and_kleene(good, present)
        for field in plan.num_fields:
            column = table[field]
            good = pc.and_kleene(good, pc.or_kleene(pc.is_null(column), pc.is_finite(column)))
        if self._exclude is not None:
            ids = table[plan.id_field]
            repeated = np.isin(hash_ids(ids), self._exclude) & pc.is_valid(ids).to_numpy()
            good = pc.and_kleene(good, pa.array(~repeated))
        return pc.fill_null(good, False)


def _keys(table: pa.Table, names: list[str]) -> list[tuple]:
    return list(zip(*(table[n].to_pylist() for n in names)))


def _lists(column: pa.ChunkedArray) -> tuple[Any, np.ndarray]:
    """A list column as (flat values, offsets): group i's values are values[o[i]:o[i+1]]."""
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy()
    return lists.values, offsets - offsets[0]


class _Extreme(NamedTuple):
    """first/last as a hash min/max of one int64 column: rank of the time * n_values + rank of
    the value, so the least/greatest (time, value) pair wins as in `_First/_Last.merge`,
    without sorting the rows."""

    column: str
    times: list  # time of each time rank
    values: list  # value of each value rank
    n_values: int


class ColumnarAggregator:
    """Arrow tables -> {(entity, tile_start): accumulator} for one view, in CombineFn layout.

    One hash group-by per distinct `where` clause computes every feature of the view (counts,
    sums, min/max, first/last, and the value lists the sketches are built from)."""

    def __init__(self, plan: ParsePlan, view: FeatureViewSpec, fn: FeatureViewCombineFn, tile_ms: int):
        self._plan = plan
        self._fn = fn
        self._tile = tile_ms
        self._key = next(k for name, k, _ in plan.entities if name == view.entity)
        self._masks = {op.mask: clause for op, clause in zip(fn._ops, self._clauses(view))}
        self._by_mask: dict[int, list[tuple[int, Any]]] = {0: []}
        for i, op in enumerate(fn._ops, 1):
            self._by_mask.setdefault(op.mask, []).append((i, op))

    def _clauses(self, view: FeatureViewSpec) -> list:
        from transforms.parse import where_key

        return [where_key(f.where) if f.where else None for f in view.features]

    def aggregate(self, table: pa.Table, into: dict) -> None:
        ts = table[self._plan.timestamp_field].to_numpy()
        table = table.append_column(TILE, pa.array(ts - ts % self._tile))
        if table.schema.field(self._key).type != pa.string():  # the event path keys by str
            index = table.schema.get_field_index(self._key)
            table = table.set_column(index, self._key, pc.cast(table[self._key], pa.string()))
        keys = [self._key, TILE]
        fn = self._fn
        accs: dict[tuple, list] = {}
        for mask, ops in self._by_mask.items():  # mask 0 (every row) first: it makes the tiles
            rows = self._filter(table, mask)
            if mask and not rows.num_rows:
                continue
            group_keys, columns = self._group(rows, keys, ops, with_time=not mask)
            if not mask and len(ops) == len(fn._ops):  # the columns are the accumulators
                accs = dict(zip(group_keys, map(list, zip(*columns))))
                continue
            if not mask:
                template = fn.create_accumulator()
                accs = {key: list(template) for key in group_keys}
                for key, max_ts in zip(group_keys, columns.pop(0)):
                    accs[key][0] = max_ts
            for key, states in zip(group_keys, zip(*columns)):
                acc = accs[key]
                for (i, _), state in zip(ops, states):
                    acc[i] = state
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

    def _field(self, op: Any) -> str:
        plan = self._plan
        if isinstance(op, (_First, _Last)):
            return plan.num_fields[op.slot] if op.values == "nums" else plan.str_fields[op.slot].name
        if isinstance(op, _Distinct):
            return plan.str_fields[op.slot].name
        return plan.num_fields[op.slot]

    def _group(self, rows: pa.Table, keys: list[str], ops: list[tuple[int, Any]],
               with_time: bool) -> tuple[list[tuple], list[list]]:
        """One group-by of `rows` by (entity, tile) -> (keys, [max time,] one state list per op)."""
        ts = self._plan.timestamp_field
        aggregations: dict[tuple[str, str], str] = {}

        def want(column: str, function: str) -> str:
            return aggregations.setdefault((column, function), f"{column}_{function}")

        extremes: dict[int, _Extreme] = {}
        for i, op in ops:
            if isinstance(op, (_First, _Last)):
                extremes[i], ranked = self._extreme(rows, self._field(op), f"__extreme{i}")
                rows = rows.append_column(extremes[i].column, ranked)
        wanted = []
        if with_time:
            wanted.append(("time", want(ts, "max")))
        for i, op in ops:
            field = "" if isinstance(op, _Count) else self._field(op)
            if isinstance(op, _Count):
                wanted.append((op, want(ts, "count")))
            elif isinstance(op, _Sum):
                wanted.append((op, want(field, "sum")))
            elif isinstance(op, _Mean):
                wanted.append((op, (want(field, "sum"), want(field, "count"))))
            elif isinstance(op, (_Min, _Max)):
                wanted.append((op, want(field, "min" if isinstance(op, _Min) else "max")))
            elif isinstance(op, (_First, _Last)):
                wanted.append((extremes[i], want(extremes[i].column, "min" if isinstance(op, _First) else "max")))
            elif isinstance(op, _Distinct):
                wanted.append((op, want(field, "distinct")))
            else:
                assert isinstance(op, _Percentile), op
                wanted.append((op, want(field, "list")))
        g = rows.group_by(keys, use_threads=False).aggregate(list(aggregations))
        return _keys(g, keys), [_states(what, g, name) for what, name in wanted]

    def _extreme(self, rows: pa.Table, field: str, column: str) -> tuple[_Extreme, pa.Array]:
        """A ranked int64 column for first/last of `field`: dense rank of the time, times the
        number of distinct values, plus the value's rank; null where the value is null."""
        ts_values, ts_rank = np.unique(rows[self._plan.timestamp_field].to_numpy(), return_inverse=True)
        column_values = rows[field].combine_chunks()
        valid = column_values.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_string(column_values.type):
            encoded = column_values.dictionary_encode()
            order = pc.array_sort_indices(encoded.dictionary).to_numpy()
            rank_of_code = np.empty(len(order), dtype=np.int64)
            rank_of_code[order] = np.arange(len(order))
            codes = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)
            value_rank = rank_of_code[codes] if len(order) else np.zeros(len(codes), dtype=np.int64)
            values = encoded.dictionary.take(pa.array(order)).to_pylist()
        else:
            numbers = column_values.to_numpy(zero_copy_only=False)
            values_np, value_rank = np.unique(np.where(valid, numbers, 0.0), return_inverse=True)
            values = values_np.tolist()
        n_values = max(len(values), 1)
        ranked = ts_rank.astype(np.int64) * n_values + value_rank
        return _Extreme(column, ts_values.tolist(), values, n_values), pa.array(ranked, mask=~valid)


def _states(what: Any, g: pa.Table, name: Any) -> list:
    if what == "time" or isinstance(what, (_Count, _Min, _Max)):
        return g[name].to_pylist()
    if isinstance(what, _Sum):
        return [0.0 if v is None else v for v in g[name].to_pylist()]
    if isinstance(what, _Mean):
        totals, counts = g[name[0]].to_pylist(), g[name[1]].to_pylist()
        return [(0.0, 0) if not n else (total, n) for total, n in zip(totals, counts)]
    if isinstance(what, _Extreme):
        times, values, n_values = what.times, what.values, what.n_values
        return [None if r is None else (times[r // n_values], values[r % n_values]) for r in g[name].to_pylist()]
    flat, offsets = _lists(g[name])
    bounds = zip(offsets[:-1].tolist(), offsets[1:].tolist())
    if isinstance(what, _Distinct):
        strings = flat.to_pylist()
        out = []
        for lo, hi in bounds:
            if lo == hi:
                out.append(None)
                continue
            sketch = hll_sketch(HLL_LG_K)
            deque(map(sketch.update, strings[lo:hi]), maxlen=0)
            out.append(sketch)
        return out
    assert isinstance(what, _Percentile), what
    # nulls -> NaN (valid values are finite); a writable copy, as the sketch's update requires
    numbers = np.array(flat.to_numpy(zero_copy_only=False), dtype=np.float64)
    has_nulls = flat.null_count > 0
    out = []
    for lo, hi in bounds:
        chunk = numbers[lo:hi]
        if has_nulls:
            chunk = chunk[~np.isnan(chunk)]
        if not len(chunk):
            out.append(None)
            continue
        sketch = kll_doubles_sketch(KLL_K)
        sketch.update(chunk)
        out.append(sketch)
    return out
