r"""Bounded backfill: JSONL or Parquet event files -> the same transforms -> online and offline stores.

    python -m pipelines.backfill_features --events 'data/*.jsonl' --feature_spec shop.yaml \
        --online_store sqlite:///online.db --offline_store offline/ [--dead_letter DIR] [beam options]
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.common import (
    EventFileOptions,
    FeatureStoreOptions,
    UsageError,
    check_online_store,
    check_outputs,
    dead_letter_destination,
    is_local,
    require,
    redacted,
    report,
    run_main,
)
from transforms.feature_pipeline import (
    DeadLetterPayloads,
    FeaturePipeline,
    ReadEventFiles,
    TiledFeaturePipeline,
    matching_files,
)
from transforms.sinks import RunCommit
from transforms.spec import load_spec

_LOG = logging.getLogger(__name__)


class BackfillOptions(PipelineOptions):
    group = "behaviour"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--preaggregate", default="true", choices=("true", "false"),
            help="Pre-aggregate per (entity, period tile) while reading (fast path; default true). "
                 "false: one element per event and window, like hand-written Beam.",
        )
        parser.add_argument(
            "--from_dead_letters", nargs="?", const="true", default="false", choices=("true", "false"),
            help="--events are dead-letter JSONL files of an earlier run: process their payloads (the "
                 "records as received) again, e.g. too_late events after raising allowed_lateness.",
        )


OPTIONS = (EventFileOptions, FeatureStoreOptions, BackfillOptions)


def build(pipeline: beam.Pipeline, events: str, stores: FeatureStoreOptions, preaggregate: bool,
          from_dead_letters: bool = False, range_bytes: Optional[int] = None) -> None:
    """The backfill's graph; `range_bytes`: JSONL files are read in ranges of this size."""
    spec = load_spec(stores.feature_spec)
    paths = matching_files(events)
    # re-running over the same input files replaces that run's offline and dead-letter files
    sinks = dict(online_store=stores.online_store, offline_store=stores.offline_store,
                 dead_letter=stores.dead_letter, commit=RunCommit.for_inputs(paths))
    if from_dead_letters:
        (
            pipeline
            | "Read dead letters" >> ReadEventFiles(events, range_bytes)
            | "Payloads" >> beam.ParDo(DeadLetterPayloads())
            | "Features" >> FeaturePipeline(spec, streaming=False, **sinks)
        )
    elif preaggregate:
        pipeline | "Features" >> TiledFeaturePipeline(spec, paths, **sinks, range_bytes=range_bytes)
    else:
        (
            pipeline
            | "Read events" >> ReadEventFiles(events, range_bytes)
            | "Features" >> FeaturePipeline(spec, streaming=False, **sinks)
        )


def run(argv: Optional[Sequence[str]] = None) -> beam.runners.runner.PipelineResult:
    options = PipelineOptions(argv)
    events = options.view_as(EventFileOptions).events
    stores = options.view_as(FeatureStoreOptions)
    require(options, "events", "feature_spec", "online_store", "offline_store")
    spec = load_spec(stores.feature_spec)
    if not matching_files(events):
        raise UsageError(f"--events: no files match {events!r}")
    dead_letter_destination(stores)
    check_outputs(stores)
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or "DirectRunner"
    if is_local(options):
        check_online_store(stores.online_store, spec)
    _LOG.info(
        "backfill: %d view(s) from %s -> online %s, offline %s, dead letters %s",
        len(spec.feature_views), events, redacted(stores.online_store),
        stores.offline_store, stores.dead_letter,
    )
    pipeline = beam.Pipeline(options=options)
    backfill = options.view_as(BackfillOptions)
    build(pipeline, events, stores, backfill.preaggregate == "true", backfill.from_dead_letters == "true")
    result = pipeline.run()
    result.wait_until_finish()
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    def _main() -> None:
        report(run(argv), PipelineOptions(argv))

    run_main("backfill_features", _main, argv, OPTIONS, __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
