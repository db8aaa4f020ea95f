"""All window arithmetic, from the spec: Beam's WindowFns, triggers, allowed lateness and
accumulation mode; the window ends of an event and how long it can still count (the lateness
guard); the backfill's tiles; and the online store's current window."""

from __future__ import annotations

from typing import Iterable, Sequence, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.pvalue import PCollection
from apache_beam.transforms import trigger as tr
from apache_beam.transforms import window

from transforms.records import Event, FeatureRow, ViewLayout
from transforms.spec import FeatureViewSpec, FixedWindow, SessionWindow, SlidingWindow

T = TypeVar("T")


def window_fn(view: FeatureViewSpec) -> window.WindowFn:
    spec = view.window
    if isinstance(spec, FixedWindow):
        return window.FixedWindows(spec.size)
    if isinstance(spec, SlidingWindow):
        return window.SlidingWindows(spec.size, spec.period)
    return window.Sessions(spec.gap)


def build_trigger(view: FeatureViewSpec) -> tr.TriggerFn:
    """AfterWatermark with optional processing-time early firings and count-based late firings.

    Late firings default to every late event when lateness is allowed: without a late trigger
    Beam would close the window at the watermark and silently ignore late data.
    """
    early = tr.AfterProcessingTime(view.trigger.early_every) if view.trigger.early_every else None
    late_every = view.trigger.late_every or (1 if view.allowed_lateness else None)
    late = tr.AfterCount(late_every) if late_every else None
    return tr.AfterWatermark(early=early, late=late)


def accumulation_mode(view: FeatureViewSpec) -> tr.AccumulationMode:
    if view.accumulation == "discarding":
        return tr.AccumulationMode.DISCARDING
    return tr.AccumulationMode.ACCUMULATING


def is_stream(pcoll: PCollection) -> bool:
    """Whether a PCollection is processed as a stream: it is unbounded (Pub/Sub, a replay), or the
    pipeline runs in streaming mode (event files read as a stream on Prism, Flink or Dataflow)."""
    return not pcoll.is_bounded or bool(pcoll.pipeline.options.view_as(StandardOptions).streaming)


class WindowFromSpec(beam.PTransform[PCollection[T], PCollection[T]]):
    """WindowInto for one view. Bounded input keeps the default trigger: one final pane per
    window, which equals the streaming final pane when nothing arrived too late."""

    def __init__(self, view: FeatureViewSpec):
        super().__init__()
        self._view = view

    def expand(self, pcoll: PCollection[T]) -> PCollection[T]:
        if not is_stream(pcoll):
            return pcoll | beam.WindowInto(window_fn(self._view))
        runner = pcoll.pipeline.options.view_as(StandardOptions).runner
        if isinstance(self._view.window, SessionWindow) and str(runner).lower() == "prismrunner":
            raise ValueError(
                f"feature view {self._view.name!r}: session windows cannot stream on Prism: it labels a "
                f"merged session's panes wrongly (pane index -1, EARLY for the on-time pane; merging "
                f"windows, apache/beam#31438); use Flink, Dataflow or the DirectRunner")
        return pcoll | beam.WindowInto(
            window_fn(self._view),
            trigger=build_trigger(self._view),
            accumulation_mode=accumulation_mode(self._view),
            allowed_lateness=self._view.allowed_lateness,
        )


def window_ends_ms(view: FeatureViewSpec, t_ms: int) -> tuple[int, int]:
    """(earliest, latest) end of the windows an event at t_ms is assigned to, before merging."""
    spec = view.window
    if isinstance(spec, FixedWindow):
        size = spec.size * 1000
        end = tile_start(t_ms, size) + size
        return end, end
    if isinstance(spec, SlidingWindow):
        period = spec.period * 1000
        first = tile_start(t_ms, period) + period
        return first, first + spec.size * 1000 - period
    end = t_ms + spec.gap * 1000
    return end, end


def reach_ms(view: FeatureViewSpec) -> int:
    """How long after an event a copy of it can still count: its windows' latest end, plus
    allowed lateness (sessions: the gap; merging may extend them, but only with later events)."""
    spec = view.window
    reach = spec.size if isinstance(spec, (FixedWindow, SlidingWindow)) else spec.gap
    return (reach + view.allowed_lateness) * 1000


def tileable(view: FeatureViewSpec) -> bool:
    """Fixed and sliding windows are unions of tiles (transforms/backfill/tiles.py); sessions are not."""
    return isinstance(view.window, (FixedWindow, SlidingWindow))


def tile_ms(view: FeatureViewSpec) -> int:
    """A tileable view's tile: the period of a sliding window, the size of a fixed one."""
    window = view.window
    return (window.period if isinstance(window, SlidingWindow) else window.size) * 1000


def tile_start(t_ms: int, tile: int) -> int:
    """The start of the tile of length `tile` (ms) holding an event at t_ms."""
    return t_ms - t_ms % tile


def is_current_window(row: FeatureRow, layout: ViewLayout) -> bool:
    """True when the row's window ends at the first period boundary after its latest event.

    Sliding windows put each event in size/period windows; only the earliest-ending one is the
    entity's "current" value. Later windows holding only older events are offline-only.
    """
    if layout.period_seconds is None:
        return True
    return row.window_end_ms - layout.period_seconds * 1000 <= row.max_event_time_ms


def too_late(view: FeatureViewSpec, t_ms: int, clock_ms: int) -> bool:
    """Every window of an event at t_ms closed (end + allowed lateness) before clock_ms."""
    return clock_ms > window_ends_ms(view, t_ms)[1] + view.allowed_lateness * 1000


def too_late_views(views: Sequence[FeatureViewSpec], t_ms: int, clock_ms: int) -> list[str]:
    return [view.name for view in views if too_late(view, t_ms, clock_ms)]


class LatenessGuard:
    """One view's lateness guard for events stamped with the pipeline clock (Event.arrival_ms):
    `admits(event)` is False when every window of the event closed before it arrived (counter
    windowing.too_late; ParseEvents has already dead-lettered it, with its payload), and counts
    events too late for some of their windows only (Beam counts them in the windows still open,
    like any late event). Declared once per DoFn."""

    def __init__(self, view: FeatureViewSpec):
        self._view = view
        self._lateness_ms = view.allowed_lateness * 1000
        self._too_late = Metrics.counter("windowing", "too_late")
        self._partly = Metrics.counter("windowing", "too_late_for_some_windows")

    def admits(self, event: Event) -> bool:
        if event.arrival_ms is None:
            return True
        if too_late(self._view, event.event_time_ms, event.arrival_ms):
            self._too_late.inc()
            return False
        if event.arrival_ms > window_ends_ms(self._view, event.event_time_ms)[0] + self._lateness_ms:
            self._partly.inc()
        return True


class _GuardLateness(beam.DoFn):
    def __init__(self, view: FeatureViewSpec):
        self._guard = LatenessGuard(view)

    def process(self, event: Event) -> Iterable[Event]:
        if self._guard.admits(event):
            yield event


class GuardLateness(beam.PTransform[PCollection[Event], PCollection[Event]]):
    """Drops the events too late for every window of a view, instead of letting them vanish in
    the GroupByKey. ParseEvents has already dead-lettered each of them once (reason too_late,
    with the views it was too late for). The guard's clock (Event.arrival_ms) is never behind
    the watermark the windowing sees, so whatever it lets through the windowing keeps."""

    def __init__(self, view: FeatureViewSpec):
        super().__init__(f"Lateness {view.name}")
        self._view = view

    def expand(self, events: PCollection[Event]) -> PCollection[Event]:
        return events | "Guard" >> beam.ParDo(_GuardLateness(self._view)).with_output_types(Event)
