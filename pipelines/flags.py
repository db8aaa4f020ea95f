"""Every entry point's own flags, declared without Beam, so that `--help` answers before Beam is
imported (`python -m pipelines.backfill_features --help`: ~0.2 s instead of 4-10 s).

Each class is a plain declaration (help group, argparse arguments); `pipelines.common` and the entry
modules make it Beam pipeline options with `class XOptions(XFlags, PipelineOptions)`, so Beam,
`view_as`, strict flags and the Flex Template metadata checks see the same flags. An entry module
calls `help_before_imports` first thing when run as a program.
"""

from __future__ import annotations

import sys


class FeatureStoreFlags:
    """Options every feature pipeline takes (snake_case: they double as template parameters)."""

    group = "stores"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--feature_spec", help="Path to the feature spec YAML.")
        parser.add_argument(
            "--online_store",
            help="sqlite:///path/online.db (embedded) or redis://[user:password@]host:port/db, rediss://...",
        )
        parser.add_argument("--offline_store", help="Directory (local or gs://) for Parquet feature rows.")
        parser.add_argument(
            "--dead_letter",
            help="Directory for dead-letter JSONL (default: <offline_store>/_dead_letters).",
        )


class EventFileFlags:
    group = "input"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--events", help="Glob of JSONL (.jsonl, .json, .gz) or .parquet event files.")


class PubSubInputFlags:
    group = "input"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--input_subscription", help="projects/<project>/subscriptions/<subscription>")
        parser.add_argument("--input_topic", help="projects/<project>/topics/<topic> (a subscription is created)")
        parser.add_argument(
            "--timestamp_attribute",
            help="Message attribute with the event time (epoch ms or RFC 3339); default: the spec's timestamp_field",
        )
        parser.add_argument(
            "--id_attribute", help="Message attribute with a unique id, for de-duplication on Dataflow"
        )


class PreaggregateFlags:
    """The fast path's switch, one flag for the backfill and the streaming pipeline."""

    group = "behaviour"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--preaggregate", default="true", choices=("true", "false"),
            help="Pre-aggregate per (entity, period tile) (default true): the backfill while reading "
                 "the files; streaming inside each bundle, so windows and triggers carry partial "
                 "accumulators (a count trigger, late_every, then counts partials). false: one "
                 "element per event and window, like hand-written Beam.",
        )


class BackfillFlags:
    group = "behaviour"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--from_dead_letters", nargs="?", const="true", default="false", choices=("true", "false"),
            help="--events are dead-letter JSONL files of an earlier run: process their payloads (the "
                 "records as received) again, e.g. too_late events after raising allowed_lateness.",
        )


class ReplayFlags:
    group = "behaviour"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--replay", action="store_true",
            help="Play --events as a stream (file order = arrival order): on Prism (the local default "
                 "once `make engines` has run) in real time, on the BundleBasedDirectRunner in "
                 "TestStream's simulated time.",
        )
        parser.add_argument(
            "--replay_speed", type=float, default=60.0,
            help="Prism's replay: seconds of event time played per real second (processing-time "
                 "triggers such as early_every fire in real seconds).",
        )
        parser.add_argument(
            "--replay_max_delay", default="30s",
            help="Bounded out-of-orderness of the replay: the watermark trails the newest event by this.",
        )


class EmbedFlags:
    """Model and batching knobs of the embedding pipeline."""

    group = "behaviour"

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--model_path",
            help="Local directory or gs:// path of a sentence-transformer in Hugging Face layout, "
            "for embeddings whose spec entry names none (default: the packaged all-MiniLM-L6-v2).",
        )
        parser.add_argument(
            "--device", default="auto", help="auto (CUDA when available, else CPU) | cuda | cpu"
        )
        parser.add_argument(
            "--min_batch_size", type=int, default=8, help="Smallest RunInference batch."
        )
        parser.add_argument(
            "--max_batch_size", type=int, default=64, help="Largest RunInference batch."
        )
        parser.add_argument(
            "--max_batch_duration_secs",
            type=float,
            default=1.0,
            help="Streaming only: the longest a partial batch waits for more texts.",
        )


# What each entry point's --help lists, in order (its OPTIONS are these as PipelineOptions).
ENTRY_POINTS: dict[str, tuple[type, ...]] = {
    "backfill_features": (EventFileFlags, FeatureStoreFlags, PreaggregateFlags, BackfillFlags),
    "streaming_features": (PubSubInputFlags, EventFileFlags, ReplayFlags, PreaggregateFlags, FeatureStoreFlags),
    "embed_texts": (EventFileFlags, PubSubInputFlags, EmbedFlags, FeatureStoreFlags),
}


def help_before_imports(program: str, description: str) -> None:
    """`-h`/`--help` of an entry point run as a program: print its grouped help and exit 0 before
    the entry module imports Beam; otherwise return (`--help_beam` lists Beam's options, which
    needs Beam: the entry point's run_main answers it)."""
    from pipelines.cli import handle_help

    argv = sys.argv[1:]
    if {"-h", "--help"} & set(argv) and "--help_beam" not in argv:
        handle_help(program, description, ENTRY_POINTS[program], argv)
