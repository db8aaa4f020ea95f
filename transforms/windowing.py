"""Event-time windows, triggers, allowed lateness and accumulation mode, built from the spec."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import trigger as tr
from apache_beam.transforms import window

from transforms.spec import FeatureViewSpec, FixedWindow, SlidingWindow


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


class WindowFromSpec(beam.PTransform):
    """WindowInto for one view. Bounded input keeps the default trigger: one final pane per
    window, which equals the streaming final pane when nothing arrived too late."""

    def __init__(self, view: FeatureViewSpec, streaming: bool):
        super().__init__()
        self._view = view
        self._streaming = streaming

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        if not self._streaming:
            return pcoll | beam.WindowInto(window_fn(self._view))
        return pcoll | beam.WindowInto(
            window_fn(self._view),
            trigger=build_trigger(self._view),
            accumulation_mode=accumulation_mode(self._view),
            allowed_lateness=self._view.allowed_lateness,
        )
