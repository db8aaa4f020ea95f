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
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from transforms.aggregate import FeatureViewCombineFn
from transforms.aggregations import Grouping
from transforms.dedup import hash_ids
from transforms.events import MAX_DEPTH, ParsePlan
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


class ColumnarAggregator:
    """Arrow tables -> {(entity, tile_start): accumulator} for one view, in CombineFn layout.

    One hash group-by per distinct `where` clause computes every feature of the view; each
    aggregation asks for the Arrow aggregations it needs (transforms/aggregations.py)."""

    def __init__(self, plan: ParsePlan, view: FeatureViewSpec, fn: FeatureViewCombineFn, tile_ms: int):
        from transforms.events import where_key

        self._plan = plan
        self._fn = fn
        self._tile = tile_ms
        self._key = next(k for name, k, _ in plan.entities if name == view.entity)
        clauses = [where_key(f.where) if f.where else None for f in view.features]
        self._masks = {agg.mask: clause for agg, clause in zip(fn.aggregations, clauses)}
        self._by_mask: dict[int, list[tuple[int, Any]]] = {0: []}
        for i, agg in enumerate(fn.aggregations, 1):
            self._by_mask.setdefault(agg.mask, []).append((i, agg))

    def aggregate(self, table: pa.Table, into: dict) -> None:
        ts = table[self._plan.timestamp_field].to_numpy()
        table = table.append_column(TILE, pa.array(ts - ts % self._tile))
        if table.schema.field(self._key).type != pa.string():  # the event path keys by str
            index = table.schema.get_field_index(self._key)
            table = table.set_column(index, self._key, pc.cast(table[self._key], pa.string()))
        keys = [self._key, TILE]
        fn = self._fn
        accs: dict[tuple, list] = {}
        for mask, aggs in self._by_mask.items():  # mask 0 (every row) first: it makes the tiles
            rows = self._filter(table, mask)
            if mask and not rows.num_rows:
                continue
            group_keys, columns = self._group(rows, keys, aggs, with_time=not mask)
            if not mask and len(aggs) == len(fn.aggregations):  # the columns are the accumulators
                accs = dict(zip(group_keys, map(list, zip(*columns))))
                continue
            if not mask:
                template = fn.create_accumulator()
                accs = {key: list(template) for key in group_keys}
                for key, max_ts in zip(group_keys, columns.pop(0)):
                    accs[key][0] = max_ts
            for key, states in zip(group_keys, zip(*columns)):
                acc = accs[key]
                for (i, _), state in zip(aggs, states):
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

    def _group(self, rows: pa.Table, keys: list[str], aggs: list[tuple[int, Any]],
               with_time: bool) -> tuple[list[tuple], list[list]]:
        """One group-by of `rows` by (entity, tile) -> (keys, [max time,] one state list per feature)."""
        ts = self._plan.timestamp_field
        aggregations: dict[tuple[str, str], str] = {}

        def want(column: str, function: str) -> str:
            return aggregations.setdefault((column, function), f"{column}_{function}")

        grouping = Grouping(keys, ts, want)
        readers = []
        if with_time:
            time = want(ts, "max")
            readers.append(lambda g, group_keys: g[time].to_pylist())
        for _, agg in aggs:
            rows, read = agg.group(rows, grouping)
            readers.append(read)
        g = rows.group_by(keys, use_threads=False).aggregate(list(aggregations))
        group_keys = _keys(g, keys)
        return group_keys, [read(g, group_keys) for read in readers]
