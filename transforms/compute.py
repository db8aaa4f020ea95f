"""ComputeFeatures: events -> windowed feature rows for one feature view (key, window, combine,
annotate panes), event at a time (the backfill's path for session windows, and the reference),
or from the streaming fast path's partial accumulators per tile (transforms/streaming/tiles.py)."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Tuple

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms import userstate, window
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.combine import FeatureViewCombineFn
from transforms.parse import ParsePlan
from transforms.records import Event, FeatureRow
from transforms.spec import FeatureSpecFile, FeatureViewSpec, SessionWindow
from transforms.streaming.tiles import MergeTiles, PreCombinePerWindow
from transforms.windows import WindowFromSpec, is_stream

_TIMING = {
    PaneInfoTiming.EARLY: "EARLY",
    PaneInfoTiming.ON_TIME: "ON_TIME",
    PaneInfoTiming.LATE: "LATE",
}


def _micros_to_ms(ts: Any) -> int:
    return ts.micros // 1000


def _pane_counters() -> dict[str, Any]:
    return {name: Metrics.counter("features", f"panes_{name.lower()}") for name in _TIMING.values()}


class _ToFeatureRow(beam.DoFn):
    def __init__(self, view: str, count_panes: bool):
        self._view = view
        self._panes = _pane_counters() if count_panes else None

    def process(
        self,
        element: tuple[str, tuple],
        win=beam.DoFn.WindowParam,
        pane=beam.DoFn.PaneInfoParam,
    ) -> Iterable[FeatureRow]:
        entity, (max_event_time_ms, *values) = element
        # Bounded runs fire each window once, at the end of input: that pane is on time.
        timing = _TIMING.get(pane.timing, "ON_TIME")
        if self._panes:
            self._panes[timing].inc()
        yield FeatureRow(
            self._view,
            entity,
            _micros_to_ms(win.start),
            _micros_to_ms(win.end),
            timing,
            pane.index,
            max_event_time_ms,
            tuple(values),
        )


_TIMINGS = tuple(_TIMING.values())  # by rank: PaneInfoTiming's order
_RANK = {name: int(timing) for timing, name in _TIMING.items()}
_NO_ROW = (-1, -1, -1, b"")  # a window's last (engine index, row index, rank, digest) before any pane


class _KeyByWindow(beam.DoFn):
    """FeatureRow -> ((entity, window start), (row fields, the engine's last pane of the window)):
    what _OrderPanes needs once the row is in the global window."""

    def process(self, row: FeatureRow, pane=beam.DoFn.PaneInfoParam) -> Iterable[tuple]:
        yield (row.entity, row.window_start_ms), (tuple(row), bool(pane.is_last))


class _OrderPanes(beam.DoFn):
    """A window's accumulating panes, per (entity, window start) in the global window: the
    panes a consumer should see, whatever the engine fires and in whatever order it hands them
    over. Rules:
    - panes are taken in the engine's pane index order (the engines number every pane they fire,
      0, 1, ...): one that comes before an earlier index waits for it (at most MAX_HELD);
    - a pane with no event is dropped;
    - once a window's ON_TIME row is out, every later row is LATE;
    - a LATE pane whose values equal the last row emitted is dropped (it tells nothing new);
    - indexes count the rows emitted for the window (0, 1, ...);
    - the window's state is cleared once the engine's last pane (PaneInfo.is_last: the closing
      pane at end + allowed lateness) is taken.

    Why, on the engines (README, Engines):
    - Prism 2.77 gives every pane of a window the same timestamp (the window's end) and may hand
      them to the next step in any order, e.g. an EARLY pane after the ON_TIME one;
    - it keeps an accumulating window's elements pending until the window closes, which holds
      its stage's input watermark before the window's end, so firings after the ON_TIME pane come
      out EARLY and then ON_TIME again (tests/test_prism_replay_source.py);
    - Beam's Python SDK declares every windowing strategy with closing behaviour EMIT_ALWAYS
      (`Windowing.to_runner_api`, "TODO: Support EMIT_IF_NONEMPTY"): Prism, Flink and Dataflow
      fire a closing pane (Prism's repeats the last values, apache/beam#33623);
    - Prism collects a stateful step's per-window state at the window's end, whatever its allowed
      lateness (only aggregations get a windowing strategy there), so this state lives in the
      global window, keyed by window. It is cleared by the closing pane, not by a timer: an
      event-time timer at end + allowed lateness per window stalls Prism 2.77 for tens of seconds
      at the end of a stream. Beam's Python streaming engine fires no closing pane, so there the
      state of a window stays until the pipeline ends (a local engine for tests and the demo)."""

    MAX_HELD = 16
    LAST = userstate.ReadModifyWriteStateSpec("last", FastPrimitivesCoder())  # (engine index, index, rank, digest)
    HELD = userstate.ReadModifyWriteStateSpec("held", FastPrimitivesCoder())  # [(row fields, is last)]

    def __init__(self):
        self._panes = _pane_counters()
        self._dropped = Metrics.counter("features", "repeated_panes_dropped")
        self._relabelled = Metrics.counter("features", "panes_relabelled_late")
        self._reordered = Metrics.counter("features", "panes_reordered")

    def process(self, element: tuple[tuple[str, int], tuple[tuple, bool]],
                last_state=beam.DoFn.StateParam(LAST), held_state=beam.DoFn.StateParam(HELD)) -> Iterable[FeatureRow]:
        last = last_state.read() or _NO_ROW
        stored = held_state.read()
        held = sorted([(FeatureRow(*fields), final) for fields, final in (stored or []) + [element[1]]],
                      key=lambda pane: pane[0].pane_index)
        flush = len(held) > self.MAX_HELD
        out, closed = [], False
        while held:
            row, final = held[0]
            expected = last[0] + 1
            if row.pane_index > expected and not flush:
                break  # an earlier pane is still on its way
            held.pop(0)
            if row.pane_index < expected:  # already passed (a pane handed over twice)
                self._dropped.inc()
                continue
            last, emitted = self._take(row, last)
            out += emitted
            closed = closed or final
        if closed:
            last_state.clear()
            held_state.clear()
            return out
        if held:
            self._reordered.inc()  # a pane waits for an earlier one
            held_state.write([(tuple(r), final) for r, final in held])
        elif stored is not None:
            held_state.clear()
        last_state.write(last)
        return out

    def _take(self, row: FeatureRow, last: tuple) -> tuple[tuple, list[FeatureRow]]:
        """The next pane in index order: (the window's new last, the rows to emit)."""
        if row.max_event_time_ms < 0:  # no event in this pane (the accumulator's initial time)
            self._dropped.inc()
            return (row.pane_index,) + last[1:], []
        index, rank = last[1] + 1, _RANK[row.pane_timing]
        if last[2] >= _RANK["ON_TIME"] and rank < _RANK["LATE"]:
            rank = _RANK["LATE"]
            self._relabelled.inc()
        digest = hashlib.blake2b(repr((row.max_event_time_ms, row.features)).encode(), digest_size=16).digest()
        if rank == _RANK["LATE"] and digest == last[3]:
            self._dropped.inc()
            return (row.pane_index,) + last[1:], []
        timing = _TIMINGS[rank]
        self._panes[timing].inc()
        return (row.pane_index, index, rank, digest), [row._replace(pane_timing=timing, pane_index=index)]


class ComputeFeatures(beam.PTransform[PCollection, PCollection[FeatureRow]]):
    """PCollection[Event] -> PCollection[FeatureRow] for one view, all features in one pass.
    Bounded events fire each window once; a stream (`is_stream`) fires the spec's triggers.
    `from_tiles`: the input is the view's (entity, encoded partial accumulator) elements from
    the streaming fast path (EventsToTiles) instead of events."""

    def __init__(self, spec: FeatureSpecFile, view: FeatureViewSpec, from_tiles: bool = False):
        super().__init__(f"Features {view.name}")
        self._spec = spec
        self._view = view
        self._from_tiles = from_tiles
        self._entity_index = ParsePlan.from_spec(spec).entity_index(view.entity)

    def expand(self, events: PCollection[Event]) -> PCollection[FeatureRow]:
        index = self._entity_index
        join_key = self._spec.entities[self._view.entity].join_key
        streaming = is_stream(events)
        # Streaming accumulating panes after the ON_TIME one (allowed lateness) pass through
        # _OrderPanes, which needs state per window, so non-merging windows (Prism refuses
        # streaming sessions, see windows): sessions drop empty panes only. Elsewhere a closing
        # pane is empty, and a stateless filter drops it (a state read and write per row saved).
        late_accumulating = self._view.allowed_lateness > 0 and self._view.accumulation == "accumulating"
        order_panes = streaming and late_accumulating and not isinstance(self._view.window, SessionWindow)
        fn = FeatureViewCombineFn(self._spec, self._view)
        if self._from_tiles:
            # Our own combiner lifting: per (entity, window) inside the bundle, on the partials
            # as objects, then a plain GroupByKey and CombineValues (what CombinePerKey expands
            # to), so no runner lifts a second time (Prism's lifting decodes and re-encodes
            # every element in Python).
            aggregated = (
                events
                | "Window" >> WindowFromSpec(self._view)
                | "Pre-combine per window" >> beam.ParDo(PreCombinePerWindow(fn))
                | "Group" >> beam.GroupByKey()
                | "Aggregate" >> beam.CombineValues(MergeTiles(fn))
            )
        else:
            aggregated = (
                events
                | f"Key by {join_key}" >> beam.Map(lambda e: (e.keys[index], e)).with_output_types(Tuple[str, Event])
                | "Window" >> WindowFromSpec(self._view)
                | "Aggregate" >> beam.CombinePerKey(fn)
            )
        rows = aggregated | "Annotate panes" >> beam.ParDo(
            _ToFeatureRow(self._view.name, count_panes=not order_panes))
        if streaming and not order_panes:
            rows = rows | "Drop empty panes" >> beam.Filter(lambda r: r.max_event_time_ms >= 0)
        elif order_panes:
            rows = (
                rows
                # rows keep Beam's primitive coder (see FeatureRow): hint Any, not the NamedTuple
                | "Key by window" >> beam.ParDo(_KeyByWindow()).with_output_types(Tuple[Tuple[str, int], Any])
                | "Panes to global window" >> beam.WindowInto(window.GlobalWindows())
                | "Order panes" >> beam.ParDo(_OrderPanes())
            )
        # Rows carry their window as fields; a global window lets views with different
        # windowing be flattened and written together.
        return rows | "Rows to global window" >> beam.WindowInto(window.GlobalWindows())
