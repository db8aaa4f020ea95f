r"""Streaming features: Pub/Sub (or a local replay of a JSONL file) -> online and offline stores.

    python -m pipelines.streaming_features --input_subscription projects/P/subscriptions/S \
        --feature_spec shop.yaml --online_store redis://host:6379/0 --offline_store gs://b/offline \
        [--timestamp_attribute ts] [--id_attribute id] [--dead_letter projects/P/topics/T] [beam options]

    python -m pipelines.streaming_features --events events.jsonl --replay [--replay_speed 60] \
        --feature_spec shop.yaml --online_store sqlite:///online.db --offline_store offline/

--replay plays the files in arrival order with a watermark trailing the newest event: on Prism
(the local default once `make engines` has run) in real time, `--replay_speed` seconds of event
time per second; on `--runner BundleBasedDirectRunner` in TestStream's simulated time. Without
--replay, --events files are read as a (finite) stream: on Prism locally, on Flink or Dataflow.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Callable, Optional, Sequence

if __name__ == "__main__":  # --help before the imports below load Beam (~0.2 s instead of 4-10 s)
    from pipelines.flags import help_before_imports

    help_before_imports("streaming_features", __doc__)

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.summary import output_summary, print_summary
from pipelines.flags import ReplayFlags
from pipelines.common import (
    DIRECT_STREAMING_RUNNERS,
    EventFileOptions,
    FeatureStoreOptions,
    PreaggregateOptions,
    PubSubInputOptions,
    UsageError,
    check_online_store,
    check_outputs,
    file_progress,
    dead_letter_destination,
    engine_name,
    is_local,
    prism_cached,
    redacted,
    report,
    read_pubsub,
    require,
    run_main,
    run_pipeline,
    runner_name,
    use_streaming_engine,
)
from transforms.backfill.files import ReadEventFiles, matching_files
from transforms.feature_pipeline import FeaturePipeline, WriteFeatures
from transforms.parse import ParsePlan
from transforms.spec import FeatureSpecFile, load_spec, parse_duration
from transforms.streaming.replay import ReplayStats, build_replay, read_lines
from transforms.streaming.replay_source import ReplaySource
from transforms.streaming.tiles import blocks_to_tiles_fits

_LOG = logging.getLogger(__name__)


class ReplayOptions(ReplayFlags, PipelineOptions):
    """ReplayFlags (pipelines.flags) as Beam pipeline options."""


OPTIONS = (PubSubInputOptions, EventFileOptions, ReplayOptions, PreaggregateOptions, FeatureStoreOptions)


def _blocks(options: PipelineOptions, spec: FeatureSpecFile) -> bool:
    """Event files read as a stream go from blocks of lines straight into tiles (the fast path)
    when the spec allows it (no ids, only fixed and sliding views)."""
    return (bool(options.view_as(EventFileOptions).events) and not options.view_as(ReplayOptions).replay
            and options.view_as(PreaggregateOptions).preaggregate == "true" and blocks_to_tiles_fits(spec))

# Why the replay is refused on the other engines (Prism plays it with ReplaySource, Beam's Python
# engine with TestStream); tests/test_engines.py checks that each reason still holds.
REPLAY_REFUSED = {
    "flinkrunner": "Flink cannot advance TestStream processing time: \"Advancing Processing time is not "
                   "supported by the Flink Runner\"",
}


def check_options(options: PipelineOptions) -> None:
    """Validation: flags, the input, the engine (set on the options), outputs and the online store."""
    pubsub = options.view_as(PubSubInputOptions)
    replay = options.view_as(ReplayOptions)
    events = options.view_as(EventFileOptions).events
    stores = options.view_as(FeatureStoreOptions)
    require(options, "feature_spec", "online_store", "offline_store")
    sources = [bool(pubsub.input_subscription), bool(pubsub.input_topic), bool(events)]
    if sum(sources) != 1:
        raise UsageError("give exactly one input: --input_subscription, --input_topic, or --events [--replay]")
    spec = load_spec(stores.feature_spec)
    standard = options.view_as(StandardOptions)
    if events and standard.runner in (None, "DirectRunner") and prism_cached():
        standard.runner = "PrismRunner"  # files as a stream, or replayed: Prism is the local streaming engine
    direct = use_streaming_engine(options, pubsub)
    if replay.replay and not direct and runner_name(options).lower() != "prismrunner":
        runner = runner_name(options)
        why = REPLAY_REFUSED.get(runner.lower(), "it needs TestStream or a real-time replay source")
        raise UsageError(f"--replay runs on Prism and the BundleBasedDirectRunner only ({why}); "
                         f"got --runner {runner}")
    if replay.replay_speed <= 0:
        raise UsageError(f"--replay_speed must be > 0 seconds of event time per second (got {replay.replay_speed})")
    check_outputs(stores)
    if is_local(options):
        check_online_store(stores.online_store, spec)


def read_events(pipeline: beam.Pipeline, options: PipelineOptions,
                spec: FeatureSpecFile) -> tuple[beam.PCollection, str, Optional[ReplayStats]]:
    """Source choice: (raw events, a description of the source, the replay's stats if replayed)."""
    pubsub = options.view_as(PubSubInputOptions)
    replay = options.view_as(ReplayOptions)
    events = options.view_as(EventFileOptions).events
    if replay.replay:
        try:
            lines = read_lines(events)
        except OSError as err:  # no match, or a file that cannot be read
            raise UsageError(f"--events: cannot read {events!r}: {err.strerror or err}") from None
        try:
            max_delay = parse_duration(replay.replay_max_delay)
        except ValueError as err:
            raise UsageError(f"--replay_max_delay {err}") from None
        plan = ParsePlan.from_spec(spec)
        if runner_name(options).lower() in DIRECT_STREAMING_RUNNERS:
            stream, stats = build_replay(lines, plan, max_delay_s=max_delay)
        else:  # Prism: played in real time by a splittable DoFn with its own watermark
            stream = ReplaySource(lines, plan, max_delay_s=max_delay, speed=replay.replay_speed)
            stats = stream.stats
        source = f"replay of {events} ({stats.events} events, {stats.late_on_arrival} late on arrival)"
        return pipeline | "Replay events" >> stream, source, stats
    if events:
        # Files read in streaming mode, for Flink/Dataflow (the local engine cannot stream a
        # splittable file read; locally, --replay is the way).
        if runner_name(options).lower() in DIRECT_STREAMING_RUNNERS:
            raise UsageError("--events without --replay reads files as a stream, which needs Prism "
                             "(`make engines`, then --runner PrismRunner), Flink or Dataflow; "
                             "or add --replay")
        if not matching_files(events):
            raise UsageError(f"--events: no files match {events!r}")
        return pipeline | "Read events" >> ReadEventFiles(events, blocks=_blocks(options, spec)), events, None
    return read_pubsub(pipeline, pubsub), pubsub.input_subscription or pubsub.input_topic, None


def build(pipeline: beam.Pipeline, options: PipelineOptions) -> Optional[ReplayStats]:
    """The graph: source -> FeaturePipeline -> stores and dead letters. Returns the replay's
    stats when --replay."""
    pubsub = options.view_as(PubSubInputOptions)
    replayed = options.view_as(ReplayOptions).replay
    events = options.view_as(EventFileOptions).events
    stores = options.view_as(FeatureStoreOptions)
    spec = load_spec(stores.feature_spec)
    raw, source, stats = read_events(pipeline, options, spec)
    try:
        outputs = raw | "Features" >> FeaturePipeline(
            spec,
            timestamp_from_element=bool(pubsub.timestamp_attribute),
            # the lateness guard's clock: the replay's watermark, or wall-clock time for Pub/Sub
            clock="element" if replayed else "wall" if not events else None,
            blocks=_blocks(options, spec),
            preaggregate=options.view_as(PreaggregateOptions).preaggregate == "true",
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    outputs | "Write" >> WriteFeatures(spec, stores.online_store, stores.offline_store, stores.dead_letter)
    _LOG.info(
        "streaming: %d view(s) from %s -> online %s, offline %s, dead letters %s",
        len(spec.feature_views), source, redacted(stores.online_store), stores.offline_store,
        stores.dead_letter,
    )
    return stats


def run(
    argv: Optional[Sequence[str]] = None,
    wait: bool = True,
    on_start: Optional[Callable[[beam.runners.runner.PipelineResult, Optional[ReplayStats]], None]] = None,
) -> beam.runners.runner.PipelineResult:
    options = PipelineOptions(argv)
    check_options(options)
    pipeline = beam.Pipeline(options=options)
    stats = build(pipeline, options)
    return run_pipeline(pipeline, wait, on_start=(lambda result: on_start(result, stats)) if on_start else None)


def main(argv: Optional[Sequence[str]] = None) -> None:
    def _main() -> None:
        started = time.time()
        replay_stats: list[ReplayStats] = []
        options = PipelineOptions(argv)
        # files read as a stream report their progress; the replay's TestStream holds them already
        with file_progress("streaming_features", options) if "--replay" not in argv else contextlib.nullcontext():
            result = run(argv, on_start=lambda _, stats: replay_stats.append(stats))
        if options.view_as(StandardOptions).runner in (None, "DirectRunner", "BundleBasedDirectRunner"):
            # Beam's DirectRunner keeps only the last bundle's counters in streaming runs:
            # count from what the run wrote instead.
            stores = options.view_as(FeatureStoreOptions)
            summary = output_summary(load_spec(stores.feature_spec), stores.offline_store,
                                     dead_letter_destination(stores))
            stats = replay_stats[0] if replay_stats else None
            print(f"engine: {engine_name(result, options)}", file=sys.stderr)
            print_summary(summary, stats.events if stats else None, out=sys.stderr)
        else:
            report(result, options)
        _LOG.info("finished in %.1fs", time.time() - started)

    run_main("streaming_features", _main, argv, OPTIONS, __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
