"""The streaming fast path: events pre-combined per (entity, period tile) inside each bundle,
so Beam's windowing, triggers and GroupByKey carry partial accumulators instead of events.

All events of one tile (a sliding window's period, a fixed window's size) fall in the same
windows, so a partial accumulator timestamped at its tile's start is assigned exactly the
windows its events would have been, and is late or on time exactly when they would have been
(lateness is judged per window: its end + allowed lateness against the watermark). Panes keep
Beam's semantics - early, on-time and late firings, allowed lateness, accumulating or discarding -
with one documented difference: a count trigger (`late_every: n`) counts partials (the events of
one entity and window that arrived in one bundle), not events. A bundle's tiles are flushed at
its end or every `FLUSH_EVENTS` events, and its per-window partials at its end or every few
seconds (PreCombinePerWindow), so partials never wait for a long bundle to end.

After Beam's WindowInto, PreCombinePerWindow lifts the combiner as runners do in batch: a
bundle's partials are merged per (entity, window), so the GroupByKey gets one element per entity
and window per bundle, not one per tile and window (a sliding window's tile is in size/period
windows). ComputeFeatures then groups with a plain GroupByKey and CombineValues, so no runner
lifts a second time.

Only the combiner's work moves: events are still parsed one verdict each (ParseEvents), de-
duplicated and guarded against lateness before they are added to a tile. Event files read as a
stream (no lateness guard, no ids, every view tileable) go further: blocks of lines are parsed
by the backfill's columnar parser (transforms/backfill/columnar.py, the same verdicts, proven
line for line) straight into tiles (BlocksToTiles). Session windows are not tileable and keep
the event path.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms import progress
from transforms.backfill.columnar import ColumnarAggregator, ColumnarChunks, block_lines, columnar_schema
from transforms.combine import FeatureViewCombineFn
from transforms.gcpause import gc_paused
from transforms.parse import DEAD_LETTER_TAG, FieldCounters, ParsePlan, Verdicts
from transforms.records import Event
from transforms.spec import FeatureSpecFile, FeatureViewSpec
from transforms.windows import LatenessGuard, tile_ms, tile_start, tileable

FLUSH_EVENTS = 50_000


def tile_tag(view: FeatureViewSpec) -> str:
    return f"tiles_{view.name}"


class _ViewTiles:
    """One view's partial accumulators of a bundle, {(entity, tile start ms): accumulator}."""

    def __init__(self, spec: FeatureSpecFile, view: FeatureViewSpec, plan: ParsePlan):
        self.view = view
        self.tag = tile_tag(view)
        self.fn = FeatureViewCombineFn(spec, view)
        self.coder = self.fn.get_accumulator_coder()
        self.entity_index = plan.entity_index(view.entity)
        self.tile = tile_ms(view)
        self.guard = LatenessGuard(view)  # as GuardLateness does on the event path
        self.tiles: dict[tuple[str, int], list] = {}

    def add(self, event: Event) -> None:
        if not self.guard.admits(event):
            return
        key = (event.keys[self.entity_index], tile_start(event.event_time_ms, self.tile))
        acc = self.tiles.get(key)
        if acc is None:
            acc = self.tiles[key] = self.fn.create_accumulator()
        self.fn.add_input(acc, event)

    def drain(self) -> Iterator[tuple[str, tuple[str, "Partial"], int]]:
        """(tag, (entity, Partial), tile start ms) per tile, and forgets them."""
        tiles, self.tiles = self.tiles, {}
        coder = self.coder
        for (entity, start), acc in tiles.items():
            yield self.tag, (entity, Partial(acc, coder)), start


class _EventsToTiles(beam.DoFn):
    """Events -> per view, tagged (entity, Partial) with its tile's start as timestamp, one per
    (entity, tile) per flush."""

    def __init__(self, spec: FeatureSpecFile, views: Sequence[FeatureViewSpec]):
        self._spec = spec
        self._views = list(views)

    def setup(self) -> None:
        plan = ParsePlan.from_spec(self._spec)
        self._tiles = [_ViewTiles(self._spec, view, plan) for view in self._views]
        self._partials = Metrics.counter("tiles", "stream_partials")
        self._events = Metrics.counter("tiles", "stream_events")

    def start_bundle(self) -> None:
        self._pending = 0

    def process(self, event: Event) -> Iterable[pvalue.TaggedOutput]:
        for view_tiles in self._tiles:
            view_tiles.add(event)
        self._pending += 1
        if self._pending >= FLUSH_EVENTS:
            for tag, value, start_ms in self._drain():
                yield pvalue.TaggedOutput(tag, TimestampedValue(value, Timestamp(micros=start_ms * 1000)))

    def finish_bundle(self) -> Iterable[pvalue.TaggedOutput]:
        for tag, value, start_ms in self._drain():
            yield pvalue.TaggedOutput(tag, WindowedValue(value, Timestamp(micros=start_ms * 1000), (GlobalWindow(),)))

    def _drain(self) -> Iterator[tuple[str, tuple[str, "Partial"], int]]:
        self._events.inc(self._pending)
        self._pending = 0
        for view_tiles in self._tiles:
            for output in view_tiles.drain():
                self._partials.inc()
                yield output


class EventsToTiles(beam.PTransform[PCollection[Event], pvalue.DoOutputsTuple]):
    """A stream of events -> one PCollection per tileable view (tagged `tile_tag(view)`) of
    (entity, Partial accumulator), timestamped at the tile's start, in the global
    window. Events too late for a view (their `arrival_ms`, see ParseEvents' clock) are dropped
    from that view, as GuardLateness drops them."""

    def __init__(self, spec: FeatureSpecFile, views: Optional[Sequence[FeatureViewSpec]] = None):
        super().__init__()
        self._spec = spec
        self._views = [v for v in (views if views is not None else spec.feature_views) if tileable(v)]

    def expand(self, events: PCollection[Event]) -> pvalue.DoOutputsTuple:
        tags = [tile_tag(v) for v in self._views]
        return events | "Pre-combine per tile" >> beam.ParDo(
            _EventsToTiles(self._spec, self._views)).with_outputs(*tags)


class _BlocksToTiles(_EventsToTiles):
    """Blocks of JSONL lines (or single raw records, e.g. Parquet rows) -> per view, tagged
    partial accumulators as _EventsToTiles gives them, and dead letters. Clean rows are parsed
    and aggregated per (entity, tile) by Arrow; the rest get the parser's verdict one by one."""

    def setup(self) -> None:
        super().setup()
        plan = ParsePlan.from_spec(self._spec)
        self._plan = plan
        schema = columnar_schema(plan)
        self._columnar = ColumnarChunks(plan, schema) if schema is not None else None
        self._aggregators = [ColumnarAggregator(plan, t.view, t.fn, t.tile) for t in self._tiles] \
            if schema is not None else []
        self._verdicts = Verdicts(plan.parse)
        self._fields = FieldCounters(plan)
        self._events_in = Metrics.counter("parse", "events_in")
        self._parsed = Metrics.counter("parse", "parsed")
        self._dead = Metrics.counter("parse", "dead_lettered")

    def process(self, element: Any) -> Iterable[pvalue.TaggedOutput]:
        if isinstance(element, bytes):  # a block of whole lines
            lines = 0
            if self._columnar is not None:
                tables, slow = self._columnar.parse_block(element)
                rows = sum(t.num_rows for t in tables)
                self._events_in.inc(rows)
                self._parsed.inc(rows)
                with gc_paused():
                    for table in tables:
                        self._fields.count_table(table)
                        for aggregator, view_tiles in zip(self._aggregators, self._tiles):
                            aggregator.aggregate(table, view_tiles.tiles)
                self._pending += rows
                lines += rows
            else:
                slow = block_lines(element)
            lines += len(slow)
            progress.advance(len(element), lines)
            for raw in slow:
                yield from self._one(raw)
        else:
            progress.advance(0, 1)
            yield from self._one(element)
        if self._pending >= FLUSH_EVENTS:
            for tag, value, start_ms in self._drain():
                yield pvalue.TaggedOutput(tag, TimestampedValue(value, Timestamp(micros=start_ms * 1000)))

    def _one(self, raw: Any) -> Iterable[pvalue.TaggedOutput]:
        """One record through the parser: a dead letter, or an event added to its tiles."""
        self._events_in.inc()
        event, letter = self._verdicts(raw)
        if letter is not None:
            self._dead.inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            return
        self._parsed.inc()
        self._fields.count(event)
        for view_tiles in self._tiles:
            view_tiles.add(event)
        self._pending += 1


class BlocksToTiles(beam.PTransform[PCollection[Any], pvalue.DoOutputsTuple]):
    """A stream of blocks of JSONL lines (ReadEventFiles(blocks=True)) -> one PCollection per
    view (tagged `tile_tag(view)`) as EventsToTiles gives, and dead letters (DEAD_LETTER_TAG).
    For specs whose views are all tileable, without `id_field` and without a lateness guard
    (`blocks_to_tiles_fits`)."""

    def __init__(self, spec: FeatureSpecFile):
        super().__init__()
        if not blocks_to_tiles_fits(spec):
            raise ValueError("BlocksToTiles needs every view tileable and no source.id_field")
        self._spec = spec

    def expand(self, blocks: PCollection[Any]) -> pvalue.DoOutputsTuple:
        tags = [tile_tag(v) for v in self._spec.feature_views]
        return blocks | "Parse blocks into tiles" >> beam.ParDo(
            _BlocksToTiles(self._spec, self._spec.feature_views)).with_outputs(DEAD_LETTER_TAG, *tags)


def blocks_to_tiles_fits(spec: FeatureSpecFile) -> bool:
    """Whether a stream of event files can go from blocks of lines straight to tiles: no ids to
    de-duplicate first, and only fixed and sliding views."""
    return not spec.source.id_field and all(tileable(v) for v in spec.feature_views)


class Partial:
    """A tile's partial accumulator on its way to PreCombinePerWindow: the object itself while it
    stays in the worker (the steps from the tiles to the per-window pre-combine are fused, so it
    is never encoded there), encoded by the view's AccumulatorCoder if a runner ever ships it
    (pickling, e.g. FastPrimitivesCoder's fallback, carries the encoded bytes). The accumulator is
    never changed after it is made: merges go into a fresh one."""

    __slots__ = ("_acc", "_coder", "_data")

    def __init__(self, acc: Optional[list] = None, coder: Any = None, data: Optional[bytes] = None):
        self._acc, self._coder, self._data = acc, coder, data

    def encoded(self, coder: Any) -> bytes:
        if self._data is None:
            self._data = coder.encode(self._acc)
        return self._data

    def accumulator(self, coder: Any) -> list:
        if self._acc is None:
            self._acc = coder.decode(self._data)
        return self._acc

    def __reduce__(self):
        return Partial, (None, None, self.encoded(self._coder))


class PreCombinePerWindow(beam.DoFn):
    """Combiner lifting after Beam's WindowInto: a bundle's partials (entity, Partial) are merged
    per (entity, window) and leave as (entity, encoded accumulator) in that window, timestamped
    at the earliest of their timestamps, so the GroupByKey receives one element per entity and
    window per bundle instead of one per tile and window (a sliding window's tile is in
    size/period windows). Emitted at the bundle's end, when MAX_GROUPS are held, or once the
    oldest held partial has waited FLUSH_SECONDS (a long bundle, e.g. a large file read as a
    stream, does not hold back its early panes). A window with one partial ships that
    partial's bytes, encoded once for all its windows."""

    MAX_GROUPS = 100_000
    FLUSH_SECONDS = 5.0

    def __init__(self, fn: FeatureViewCombineFn):
        self._fn = fn

    def setup(self) -> None:
        self._coder = self._fn.get_accumulator_coder()
        self._merged = Metrics.counter("tiles", "window_partials")

    def start_bundle(self) -> None:
        self._groups: dict[tuple[str, Any], list] = {}
        self._held_since = None

    def process(self, element: tuple[str, Partial],
                windowed=beam.DoFn.WindowedValueParam) -> Iterable[WindowedValue]:
        # the whole WindowedValue: its windows in one call (WindowParam would invoke once per window)
        entity, partial = element
        timestamp, groups = windowed.timestamp, self._groups
        if not groups:
            self._held_since = time.monotonic()
        for window in windowed.windows:
            group = groups.get((entity, window))
            if group is None:
                groups[(entity, window)] = [timestamp, partial]
            else:
                group.append(partial)
                if timestamp < group[0]:
                    group[0] = timestamp
        if len(groups) >= self.MAX_GROUPS or time.monotonic() - self._held_since >= self.FLUSH_SECONDS:
            yield from self._flush()

    def finish_bundle(self) -> Iterable[WindowedValue]:
        yield from self._flush()

    def _flush(self) -> Iterator[WindowedValue]:
        groups, self._groups = self._groups, {}
        fn, coder = self._fn, self._coder
        self._merged.inc(len(groups))
        for (entity, window), (timestamp, *partials) in groups.items():
            if len(partials) == 1:
                data = partials[0].encoded(coder)
            else:
                # merged into an owned copy of the first (decoded from its bytes, which stay cached
                # for its other windows); the others are only read
                first = coder.decode(partials[0].encoded(coder))
                merged = fn.merge_accumulators([first] + [p.accumulator(coder) for p in partials[1:]])
                data = coder.encode(merged)
            yield WindowedValue((entity, data), timestamp, (window,))


class _Empty(list):
    """MergeTiles' new accumulator: never changed, so the first partial added replaces it."""


class MergeTiles(beam.CombineFn):
    """A view's CombineFn over partial accumulators (encoded by its AccumulatorCoder) instead of
    events: adding a partial merges it. Each partial is decoded afresh, so no engine-held input
    is ever mutated (an accumulating pane re-combines its stored partials on some runners), and
    the first one decoded becomes the accumulator (merging it into an empty one would copy its
    sketches)."""

    def __init__(self, fn: FeatureViewCombineFn):
        self._fn = fn
        self._coder = fn.get_accumulator_coder()

    def create_accumulator(self) -> list:
        return _Empty(self._fn.create_accumulator())

    def add_input(self, acc: list, partial: bytes) -> list:
        if type(acc) is _Empty:
            return self._coder.decode(partial)
        return self._fn.merge_accumulators([acc, self._coder.decode(partial)])

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        merged = [acc for acc in accumulators if type(acc) is not _Empty]  # an _Empty adds nothing
        return self._fn.merge_accumulators(merged) if merged else self.create_accumulator()

    def extract_output(self, acc: list) -> tuple:
        return self._fn.extract_output(acc)

    def get_accumulator_coder(self):
        return self._fn.get_accumulator_coder()
