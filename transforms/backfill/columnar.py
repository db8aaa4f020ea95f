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
import json
import re
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from transforms.combine import FeatureViewCombineFn
from transforms.aggregations import Grouping
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


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\r\n\x0b\x0c")] = True


def _has_blank_line(body: bytes) -> bool:
    """Whether a line of `body` (lines split at b"\n") is empty or whitespace only. Lines that
    all start with another byte (JSONL lines start with `{`) have none: checked on the lines'
    first bytes, without the regex's pass and copies; otherwise the regex decides."""
    data = np.frombuffer(body, dtype=np.uint8)
    starts = np.flatnonzero(data == 10) + 1
    if len(data) and (not len(starts) or starts[-1] < len(data)) and not _WHITESPACE[data[0]] \
            and not _WHITESPACE[data[starts]].any():
        return False
    return _BLANK_LINE.search(b"\n" + body + b"\n") is not None


def screen_block(block: bytes) -> tuple[bytes, list[bytes]]:
    """(the block without the lines Arrow would judge differently from the parser, those lines)."""
    ascii = block.isascii()  # then it holds no byte-order mark (the third token) either
    suspicious = any(token in block for token in (_LENIENT[:2] if ascii else _LENIENT)) or not (ascii or _utf8(block))
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


# -- timestamps, vectorised --------------------------------------------------------------------
# Real logs give event times as RFC 3339 strings, often mixed with epoch-ms numbers in one file.
# Arrow's JSON reader wants one type per column, so in a block holding both the key of one of
# them is renamed first to the field's name + U+0001 and read as a column of its own (blocks
# holding the escape `\u0001` are left alone): in compact JSON the strings' key, by plain byte
# replacement; otherwise the key of every JSON integer in canonical form followed by `,` or `}`
# (one C-level regex substitution with a constant replacement). Every other spelling of a
# number keeps failing Arrow and takes the event path as before; a row with both keys (a
# repeated key) takes it too. Strings are decided here only when they have the exact
# shape below and denote a valid date and time; every other value becomes null and the row takes
# the event path (datetime.fromisoformat), so both paths give every row the same verdict.
_RFC3339 = (r"^(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[T ](?P<hour>\d{2}):(?P<minute>\d{2}):"
            r"(?P<second>\d{2})(?:\.(?P<fraction>\d{1,6}))?(?P<zone>Z|[+-]\d{2}:\d{2})$")
_DAYS_BEFORE_MONTH = np.array([0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334], dtype=np.int64)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


class _TimestampShapes:
    """Which JSON types the timestamp field has in a block, and the renaming of its numbers."""

    def __init__(self, field: str):
        key = re.escape(json.dumps(field).encode())
        self.string = re.compile(key + rb"\s*:\s*\"")
        self.number = re.compile(key + rb"\s*:\s*-?\d")
        self.integer = re.compile(key + rb"\s*:\s*(?=-?(?:0|[1-9]\d*)\s*[,}])")
        self.renamed_field = field + "\x01"
        renamed = json.dumps(self.renamed_field).encode() + b":"  # `"<field>\u0001":`
        self._renamed_template = renamed.replace(b"\\", b"\\\\")  # its backslash escaped for re.sub
        self._key = json.dumps(field).encode()
        self._renamed_string = renamed + b'"'

    def rename_numbers(self, block: bytes) -> Optional[bytes]:
        """The block with the key of its integer timestamps renamed to `renamed_field`; None when
        the new key could be confused with one of the block."""
        if b"\\u0001" in block or b"\x01" in block:
            return None
        return self.integer.sub(self._renamed_template, block)

    def rename_strings(self, block: bytes) -> Optional[bytes]:
        """The block with the key of its string timestamps renamed to `renamed_field`, when every
        occurrence of the key is written `"<field>":` (compact JSON, as most writers emit it):
        then a string value follows exactly `"<field>":"`, and plain byte replacement does it
        (~10x cheaper than `rename_numbers`' regex). None otherwise, or when the new key could
        be confused with one of the block."""
        if b"\\u0001" in block or b"\x01" in block or block.count(self._key) != block.count(self._key + b":"):
            return None
        return block.replace(self._key + b':"', self._renamed_string)


def _ints(column: pa.Array) -> np.ndarray:
    return pc.cast(pc.if_else(pc.equal(column, ""), "0", column), pa.int64()).to_numpy(zero_copy_only=False)


def epoch_ms(column: pa.Array) -> pa.Array:
    """Timestamps read as strings -> epoch ms (int64): RFC 3339 strings of the shape `_RFC3339`
    with a valid date, time and offset converted exactly as `events.parse_timestamp` does; null
    for everything else (the event path decides those)."""
    text = pc.fill_null(column, "")
    decided = rfc3339_by_cast(text)
    millis, valid = decided if decided is not None else rfc3339_by_fields(text)
    return pa.array(millis, pa.int64(), mask=~valid)


def rfc3339_by_cast(text: pa.Array) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(epoch ms, decided) of the strings of the shape `_RFC3339`, by Arrow's ISO 8601 cast;
    None when Arrow refuses one of them (an invalid date, time or offset: then every string of
    the block takes `rfc3339_by_fields`). Arrow accepts exactly the valid ones of that shape
    from year 0001 on (tests/test_parse.py checks both against each other and the event path),
    and this is ~4x cheaper than splitting them into fields."""
    shaped = pc.and_(pc.match_substring_regex(text, _RFC3339), pc.invert(pc.starts_with(text, "0000")))
    try:
        micros = pc.cast(pc.if_else(shaped, text, "1970-01-01T00:00:00Z"), pa.timestamp("us", "UTC"))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    millis = np.floor_divide(micros.cast(pa.int64()).to_numpy(zero_copy_only=False), 1000)
    return millis, shaped.to_numpy(zero_copy_only=False)


def rfc3339_by_fields(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(epoch ms, decided) of the strings of the shape `_RFC3339` with a valid date, time and
    offset, field by field (the proleptic Gregorian arithmetic `datetime` does)."""
    parts = pc.extract_regex(text, _RFC3339)
    shaped = parts.is_valid().to_numpy(zero_copy_only=False)
    year, month, day, hour, minute, second = (_ints(parts.field(name)) for name in
                                              ("year", "month", "day", "hour", "minute", "second"))
    micros = _ints(pc.utf8_rpad(parts.field("fraction"), width=6, padding="0"))
    zone = parts.field("zone")
    zone_sign = np.where(pc.starts_with(zone, "-").to_numpy(zero_copy_only=False), -1, 1)
    zone_hours = _ints(pc.utf8_slice_codeunits(zone, 1, 3))
    zone_minutes = _ints(pc.utf8_slice_codeunits(zone, 4, 6))
    month_index = np.clip(month, 0, 12)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days_in_month = _DAYS_IN_MONTH[month_index] + ((month == 2) & leap)
    valid = (shaped & (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= days_in_month)
             & (hour <= 23) & (minute <= 59) & (second <= 59) & (zone_hours <= 23) & (zone_minutes <= 59))
    # days since 1970-01-01 of the proleptic Gregorian date (what datetime computes)
    y = year - 1
    days = (y * 365 + y // 4 - y // 100 + y // 400 + _DAYS_BEFORE_MONTH[month_index]
            + ((month > 2) & leap) + day - 1) - 719162
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - zone_sign * (zone_hours * 3600 + zone_minutes * 60)
    return seconds * 1000 + micros // 1000, valid


class ColumnarChunks:
    """Parses chunks of JSONL lines into Arrow tables; returns the lines it leaves to the event path."""

    def __init__(self, plan: ParsePlan, schema: pa.Schema):
        self._plan = plan
        self._parse_options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        ts = plan.timestamp_field
        self._shapes = _TimestampShapes(ts)
        renamed = self._shapes.renamed_field
        # strings in the timestamp field (numbers, if any, renamed)
        as_text = schema.set(schema.get_field_index(ts), pa.field(ts, pa.string())).append(pa.field(renamed, pa.int64()))
        self._text_options = pj.ParseOptions(explicit_schema=as_text, unexpected_field_behavior="ignore")
        # numbers in the timestamp field, strings renamed
        with_text = schema.append(pa.field(renamed, pa.string()))
        self._renamed_text_options = pj.ParseOptions(explicit_schema=with_text, unexpected_field_behavior="ignore")
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
        if not _has_blank_line(body):  # else rows could not be matched to lines
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
        """Whole lines -> a table whose timestamp column is epoch ms (null where undecided)."""
        options = self._parse_options
        if self._shapes.string.search(data) is not None:
            if self._shapes.number.search(data) is not None:
                rewritten = self._shapes.rename_strings(data)
                if rewritten is not None:
                    data, options = rewritten, self._renamed_text_options
                else:
                    rewritten = self._shapes.rename_numbers(data)
                    if rewritten is not None:
                        data, options = rewritten, self._text_options
            else:
                options = self._text_options
        table = pj.read_json(io.BytesIO(data), parse_options=options,
                             read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(data) + 1)))
        if options is self._parse_options:
            return table
        ts, renamed = self._plan.timestamp_field, self._shapes.renamed_field
        text, number = table[ts].combine_chunks(), table[renamed].combine_chunks()
        if options is self._renamed_text_options:
            text, number = number, text
        # a row with both keys (a repeated key) is left to the event path
        times = pc.if_else(pc.is_valid(number), pc.if_else(pc.is_valid(text), pa.scalar(None, pa.int64()), number),
                           epoch_ms(text))
        return table.drop_columns([renamed]).set_column(table.schema.get_field_index(ts), ts, times)

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
        from transforms.parse import where_key

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
