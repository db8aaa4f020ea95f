"""The bounded fast path: parse and pre-aggregate events per (entity, period tile) while reading,
shuffle tiles instead of events, and assemble fixed and sliding windows from tiles.

A sliding window of size S and period P is exactly the union of its S/P tiles of length P, and
a fixed window of size S is one tile of length S, so merging tile accumulators with the view's own
CombineFn gives the values the event-at-a-time path gives (floating-point sums up to rounding,
sketches within their error). Each event is parsed once and touched once per view instead of
size/period times; the shuffle carries one batch of tiles per (view, entity shard) and range
(`tile_batches`), and each shard's tiles are assembled together (`_AssembleWindows`).
Session windows are not tileable; they take the event path.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PBegin
from apache_beam.transforms import window
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.windowed_value import WindowedValue

from transforms.backfill.assembly import assemble_sorted
from transforms.backfill.files import (
    FileRange,
    is_parquet,
    range_key,
    read_blocks,
    read_range,
    split_files,
)
from transforms.backfill.columnar import ColumnarAggregator, ColumnarChunks, block_lines, columnar_schema
from transforms.combine import FeatureViewCombineFn
from transforms.dedup import event_id_of, hash_ids, kept_copies, repeated_hashes, tie_order
from transforms import progress
from transforms.gcpause import gc_paused
from transforms.io.offline import RowTable, columns_to_table
from transforms.parse import DEAD_LETTER_TAG, FieldCounters, ParsePlan, Verdicts, event_timestamp
from transforms.records import Event, FeatureRow, layouts
from transforms.spec import FeatureSpecFile, FeatureViewSpec
from transforms.windows import tile_ms, tile_start, tileable

_LOG = logging.getLogger(__name__)
EVENTS_TAG = "events"
DUPLICATES_TAG = "duplicates"
NEWEST_TAG = "newest"


class _ReadAndPreaggregate(beam.DoFn):
    """FileRange -> ((view, shard), tile batch) per entity shard holding tiles (`TileBatch`), plus
    dead letters."""

    def __init__(self, spec: FeatureSpecFile, views: list[FeatureViewSpec], emit_events: bool,
                 shards: int = 16, id_shards: int = 16):
        self._plan = ParsePlan.from_spec(spec)
        self._shards = shards
        self._id_shards = id_shards
        self._views = [(v.name, self._plan.entity_index(v.entity), tile_ms(v), FeatureViewCombineFn(spec, v))
                       for v in views]
        self._emit_events = emit_events
        schema = None if emit_events else columnar_schema(self._plan)
        self._columnar = ColumnarChunks(self._plan, schema) if schema is not None else None
        self._aggregators = [
            ColumnarAggregator(self._plan, v, fn, tile) for v, (_, _, tile, fn) in zip(views, self._views)
        ] if schema is not None else []
        self._verdicts = Verdicts(self._plan.parse)
        self._events_in = Metrics.counter("parse", "events_in")
        self._parsed = Metrics.counter("parse", "parsed")
        self._dead = Metrics.counter("parse", "dead_lettered")
        self._tiles = Metrics.counter("tiles", "tiles_emitted")
        self._fields = FieldCounters(self._plan)
        self._ranges = Metrics.counter("read", "ranges_read")

    def process(self, element: tuple[FileRange, bytes]) -> Iterable:
        """(range, hashes of its ids that repeat somewhere in the input) -> tiles and letters."""
        file_range, repeated = element
        self._ranges.inc()
        repeated_ids = np.frombuffer(repeated, dtype=np.uint64)
        if self._columnar is None or is_parquet(file_range.path):
            return self._process_blocks((), read_range(file_range), repeated_ids)
        return self._process_blocks(read_blocks(file_range), (), repeated_ids)

    def _process_blocks(self, blocks: Iterable[bytes], raw_events: Iterable[Any],
                        repeated_ids: np.ndarray) -> Iterable:
        """Blocks of JSONL lines (the columnar parse), then raw events one at a time. Events
        whose id hash is in `repeated_ids` are resolved by id shard after a shuffle
        (DUPLICATES_TAG: rows Arrow parsed as Arrow batches, the others as Events)."""
        tiles: list[dict] = [{} for _ in self._views]
        counts = [0, 0]  # seen, parsed
        self._repeated = repeated_ids if len(repeated_ids) else None
        copies: list[pa.Table] = []
        if self._columnar is not None:
            for block in blocks:
                tables, slow = self._columnar.parse_block(block)
                progress.advance(len(block), sum(t.num_rows for t in tables) + len(slow))
                if tables:
                    table = pa.concat_tables(tables)  # bisected blocks: one group-by, not many
                    counts[0] += table.num_rows
                    counts[1] += table.num_rows
                    self._fields.count_table(table)
                    if self._repeated is not None:
                        ids = table[self._plan.id_field]
                        repeated = np.isin(hash_ids(ids), self._repeated) & pc.is_valid(ids).to_numpy()
                        if repeated.any():
                            copies.append(table.filter(repeated))
                            table = table.filter(~repeated)
                    with gc_paused():
                        for aggregator, view_tiles in zip(self._aggregators, tiles):
                            aggregator.aggregate(table, view_tiles)
                yield from self._event_at_a_time(slow, tiles, counts)
        yield from self._event_at_a_time(raw_events, tiles, counts, report=True)
        if copies:
            yield from self._copies_by_shard(pa.concat_tables(copies))
        seen, parsed = counts
        self._events_in.inc(seen)
        self._parsed.inc(parsed)
        self._dead.inc(seen - parsed)
        for (name, _, _, fn), view_tiles in zip(self._views, tiles):
            self._tiles.inc(len(view_tiles))
            yield from tile_batches(name, fn, view_tiles, self._shards)

    def _copies_by_shard(self, table: pa.Table) -> Iterator[pvalue.TaggedOutput]:
        shard = hash_ids(table[self._plan.id_field]) % np.uint64(self._id_shards)
        for s in np.unique(shard).tolist():
            rows = table.filter(pa.array(shard == s))
            yield pvalue.TaggedOutput(DUPLICATES_TAG, (s, _ipc(rows)))

    def _event_at_a_time(self, raw_events: Iterable[Any], tiles: list[dict], counts: list[int],
                         report: bool = False) -> Iterable:
        for batch in _batches(raw_events, 4096):
            if report:  # raw records read one by one (Parquet rows, or lines Arrow is not used for)
                progress.advance(sum(len(r) + 1 for r in batch if isinstance(r, bytes)), len(batch))
            yield from self._parse_batch(batch, tiles, counts)

    def _parse_batch(self, raw_events: list[Any], tiles: list[dict], counts: list[int]) -> Iterable:
        verdicts = self._verdicts
        events = []
        for raw in raw_events:
            counts[0] += 1
            event, letter = verdicts(raw)
            if letter is not None:
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
                continue
            counts[1] += 1
            self._fields.count(event)
            events.append(event)
        repeated = self._repeated
        if repeated is not None and events:
            ids = pa.array([e.event_id for e in events], pa.string())
            hashes = hash_ids(ids)
            exact = (np.isin(hashes, repeated) & ids.is_valid().to_numpy(zero_copy_only=False)).tolist()
            shards = (hashes % np.uint64(self._id_shards)).tolist()
        else:
            exact = shards = [False] * len(events)
        for event, is_repeated, shard in zip(events, exact, shards):
            if is_repeated:
                yield pvalue.TaggedOutput(DUPLICATES_TAG, (shard, event))  # resolved after a shuffle
                continue
            if self._emit_events:  # for views that cannot be tiled (sessions)
                yield pvalue.TaggedOutput(EVENTS_TAG, TimestampedValue(event, event_timestamp(event)))
            add_to_tiles(self._views, tiles, event)


def add_to_tiles(views: Sequence[tuple], tiles: list[dict], event: Event) -> None:
    """Adds an event to its tile's accumulator in each view: tiles[i][(entity, tile start)]."""
    t = event.event_time_ms
    for (_, entity_index, tile, fn), view_tiles in zip(views, tiles):
        key = (event.keys[entity_index], tile_start(t, tile))
        acc = view_tiles.get(key)
        if acc is None:
            acc = view_tiles[key] = fn.create_accumulator()
        fn.add_input(acc, event)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- tiles travel in batches ----------------------------------------------------------------------
# One shuffle element per (view, entity, tile) cost more in the runner (coders, windowing,
# grouping: ~5 us each) than the pre-aggregation saved with many entities of few tiles each. Tiles
# therefore travel as one Arrow IPC batch per (view, entity shard) and range; all tiles of an
# entity meet in its shard's group, where they are merged and assembled together.
_TILE_SCHEMA = pa.schema([("entity", pa.string()), ("start", pa.int64()), ("acc", pa.binary())])


def entity_shards(entities: pa.Array, shards: int) -> np.ndarray:
    """The shard of each entity key, the same in every process (hash_ids, not hash())."""
    return (hash_ids(entities) % np.uint64(shards)).astype(np.int64)


def tile_batches(view: str, fn: FeatureViewCombineFn, tiles: dict, shards: int) -> Iterator[tuple[tuple[str, int], bytes]]:
    """{(entity, tile start): accumulator} of one view -> ((view, shard), TileBatch bytes) per shard."""
    if not tiles:
        return
    encode = fn.get_accumulator_coder().encode
    entities = pa.array([entity for entity, _ in tiles], pa.string())
    table = pa.Table.from_arrays(
        [entities, pa.array(np.fromiter((start for _, start in tiles), np.int64, len(tiles))),
         pa.array([encode(acc) for acc in tiles.values()], pa.binary())], schema=_TILE_SCHEMA)
    shard = entity_shards(entities, shards)
    order = np.argsort(shard, kind="stable")
    cuts = np.flatnonzero(np.diff(shard[order])) + 1
    for rows in np.split(order, cuts):
        yield (view, int(shard[rows[0]])), _ipc(table.take(pa.array(rows)))


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_tile_batches(batches: Iterable[bytes]) -> pa.Table:
    """TileBatch bytes -> one table (entity, start, acc) sorted by entity and start."""
    tables = [pa.ipc.open_stream(pa.py_buffer(data)).read_all() for data in batches]
    table = pa.concat_tables(tables) if tables else _TILE_SCHEMA.empty_table()
    return table.sort_by([("entity", "ascending"), ("start", "ascending")])


class _HashRangeIds(beam.DoFn):
    """FileRange -> (shard, (range key, hashes of every id in it)): a superset of the ids the
    parser will accept (Arrow reads the id column; blocks it refuses are decoded line by line
    exactly as the parser decodes them), so no duplicate escapes the exact path."""

    def __init__(self, id_field: str, shards: int):
        self._id_field = id_field
        self._shards = shards
        self._schema = pa.schema([(id_field, pa.string())])

    def process(self, file_range: FileRange) -> Iterable[tuple[int, tuple[str, bytes]]]:
        hashes = np.concatenate([hash_ids(ids) for ids in self._ids(file_range)] or [np.zeros(0, np.uint64)])
        if not len(hashes):
            return
        key = range_key(file_range)
        shard = hashes % np.uint64(self._shards)
        for s in np.unique(shard).tolist():
            yield s, (key, hashes[shard == s].tobytes())

    def _ids(self, file_range: FileRange) -> Iterator[pa.Array]:
        field = self._id_field
        if is_parquet(file_range.path):
            with FileSystems.open(file_range.path) as handle:
                parquet = pq.ParquetFile(handle)
                if field not in parquet.schema_arrow.names:
                    return
                column = parquet.read_row_groups(list(range(file_range.start, file_range.end)),
                                                 columns=[field])[field]
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                yield column.combine_chunks()
            else:
                yield pa.array([event_id_of({field: v}, field) for v in column.to_pylist()], pa.string())
            return
        options = pj.ParseOptions(explicit_schema=self._schema, unexpected_field_behavior="ignore")
        for block in read_blocks(file_range):
            try:
                table = pj.read_json(io.BytesIO(block), parse_options=options,
                                     read_options=pj.ReadOptions(use_threads=False, block_size=len(block) + 1))
                yield table[field].combine_chunks()
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                yield pa.array([event_id_of(line, field) for line in block_lines(block)], pa.string())


def _with_repeated(element: tuple[str, dict]) -> Iterator[tuple[FileRange, bytes]]:
    _, joined = element
    repeated = b"".join(joined["repeated"])
    for file_range in joined["range"]:
        yield file_range, repeated


class _KeepCopiesToTiles(beam.DoFn):
    """(id shard, copies of its repeated ids: Arrow batches the reader parsed, and Events) -> the
    copies the horizon rule keeps (`kept_copies`, exactly `keep_within_horizon`), as tiles in
    batches per bundle as `_ReadAndPreaggregate` sends them: Arrow rows through the columnar
    aggregator, Events one by one (and the kept Events, for the views that are not tiled)."""

    def __init__(self, spec: FeatureSpecFile, views: list[FeatureViewSpec], emit_events: bool,
                 shards: int = 16):
        self._plan = plan = ParsePlan.from_spec(spec)
        self._horizon_ms = spec.source.dedup_horizon * 1000
        self._views = [(v.name, plan.entity_index(v.entity), tile_ms(v), FeatureViewCombineFn(spec, v))
                       for v in views]
        self._view_specs = views
        self._aggregators: Optional[list[ColumnarAggregator]] = None  # made when Arrow rows come
        self._emit_events = emit_events
        self._shards = shards
        self._removed = Metrics.counter("dedup", "duplicates_removed")

    def start_bundle(self) -> None:
        self._bundle_tiles: list[dict] = [{} for _ in self._views]

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterable:
        tables, events = [], []
        for copy in element[1]:
            if isinstance(copy, bytes):
                tables.append(pa.ipc.open_stream(pa.py_buffer(copy)).read_all())
            else:
                events.append(copy)
        plan = self._plan
        table = pa.concat_tables(tables, promote_options="default") if tables else None
        ids: list = []
        times: list = []
        ties: list = []
        if table is not None:
            ids = table[plan.id_field].to_pylist()
            times = table[plan.timestamp_field].to_numpy().tolist()
            keys = [[v if dtype == "string" else str(v) for v in table[key].to_pylist()]
                    for _, key, dtype in plan.entities]
            nums = [table[field].to_pylist() for field in plan.num_fields]
            ties = [tie_order(k, n) for k, n in zip(zip(*keys) if keys else [()] * len(ids),
                                                    zip(*nums) if nums else [()] * len(ids))]
        arrow_rows = len(ids)
        ids += [e.event_id for e in events]
        times += [e.event_time_ms for e in events]
        ties += [tie_order(e.keys, e.nums) for e in events]
        kept = kept_copies(ids, np.array(times, np.int64), ties, self._horizon_ms)
        self._removed.inc(len(ids) - len(kept))
        kept.sort()
        from_arrow = kept[kept < arrow_rows]
        if len(from_arrow):
            rows = table.take(pa.array(from_arrow))
            if self._aggregators is None:
                self._aggregators = [ColumnarAggregator(plan, v, fn, tile)
                                     for v, (_, _, tile, fn) in zip(self._view_specs, self._views)]
            with gc_paused():
                for aggregator, view_tiles in zip(self._aggregators, self._bundle_tiles):
                    aggregator.aggregate(rows, view_tiles)
        for i in (kept[kept >= arrow_rows] - arrow_rows).tolist():
            event = events[i]
            if self._emit_events:
                yield pvalue.TaggedOutput(EVENTS_TAG, TimestampedValue(event, event_timestamp(event)))
            add_to_tiles(self._views, self._bundle_tiles, event)

    def finish_bundle(self) -> Iterable:
        for (name, _, _, fn), view_tiles in zip(self._views, self._bundle_tiles):
            for batch in tile_batches(name, fn, view_tiles, self._shards):
                yield _global(batch)


class _AssembleWindows(beam.DoFn):
    """The tile batches of one (view, entity shard) -> its rows, one ON_TIME row per window with
    events, and (tagged NEWEST_TAG) each entity's newest current window: the one row the online
    store keeps. Tiles of one entity and start from different ranges are merged first; then
    the shard's entities are assembled `BATCH_TILES` tiles at a time in one vectorised pass
    (per-entity numpy calls would cost more than the arithmetic when entities have few tiles);
    the rows of a batch leave as one RowTable of one view (Arrow: encoded once, written in bulk)."""

    BATCH_TILES = 50_000

    def __init__(self, spec: FeatureSpecFile, views: list[FeatureViewSpec]):
        self._fns = {v.name: (FeatureViewCombineFn(spec, v), tile_ms(v), v.window.size * 1000) for v in views}
        self._layouts = layouts(spec)

    def process(self, element: tuple[tuple[str, int], Iterable[bytes]]) -> Iterable:
        (view, _), batches = element
        fn = self._fns[view][0]
        decode = fn.get_accumulator_coder().decode
        with gc_paused():
            table = read_tile_batches(batches)
            if not table.num_rows:
                return
            entities = table["entity"].combine_chunks()
            starts = table["start"].to_numpy()
            accs = [decode(data) for data in table["acc"].to_pylist()]
            n = len(starts)
            new_entity = np.ones(n, bool)
            if n > 1:
                new_entity[1:] = pc.not_equal(entities.slice(1), entities.slice(0, n - 1)).to_numpy(
                    zero_copy_only=False)
            repeat = ~new_entity
            repeat[1:] &= starts[1:] == starts[:-1]  # the same tile from another range: merge it
            if repeat.any():
                keep = np.flatnonzero(~repeat)
                owner = np.cumsum(~repeat) - 1
                for i in np.flatnonzero(repeat).tolist():
                    target = keep[owner[i]]
                    accs[target] = fn.merge_accumulators([accs[target], accs[i]])
                accs = [accs[i] for i in keep.tolist()]
                starts, new_entity = starts[keep], new_entity[keep]
                entities = entities.take(pa.array(keep))
        firsts = np.flatnonzero(new_entity)
        bounds = np.append(firsts, len(starts))
        # batches of whole entities of about BATCH_TILES tiles
        cuts = np.unique(np.searchsorted(bounds, np.arange(0, len(starts), self.BATCH_TILES)))
        cuts = np.append(cuts[cuts < len(firsts)], len(firsts))
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            a, b = int(bounds[lo]), int(bounds[hi])
            yield from self._assemble(view, entities.slice(a, b - a), starts[a:b], accs[a:b], bounds[lo:hi + 1] - a)

    def _assemble(self, view: str, entities: pa.Array, starts: np.ndarray, accs: list,
                  bounds: np.ndarray) -> Iterator:
        fn, tile, size = self._fns[view]
        layout = self._layouts[view]
        with gc_paused():
            done = assemble_sorted(fn, bounds, starts, accs, tile, size)
            names = entities.take(pa.array(bounds[:-1]))
            n = len(done.ends)
            owners = np.repeat(np.arange(len(names)), np.diff(done.bounds))
            keys = names.take(pa.array(owners))
            table = columns_to_table(layout, keys if layout.key_dtype != "int64" else keys.to_pylist(),
                                     done.ends - size, done.ends, pa.repeat(pa.scalar("ON_TIME"), n),
                                     np.zeros(n, np.int64), done.columns,
                                     created_us=0)  # the writer sets created_timestamp
            # windows come in order of their end: an entity's newest current window is its last
            # current one (is_current_window, vectorised)
            period = layout.period_seconds
            current = np.ones(n, bool) if period is None else done.ends - period * 1000 <= done.max_event_times
            last = np.maximum.reduceat(np.where(current, np.arange(n), -1), done.bounds[:-1])
            names = names.to_pylist()
            newest = [FeatureRow(view, names[e], int(done.ends[j]) - size, int(done.ends[j]), "ON_TIME", 0,
                                 int(done.max_event_times[j]), tuple(column[j] for column in done.columns))
                      for e, j in enumerate(last.tolist()) if j >= done.bounds[e]]
        yield RowTable(view, table)
        for row in newest:
            yield pvalue.TaggedOutput(NEWEST_TAG, row)


def _global(value: Any) -> WindowedValue:
    """An output of finish_bundle: after the grouping, everything is in the global window."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), (GlobalWindow(),))


class TiledRead(NamedTuple):
    row_batches: beam.PCollection  # RowTables of the tileable views (one view and batch each)
    newest: beam.PCollection  # of those, the newest current window per (view, entity)
    events: beam.PCollection  # parsed Events, for the other views (empty when all are tileable)
    dead_letters: beam.PCollection


class TiledBackfill(beam.PTransform[PBegin, TiledRead]):
    """Event files -> rows of the tileable views, parsed events for the others, and dead
    letters, in one pass over the input. JSONL files are read in ranges of `range_bytes`
    (default RANGE_BYTES)."""

    def __init__(self, spec: FeatureSpecFile, paths: list[str], range_bytes: Optional[int] = None):
        super().__init__()
        self._spec = spec
        self._views = [v for v in spec.feature_views if tileable(v)]
        self._emit_events = len(self._views) < len(spec.feature_views)
        self._paths = paths
        self._ranges = split_files(paths, range_bytes)

    def expand(self, pbegin: PBegin) -> TiledRead:
        ranges = (
            pbegin
            | "File ranges" >> beam.Create(self._ranges)
            | "Spread ranges" >> beam.Reshuffle()
        )
        id_field = self._spec.source.id_field
        if id_field:
            # The id groupings below emit at their earliest input time (the ranges' minimum), so
            # events re-timestamped to their event times after them are never behind the
            # watermark; with Beam's default (end of the global window) a runner that tracks the
            # watermark in batch, as Prism does, drops them as late in a session window. (Only
            # here: on the tile grouping it would cost the FnApiRunner ~30 %.)
            ranges = ranges | "Hold at earliest" >> beam.WindowInto(
                window.GlobalWindows(), timestamp_combiner=window.TimestampCombiner.OUTPUT_AT_EARLIEST)
            # Pre-pass over ids only: the hashes of ids that occur more than once anywhere in the
            # input, found per hash shard (no worker holds every id) and sent back to the ranges
            # that hold them (a keyed join, not a side input of every repeated id).
            shards = max(8, min(256, len(self._ranges)))
            repeated = (
                ranges
                | "Hash ids" >> beam.ParDo(_HashRangeIds(id_field, shards))
                | "Shard ids" >> beam.GroupByKey()
                | "Repeated ids" >> beam.FlatMap(lambda shard: repeated_hashes(shard[1]))
            )
            keyed = ranges | "Key ranges" >> beam.Map(lambda r: (range_key(r), r))
            work = (
                {"range": keyed, "repeated": repeated}
                | "Join repeated ids" >> beam.CoGroupByKey()
                | "Ranges with repeated ids" >> beam.FlatMap(_with_repeated)
            )
        else:
            work = ranges | "No ids" >> beam.Map(lambda r: (r, b""))
        tile_shards = max(16, min(256, len(self._ranges)))
        id_shards = max(8, min(256, len(self._ranges)))
        read = work | "Read and pre-aggregate" >> beam.ParDo(
            _ReadAndPreaggregate(self._spec, self._views, self._emit_events, tile_shards, id_shards)
        ).with_outputs(DEAD_LETTER_TAG, EVENTS_TAG, DUPLICATES_TAG, main="tiles")
        tiles = read.tiles
        events = read[EVENTS_TAG]
        if id_field:
            kept = (
                read[DUPLICATES_TAG]
                # held at their earliest time, as the ranges above: the kept events are
                # re-timestamped to their own (later or equal) event times
                | "Hold copies at earliest" >> beam.WindowInto(
                    window.GlobalWindows(), timestamp_combiner=window.TimestampCombiner.OUTPUT_AT_EARLIEST)
                | "Group copies" >> beam.GroupByKey()
                | "Keep within horizon" >> beam.ParDo(
                    _KeepCopiesToTiles(self._spec, self._views, self._emit_events, tile_shards)
                ).with_outputs(EVENTS_TAG, main="tiles")
            )
            tiles = (
                (tiles, kept.tiles)
                | "All tiles" >> beam.Flatten()
                | "Default timestamps" >> beam.WindowInto(window.GlobalWindows())
            )
            events = (events, kept[EVENTS_TAG]) | "All events" >> beam.Flatten()
        rows = (
            tiles
            | "Group tiles" >> beam.GroupByKey()
            | "Assemble windows" >> beam.ParDo(_AssembleWindows(self._spec, self._views)).with_outputs(
                NEWEST_TAG, main="rows")
        )
        return TiledRead(rows.rows, rows[NEWEST_TAG], events, read[DEAD_LETTER_TAG])
