"""Events too late for every window are dead-lettered with reason too_late (TestStream via the
replay source), counted, and never silently lost: in = counted in panes + dead-lettered."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import streaming_options_on
from helpers import T0, make_spec, ms, view
from transforms.feature_pipeline import FeaturePipeline
from transforms.parse import ParsePlan
from transforms.streaming.replay import build_replay
from transforms.windows import window_ends_ms


def line(t: float, amount: float) -> bytes:
    return json.dumps({"ts": ms(t), "user_id": "u1", "amount": amount}).encode()


# The replay is a TestStream whose processing time follows event time: not on Flink (see
# streaming_features.REPLAY_REFUSED); Flink's too-late guard runs in tests/test_engines.py.
@pytest.mark.parametrize("engine", ["direct", "prism"])
def test_too_late_events_become_dead_letters_and_late_ones_late_panes(engine):
    spec = make_spec([view(allowed_lateness="1m")])  # fixed 1 minute windows
    lines = [
        line(1, 1.0), line(10, 2.0),
        line(200, 4.0),  # watermark -> 200 s (max delay 0)
        line(30, 8.0),   # window [0, 60) closed at 60 + 60 = 120 < 200: too late
        line(150, 16.0),  # window [120, 180): late but within lateness: a LATE pane
        line(400, 32.0),
    ]
    stream, stats = build_replay(lines, ParsePlan.from_spec(spec), max_delay_s=0, chunk=1)
    with beam.Pipeline(options=streaming_options_on(engine)) as p:
        out = p | stream | FeaturePipeline(spec, clock="element")
        assert_that(
            out.rows | "panes" >> beam.Map(lambda r: (r.window_start_ms, r.pane_timing, r.features)),
            equal_to([
                (ms(0), "ON_TIME", (2, 3.0)),
                (ms(120), "LATE", (1, 16.0)),
                (ms(180), "ON_TIME", (1, 4.0)),
                (ms(360), "ON_TIME", (1, 32.0)),
            ]),
            label="panes",
        )
        assert_that(
            out.dead_letters | "letters" >> beam.Map(
                lambda d: (d.reason, d.stage, d.event_time_ms, tuple(d.views), d.encoding, d.payload)),
            # the record as received, once, with the views it came too late for
            equal_to([("too_late", "window", ms(30), ("v",), "utf-8", line(30, 8.0).decode())]),
            label="too late",
        )
    assert stats.late_on_arrival == 2


def test_window_ends_for_each_window_type():
    fixed = make_spec([view()]).feature_views[0]
    sliding = make_spec([view(window={"type": "sliding", "size": "5m", "period": "1m"})]).feature_views[0]
    session = make_spec([view(window={"type": "session", "gap": "30s"})]).feature_views[0]
    t = (T0 + 150) * 1000
    assert window_ends_ms(fixed, t) == (ms(180), ms(180))
    assert window_ends_ms(sliding, t) == (ms(180), ms(420))
    assert window_ends_ms(session, t) == (t + 30_000, t + 30_000)
