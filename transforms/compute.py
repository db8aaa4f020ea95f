"""ComputeFeatures: events -> windowed feature rows for one feature view (key, window, combine,
annotate panes), event at a time (the backfill's path for session windows, and the reference),
or from the streaming fast path's partial accumulators per tile (transforms/streaming/tiles.py)."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Tuple

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms import userstate, window
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.combine import FeatureViewCombineFn
from transforms.parse import ParsePlan
from transforms.records import Event, FeatureRow
from transforms.spec import FeatureSpecFile, FeatureViewSpec, SessionWindow
from transforms.streaming.tiles import MergeTiles
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


class _DropRepeatedPanes(beam.DoFn):
    """Per entity and window, streaming: a pane that carries no event, or a LATE pane whose values
    equal the last pane emitted, is not emitted (it tells nothing the stores do not hold). Pane
    indexes stay the engine's (only a window's last pane can be such a repeat).

    Why: Beam's Python SDK declares every windowing strategy with closing behaviour EMIT_ALWAYS
    (`Windowing.to_runner_api`, "TODO: Support EMIT_IF_NONEMPTY"); its own DirectRunner ignores
    that, but Prism re-fires every accumulating window once more when it closes (end + allowed
    lateness: a LATE pane repeating the last values, apache/beam#33623), and Flink fires a pane
    without data after a window's state was cleared. (Relabelling Prism's late data fired through
    the early trigger is not attempted: Prism may hand a window's panes to the next step out of
    order, so only the engine's pane index tells which values are newest.)"""

    LAST = userstate.ReadModifyWriteStateSpec("last", BytesCoder())

    def __init__(self):
        self._panes = _pane_counters()
        self._dropped = Metrics.counter("features", "repeated_panes_dropped")

    def process(self, element: tuple[str, FeatureRow], last=beam.DoFn.StateParam(LAST)) -> Iterable[FeatureRow]:
        row = element[1]
        if row.max_event_time_ms < 0:  # no event in this pane (the accumulator's initial time)
            self._dropped.inc()
            return
        digest = hashlib.blake2b(repr((row.max_event_time_ms, row.features)).encode(), digest_size=16).digest()
        if row.pane_timing == "LATE" and last.read() == digest:
            self._dropped.inc()
            return
        last.write(digest)
        self._panes[row.pane_timing].inc()
        yield row


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
        # Streaming panes pass through _DropRepeatedPanes, which needs state, so non-merging
        # windows (Prism refuses streaming sessions, see windows): sessions drop empty panes only.
        # A repeated LATE pane needs late data to be possible (allowed lateness) and an
        # accumulator that keeps it (accumulating): otherwise a closing pane is empty, and a
        # stateless filter drops it (a state read and write per row saved).
        can_repeat = self._view.allowed_lateness > 0 and self._view.accumulation == "accumulating"
        drop_repeats = streaming and can_repeat and not isinstance(self._view.window, SessionWindow)
        fn = FeatureViewCombineFn(self._spec, self._view)
        if self._from_tiles:
            keyed, combine = events, MergeTiles(fn)
        else:
            keyed = events | f"Key by {join_key}" >> beam.Map(
                lambda e: (e.keys[index], e)).with_output_types(Tuple[str, Event])
            combine = fn
        rows = (
            keyed
            | "Window" >> WindowFromSpec(self._view)
            | "Aggregate" >> beam.CombinePerKey(combine)
            | "Annotate panes" >> beam.ParDo(_ToFeatureRow(self._view.name, count_panes=not drop_repeats))
        )
        if streaming and not drop_repeats:
            rows = rows | "Drop empty panes" >> beam.Filter(lambda r: r.max_event_time_ms >= 0)
        elif drop_repeats:
            rows = (
                rows
                # rows keep Beam's primitive coder (see FeatureRow): hint Any, not the NamedTuple
                | "Key rows" >> beam.Map(lambda r: (r.entity, r)).with_output_types(Tuple[str, Any])
                | "Drop repeated panes" >> beam.ParDo(_DropRepeatedPanes())
            )
        # Rows carry their window as fields; a global window lets views with different
        # windowing be flattened and written together.
        return rows | "Rows to global window" >> beam.WindowInto(window.GlobalWindows())
