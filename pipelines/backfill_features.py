r"""Bounded backfill: JSONL or Parquet event files -> the same transforms -> online and offline stores.

    python -m pipelines.backfill_features --events 'data/*.jsonl' --feature_spec shop.yaml \
        --online_store sqlite:///online.db --offline_store offline/ [--dead_letter DIR] [beam options]
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

if __name__ == "__main__":  # --help before the imports below load Beam (~0.2 s instead of 4-10 s)
    from pipelines.flags import help_before_imports

    help_before_imports("backfill_features", __doc__)

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.flags import BackfillFlags
from pipelines.common import (
    EventFileOptions,
    FeatureStoreOptions,
    PreaggregateOptions,
    UsageError,
    check_online_store,
    check_outputs,
    file_progress,
    is_local,
    require,
    redacted,
    report,
    run_main,
)
from transforms.backfill.files import DeadLetterPayloads, ReadEventFiles, matching_files
from transforms.feature_pipeline import FeaturePipeline, TiledFeaturePipeline, WriteFeatures
from transforms.io.commit import RunCommit
from transforms.spec import load_spec

_LOG = logging.getLogger(__name__)


class BackfillOptions(BackfillFlags, PipelineOptions):
    """BackfillFlags (pipelines.flags) as Beam pipeline options."""


OPTIONS = (EventFileOptions, FeatureStoreOptions, PreaggregateOptions, BackfillOptions)


def check_options(options: PipelineOptions) -> None:
    """Validation: flags, the input files, outputs and (locally) the online store."""
    events = options.view_as(EventFileOptions).events
    stores = options.view_as(FeatureStoreOptions)
    require(options, "events", "feature_spec", "online_store", "offline_store")
    spec = load_spec(stores.feature_spec)
    if not matching_files(events):
        raise UsageError(f"--events: no files match {events!r}")
    check_outputs(stores)
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or "DirectRunner"
    if is_local(options):
        check_online_store(stores.online_store, spec)


def build(pipeline: beam.Pipeline, options: PipelineOptions, range_bytes: Optional[int] = None) -> None:
    """The graph: event files (or dead letters) -> features -> stores and dead letters. JSONL
    files are read in ranges of `range_bytes` (default: the fast path's RANGE_BYTES, Beam's on
    the event path)."""
    events = options.view_as(EventFileOptions).events
    stores = options.view_as(FeatureStoreOptions)
    backfill = options.view_as(BackfillOptions)
    spec = load_spec(stores.feature_spec)
    paths = matching_files(events)
    _LOG.info(
        "backfill: %d view(s) from %s -> online %s, offline %s, dead letters %s",
        len(spec.feature_views), events, redacted(stores.online_store),
        stores.offline_store, stores.dead_letter,
    )
    if backfill.from_dead_letters == "true":
        outputs = (
            pipeline
            | "Read dead letters" >> ReadEventFiles(events, range_bytes)
            | "Payloads" >> beam.ParDo(DeadLetterPayloads())
            | "Features" >> FeaturePipeline(spec)
        )
    elif options.view_as(PreaggregateOptions).preaggregate == "true":
        outputs = pipeline | "Features" >> TiledFeaturePipeline(spec, paths, range_bytes)
    else:
        outputs = (pipeline | "Read events" >> ReadEventFiles(events, range_bytes)
                   | "Features" >> FeaturePipeline(spec))
    # re-running over the same input files replaces that run's offline and dead-letter files
    outputs | "Write" >> WriteFeatures(spec, stores.online_store, stores.offline_store, stores.dead_letter,
                                       commit=RunCommit.for_inputs(paths))


def run(argv: Optional[Sequence[str]] = None) -> beam.runners.runner.PipelineResult:
    options = PipelineOptions(argv)
    check_options(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    def _main() -> None:
        options = PipelineOptions(argv)
        with file_progress("backfill_features", options):
            result = run(argv)
        report(result, options)

    run_main("backfill_features", _main, argv, OPTIONS, __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
