"""The replay without TestStream (transforms/streaming/replay_source.py, a splittable DoFn with its
own watermark, paced in real time) on Prism: Prism 2.77 still mislabels accumulating panes, so
`--replay` stays refused there (pipelines/streaming_features.py REPLAY_REFUSED).

Why (Prism's engine/elementmanager.go): an aggregation keeps an accumulating window's elements
pending until the window closes, and `minPendingTimestampLocked` counts them, so the stage's input
watermark `ss.input` stays before the window's end after its ON_TIME pane. That pane fires from the
upstream watermark (`bundleReady` -> `startEventTimeBundle(watermark)`), but element and
processing-time firings (`injectTriggeredBundlesIfReady`, aggregate `buildProcessingTimeBundle`)
test `window.MaxTimestamp() < ss.input`: false, so `computeNextTriggeredPane` labels the pane
EARLY, and the next watermark bundle turns EARLY into ON_TIME again (`computeNextWatermarkPane`).
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from conftest import runner_args
from helpers import RecordPanes, make_spec, ms, view
from transforms.feature_pipeline import FeaturePipeline
from transforms.parse import ParsePlan
from transforms.spec import FeatureSpecFile
from transforms.streaming.replay import build_replay
from transforms.streaming.replay_source import ReplaySource

ORDER = ["EARLY", "ON_TIME", "LATE"]


def _line(t: float, amount: float) -> bytes:
    return json.dumps({"ts": ms(t), "user_id": "u1", "amount": amount}).encode()


# watermark to 70 s closes [0, 60) on time; the event at 20 s is then late (within the lateness)
LINES = [_line(1, 1.0), _line(10, 2.0), _line(70, 4.0), _line(20, 8.0), _line(100, 16.0), _line(400, 32.0)]


def _spec(accumulation: str) -> FeatureSpecFile:
    return make_spec([view(allowed_lateness="1m", accumulation=accumulation, trigger={"early_every": "1s"})])


def _source(spec: FeatureSpecFile) -> ReplaySource:
    # 20 s of event time per 2 s step: the source defers before the late event, so Prism has
    # seconds to fire the ON_TIME pane and the 1 s processing-time (early) trigger
    return ReplaySource(LINES, ParsePlan.from_spec(spec), max_delay_s=0, speed=10, chunk=1, tick_s=2)


def _panes(spec: FeatureSpecFile, source: beam.PTransform, runner: list[str], out: Path) -> list[tuple]:
    """(timing, pane index, features) of every pane of the window [0, 60), by pane index."""
    with beam.Pipeline(options=PipelineOptions(runner + ["--streaming"])) as p:
        rows = (p | "Replay" >> source | FeaturePipeline(spec, clock="element")).rows
        rows | beam.ParDo(RecordPanes(str(out)))
    panes = [json.loads(line) for line in out.read_text().splitlines()]
    return sorted(((timing, index, tuple(features)) for timing, index, features in panes), key=lambda p: p[1])


def _mislabelled(panes: list[tuple]) -> bool:
    """Not EARLY* ON_TIME? LATE* with increasing indexes: an EARLY or ON_TIME after an ON_TIME."""
    timings = [timing for timing, _, _ in panes]
    indexes = [index for _, index, _ in panes]
    return (indexes != list(range(len(panes))) or timings.count("ON_TIME") > 1
            or timings != sorted(timings, key=ORDER.index))


def _reference(spec: FeatureSpecFile, out: Path) -> list[tuple]:
    """The same events through the TestStream replay on Beam's Python engine."""
    stream, _ = build_replay(LINES, ParsePlan.from_spec(spec), max_delay_s=0, chunk=1)
    return _panes(spec, stream, runner_args("direct"), out)


def test_prism_mislabels_accumulating_panes_without_test_stream_too(tmp_path):
    spec = _spec("accumulating")
    direct = _reference(spec, tmp_path / "direct.jsonl")
    assert not _mislabelled(direct), direct
    assert direct[-1] == ("LATE", len(direct) - 1, (3, 11.0))  # the late event in a LATE pane

    prism = _panes(spec, _source(spec), runner_args("prism"), tmp_path / "prism.jsonl")
    # Prism 2.77: ON_TIME 0, EARLY 1 (the processing-time trigger, no new event), ON_TIME 2,
    # EARLY 3 (the late event), ON_TIME 4. When this fails, Prism labels panes right without
    # TestStream: play `--replay` on Prism with ReplaySource (pipelines/streaming_features.py
    # REPLAY_REFUSED) and compare its panes to the DirectRunner's.
    assert _mislabelled(prism), prism
    timings = [timing for timing, _, _ in prism]
    assert "EARLY" in timings[timings.index("ON_TIME"):], prism
    assert prism[-1][2] == direct[-1][2]  # the final values agree


def test_prism_labels_discarding_panes_of_the_same_source_right(tmp_path):
    """The control: without accumulation nothing stays pending after a firing, the stage's
    input watermark passes the window's end, and the same source's panes come out right."""
    spec = _spec("discarding")
    direct = _reference(spec, tmp_path / "direct.jsonl")
    prism = _panes(spec, _source(spec), runner_args("prism"), tmp_path / "prism.jsonl")
    assert prism == [("ON_TIME", 0, (2, 3.0)), ("LATE", 1, (1, 8.0))], prism
    assert prism[-1][2] == direct[-1][2] == (1, 8.0)  # the late event alone, as on the reference
