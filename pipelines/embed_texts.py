r"""Text embeddings: every `embeddings:` entry of the spec -> online store and offline Parquet.

    python -m pipelines.embed_texts --feature_spec shop.yaml --online_store sqlite:///online.db \
        --offline_store offline/ --events 'data/*.jsonl' [--model_path DIR|gs://...] \
        [--device auto|cpu|cuda] [--dead_letter DIR] [beam options]

    python -m pipelines.embed_texts ... --input_subscription projects/P/subscriptions/S

Files (JSONL or Parquet) run as a bounded job; Pub/Sub as a streaming job. The online store keeps
the embedding of each entity's latest text by event time.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

if __name__ == "__main__":  # --help before the imports below load Beam (~0.2 s instead of 4-10 s)
    from pipelines.flags import help_before_imports

    help_before_imports("embed_texts", __doc__)

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.flags import EmbedFlags
from pipelines.common import (
    EventFileOptions,
    FeatureStoreOptions,
    PubSubInputOptions,
    UsageError,
    check_online_store,
    check_outputs,
    file_progress,
    is_local,
    redacted,
    report,
    read_pubsub,
    require,
    run_main,
    run_pipeline,
    use_streaming_engine,
)
from transforms.backfill.files import ReadEventFiles, matching_files
from transforms.embed.model import DEVICES, EmbeddingDependencyError, TextEmbeddingHandler
from transforms.embed.transform import EmbedTexts, ParseTextEvents
from transforms.io.sinks import WriteDeadLetters, WriteEmbeddingsOffline, WriteOnline
from transforms.spec import load_spec

_LOG = logging.getLogger(__name__)


class EmbedOptions(EmbedFlags, PipelineOptions):
    """EmbedFlags (pipelines.flags) as Beam pipeline options."""


OPTIONS = (EventFileOptions, PubSubInputOptions, EmbedOptions, FeatureStoreOptions)


def make_handler(
    model_path: Optional[str], knobs: EmbedOptions, streaming: bool
) -> TextEmbeddingHandler:
    """The RunInference handler for one embedding; bad knobs become UsageErrors naming the flag."""
    if knobs.device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)} (got {knobs.device!r})")
    try:
        return TextEmbeddingHandler(
            model_path,
            device=knobs.device,
            min_batch_size=knobs.min_batch_size,
            max_batch_size=knobs.max_batch_size,
            # Bounded runs flush partial batches at the end of each bundle; only a stream needs
            # a clock (it makes BatchElements stateful, keyed per worker).
            max_batch_duration_secs=knobs.max_batch_duration_secs if streaming else None,
        )
    except EmbeddingDependencyError as err:
        raise UsageError(str(err)) from None
    except ValueError as err:
        raise UsageError(f"--model_path/batch options: {err}") from None


def check_options(options: PipelineOptions) -> None:
    """Validation: flags, the one input, the spec's embeddings, outputs, the engine (set on the
    options) and (locally) the online store."""
    events = options.view_as(EventFileOptions).events
    pubsub = options.view_as(PubSubInputOptions)
    stores = options.view_as(FeatureStoreOptions)
    require(options, "feature_spec", "online_store", "offline_store")
    if sum([bool(events), bool(pubsub.input_subscription), bool(pubsub.input_topic)]) != 1:
        raise UsageError("give exactly one input: --events, --input_subscription or --input_topic")
    spec = load_spec(stores.feature_spec)
    if not spec.embeddings:
        raise UsageError(f"{stores.feature_spec}: no `embeddings:` section; nothing to embed")
    check_outputs(stores)
    if not events:
        use_streaming_engine(options, pubsub)
    else:
        standard = options.view_as(StandardOptions)
        standard.runner = standard.runner or "DirectRunner"
        if not matching_files(events):
            raise UsageError(f"--events: no files match {events!r}")
    if is_local(options):
        check_online_store(stores.online_store, spec)


def build(pipeline: beam.Pipeline, options: PipelineOptions) -> None:
    """The graph: files (bounded) or Pub/Sub (a stream) -> one parse + EmbedTexts per embedding
    -> online, offline and dead letters."""
    events = options.view_as(EventFileOptions).events
    pubsub = options.view_as(PubSubInputOptions)
    knobs = options.view_as(EmbedOptions)
    stores = options.view_as(FeatureStoreOptions)
    spec = load_spec(stores.feature_spec)
    if events:
        raw = pipeline | "Read events" >> ReadEventFiles(events)
        source = events
    else:
        raw = read_pubsub(pipeline, pubsub)
        source = pubsub.input_subscription or pubsub.input_topic
    streaming = not raw.is_bounded
    timestamp_from_element = streaming and bool(pubsub.timestamp_attribute)
    rows, dead = [], []
    for embedding in spec.embeddings:
        model_path = embedding.model_path or knobs.model_path
        if embedding.model_path and knobs.model_path and embedding.model_path != knobs.model_path:
            _LOG.warning(
                "embedding %s: the spec's model_path %s overrides --model_path %s",
                embedding.name,
                embedding.model_path,
                knobs.model_path,
            )
        handler = make_handler(model_path, knobs, streaming)
        parsed = raw | f"Parse {embedding.name}" >> ParseTextEvents(
            spec, embedding, timestamp_from_element
        )
        out = parsed.texts | f"Embed {embedding.name}" >> EmbedTexts(spec, embedding, handler)
        rows.append(out.rows)
        dead += [parsed.dead_letter, out.dead_letters]
    merged = rows | "Merge embeddings" >> beam.Flatten()
    merged | "Online store" >> WriteOnline(stores.online_store, spec)
    merged | "Offline store" >> WriteEmbeddingsOffline(stores.offline_store, spec)
    (
        dead
        | "Merge dead letters" >> beam.Flatten()
        | "Dead letters" >> WriteDeadLetters(stores.dead_letter)
    )
    _LOG.info(
        "embed_texts: %s from %s -> online %s, offline %s, dead letters %s",
        ", ".join(e.name for e in spec.embeddings),
        source,
        redacted(stores.online_store),
        stores.offline_store,
        stores.dead_letter,
    )


def run(
    argv: Optional[Sequence[str]] = None, wait: bool = True
) -> beam.runners.runner.PipelineResult:
    options = PipelineOptions(argv)
    check_options(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, options)
    return run_pipeline(pipeline, wait)


def main(argv: Optional[Sequence[str]] = None) -> None:
    def _main() -> None:
        options = PipelineOptions(argv)
        with file_progress("embed_texts", options):
            result = run(argv)
        report(result, options)

    run_main("embed_texts", _main, argv, OPTIONS, __doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
