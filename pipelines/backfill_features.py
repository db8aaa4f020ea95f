"""Bounded backfill: JSONL or Parquet event files -> the same transforms -> online and offline stores.

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
    FeatureStoreOptions,
    UsageError,
    check_online_store,
    is_local,
    redacted,
    report,
    run_main,
)
from transforms.feature_pipeline import FeaturePipeline, ReadEventFiles, matching_files
from transforms.spec import load_spec

_LOG = logging.getLogger(__name__)


class BackfillOptions(FeatureStoreOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--events", help="Glob of JSONL (.jsonl, .json, .gz) or .parquet event files.")


def build(pipeline: beam.Pipeline, options: BackfillOptions) -> None:
    spec = load_spec(options.feature_spec)
    (
        pipeline
        | "Read events" >> ReadEventFiles(options.events)
        | "Features" >> FeaturePipeline(
            spec,
            streaming=False,
            online_store=options.online_store,
            offline_store=options.offline_store,
            dead_letter=options.dead_letter,
        )
    )


def run(argv: Optional[Sequence[str]] = None) -> beam.runners.runner.PipelineResult:
    options = PipelineOptions(argv)
    backfill = options.view_as(BackfillOptions)
    missing = [f"--{n}" for n in ("events", "feature_spec", "online_store", "offline_store")
               if not getattr(backfill, n)]
    if missing:
        raise UsageError(f"missing required option(s): {', '.join(missing)}")
    spec = load_spec(backfill.feature_spec)
    if not matching_files(backfill.events):
        raise UsageError(f"--events: no files match {backfill.events!r}")
    if backfill.dead_letter is None:
        backfill.dead_letter = backfill.offline_store.rstrip("/") + "/_dead_letters"
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or "DirectRunner"
    if is_local(options):
        check_online_store(backfill.online_store, spec)
    _LOG.info(
        "backfill: %d view(s) from %s -> online %s, offline %s, dead letters %s",
        len(spec.feature_views), backfill.events, redacted(backfill.online_store),
        backfill.offline_store, backfill.dead_letter,
    )
    pipeline = beam.Pipeline(options=options)
    build(pipeline, backfill)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    def _main() -> None:
        report(run(argv))

    run_main("backfill_features", _main)


if __name__ == "__main__":
    main(sys.argv[1:])
