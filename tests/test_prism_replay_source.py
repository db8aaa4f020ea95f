"""The replay without TestStream (transforms/streaming/replay_source.py, a splittable DoFn with its
own watermark, paced in real time) on Prism, which `--replay` uses there.

Prism 2.77 mislabels its own accumulating panes (asserted below on a plain Beam graph, so a fixed
Prism shows up as a failing test); ComputeFeatures therefore windows accumulating views in
discarding mode and accumulates the panes itself (transforms/compute.py _AccumulatePanes).

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
from transforms.windows import build_trigger, window_fn
from apache_beam.transforms.trigger import AccumulationMode

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


class _RecordBeamPanes(beam.DoFn):
    """Plain Beam: (timing, index, (count, sum)) of each pane of the window [0, 60), to a file."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        if win.start.micros // 1000 == ms(0):
            timing = {0: "EARLY", 1: "ON_TIME", 2: "LATE"}[pane.timing]
            with open(self._path, "a") as f:
                f.write(json.dumps([timing, pane.index, list(element[1])]) + "\n")


def test_prism_mislabels_its_own_accumulating_panes(tmp_path):
    """Beam's own accumulating mode (no transform of ours between the source and the panes) on
    Prism 2.77: ON_TIME, then EARLY (the processing-time trigger, or the late event) and ON_TIME
    again. When this fails, Prism labels accumulating panes right: ComputeFeatures could window
    accumulating views in accumulating mode again (transforms/compute.py _AccumulatePanes)."""
    spec = _spec("accumulating")
    out = tmp_path / "beam.jsonl"

    def amount(pair):
        line, _ = pair
        event = json.loads(line)
        return beam.window.TimestampedValue(("u1", (1, event["amount"])), event["ts"] / 1000)

    with beam.Pipeline(options=PipelineOptions(runner_args("prism") + ["--streaming"])) as p:
        _ = (p | "Replay" >> _source(spec)
             | beam.Map(amount)
             | beam.WindowInto(window_fn(spec.feature_views[0]), trigger=build_trigger(spec.feature_views[0]),
                               accumulation_mode=AccumulationMode.ACCUMULATING, allowed_lateness=60)
             | beam.CombinePerKey(beam.combiners.TupleCombineFn(sum, sum))
             | beam.ParDo(_RecordBeamPanes(str(out))))
    panes = sorted((tuple(p[:2]) + (tuple(p[2]),) for p in map(json.loads, out.read_text().splitlines())),
                   key=lambda p: p[1])
    assert _mislabelled(panes), panes
    timings = [timing for timing, _, _ in panes]
    assert "EARLY" in timings[timings.index("ON_TIME"):], panes
    assert panes[-1][2] == (3, 11.0)  # the final values are right


def test_accumulating_panes_of_ours_are_labelled_right_on_prism(tmp_path):
    """The same events through FeaturePipeline (accumulated by _AccumulatePanes): EARLY* ON_TIME
    LATE with increasing indexes and the DirectRunner's values in its ON_TIME and LATE panes."""
    spec = _spec("accumulating")
    direct = _reference(spec, tmp_path / "direct.jsonl")
    assert not _mislabelled(direct), direct
    assert direct[-1] == ("LATE", len(direct) - 1, (3, 11.0))  # the late event in a LATE pane

    prism = _panes(spec, _source(spec), runner_args("prism"), tmp_path / "prism.jsonl")
    assert not _mislabelled(prism), prism
    on_time = [pane for pane in prism if pane[0] == "ON_TIME"]
    assert [pane[2] for pane in on_time] == [pane[2] for pane in direct if pane[0] == "ON_TIME"] == [(2, 3.0)]
    assert [pane[2] for pane in prism if pane[0] == "LATE"] == [(3, 11.0)]


def test_prism_labels_discarding_panes_of_the_same_source_right(tmp_path):
    """The control: without accumulation nothing stays pending after a firing, the stage's
    input watermark passes the window's end, and the same source's panes come out right."""
    spec = _spec("discarding")
    direct = _reference(spec, tmp_path / "direct.jsonl")
    prism = _panes(spec, _source(spec), runner_args("prism"), tmp_path / "prism.jsonl")
    assert prism == [("ON_TIME", 0, (2, 3.0)), ("LATE", 1, (1, 8.0))], prism
    assert prism[-1][2] == direct[-1][2] == (1, 8.0)  # the late event alone, as on the reference
