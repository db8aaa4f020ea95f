"""What every pipeline entry point shares: options, clear one-line errors, run and report."""

from __future__ import annotations

import logging
import os
import platform
import contextlib
import sys
import time
import traceback
from typing import Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.cli import check_flags, describe_failure, fail, handle_help
from pipelines.flags import EventFileFlags, FeatureStoreFlags, PreaggregateFlags, PubSubInputFlags
from transforms import progress
from transforms.io.online.base import StoreConfigError, StoreError
from transforms.io.online.config import redact_url
from transforms.io.online.registry import open_online_store
from transforms.spec import FeatureSpecFile, SpecError, load_spec

_LOG = logging.getLogger(__name__)
LOCAL_RUNNERS = {"directrunner", "bundlebaseddirectrunner", "fnapirunner", "prismrunner",
                 "switchingdirectrunner", "testdirectrunner"}
# Beam's own streaming engine (the DirectRunner's), which runs Pub/Sub and TestStream only
DIRECT_STREAMING_RUNNERS = ("bundlebaseddirectrunner", "switchingdirectrunner")


class VerboseOptions(PipelineOptions):
    """--verbose on every entry point (listed by pipelines.cli's help under behaviour)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--verbose", action="store_true", help="On a runtime failure, print the full traceback too.")


class UsageError(Exception):
    """A user mistake on the command line; printed as one line, exit code 2."""


class FeatureStoreOptions(FeatureStoreFlags, PipelineOptions):
    """FeatureStoreFlags (pipelines.flags) as Beam pipeline options."""


class EventFileOptions(EventFileFlags, PipelineOptions):
    """EventFileFlags (pipelines.flags) as Beam pipeline options."""


class PreaggregateOptions(PreaggregateFlags, PipelineOptions):
    """PreaggregateFlags (pipelines.flags) as Beam pipeline options (backfill and streaming)."""


class PubSubInputOptions(PubSubInputFlags, PipelineOptions):
    """PubSubInputFlags (pipelines.flags) as Beam pipeline options."""


# Beam discovers only *direct* PipelineOptions subclasses, so options are shared by composition:
# each pipeline lists the option classes it reads (flex_templates checks its metadata against them).


def require(options: PipelineOptions, *names: str) -> None:
    values = options.get_all_options()
    missing = [f"--{n}" for n in names if not values.get(n)]
    if missing:
        raise UsageError(f"missing required option(s): {', '.join(missing)}")


def runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner
    return runner if isinstance(runner, str) else type(runner).__name__ if runner else "DirectRunner"


def is_local(options: PipelineOptions) -> bool:
    return runner_name(options).lower() in LOCAL_RUNNERS


def dead_letter_destination(stores: "FeatureStoreOptions") -> str:
    """--dead_letter, defaulting to <offline_store>/_dead_letters (set on the options too)."""
    if stores.dead_letter is None:
        stores.dead_letter = stores.offline_store.rstrip("/") + "/_dead_letters"
    return stores.dead_letter


def check_outputs(stores: "FeatureStoreOptions") -> None:
    """Local output directories must be directories we can write (or create), checked before any
    work and without creating anything (--dead_letter defaulted first)."""
    dead_letter_destination(stores)
    for flag, path in (("--offline_store", stores.offline_store), ("--dead_letter", stores.dead_letter)):
        if not path or "://" in path or path.startswith("projects/"):
            continue  # remote filesystems and Pub/Sub topics are checked by their clients
        existing = os.path.abspath(path)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            what = "is a file" if existing == os.path.abspath(path) else f"is inside a file ({existing})"
            raise UsageError(f"{flag}: {path!r} {what}, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{flag}: cannot write to {path!r} ({existing} is not writable)")


def prism_cached() -> bool:
    """Whether Prism is in Beam's cache (`make engines` puts it there), so that PrismRunner and
    the DirectRunner's first choice run it without a download."""
    arch = {"x86_64": "amd64", "x86-64": "amd64", "x64": "amd64", "aarch64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower())
    name = f"apache_beam-v{beam.__version__}-prism-{platform.system().lower()}-{arch}.zip"
    return os.path.exists(os.path.join(os.path.expanduser("~/.apache_beam/cache/prism/bin"), name))


def use_streaming_engine(options: PipelineOptions, pubsub: "PubSubInputOptions") -> bool:
    """Streaming mode. Beam's DirectRunner would hand a streaming pipeline without Pub/Sub or
    TestStream to its batch engine (which cannot fire processing-time triggers), after first
    trying to download Prism; its streaming engine is the BundleBasedDirectRunner, so run that.
    Returns True on a local direct runner, where --id_attribute is refused with the reason."""
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if (standard.runner or "DirectRunner") == "DirectRunner":
        standard.runner = "BundleBasedDirectRunner"
    direct = runner_name(options).lower() in DIRECT_STREAMING_RUNNERS
    if pubsub.id_attribute and direct:
        raise UsageError(
            "--id_attribute: Beam's DirectRunner cannot de-duplicate Pub/Sub messages by attribute "
            "(it raises NotImplementedError for id_label); use it on Dataflow, or drop the flag locally"
        )
    return direct


def read_pubsub(pipeline: beam.Pipeline, pubsub: "PubSubInputOptions") -> beam.PCollection:
    from transforms.streaming.pubsub import ReadPubSubEvents

    try:
        return pipeline | "Read events" >> ReadPubSubEvents(
            pubsub.input_subscription, pubsub.input_topic, pubsub.timestamp_attribute, pubsub.id_attribute
        )
    except ValueError as err:  # a malformed topic or subscription path
        raise UsageError(str(err)) from None


def run_pipeline(pipeline: beam.Pipeline, wait: bool = True, on_start=None) -> beam.runners.runner.PipelineResult:
    """Run (calling on_start(result) once started); when waiting, Ctrl-C cancels the job
    instead of leaving it running."""
    result = pipeline.run()
    if on_start:
        on_start(result)
    if wait:
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            _LOG.info("interrupted: cancelling the pipeline")
            result.cancel()
    return result


def check_online_store(url: str, spec: FeatureSpecFile) -> None:
    """Open (and for Redis, ping) the online store before launching, so a wrong URL or a
    server that is down fails in a second with a clear message instead of inside a bundle."""
    store = open_online_store(url, spec)
    try:
        ping = getattr(store, "ping", None)
        if ping:
            ping()
    finally:
        store.close()


def engine_name(result: beam.runners.runner.PipelineResult, options: Optional[PipelineOptions] = None) -> str:
    """The engine that ran a pipeline: Beam's DirectRunner hands a pipeline to Prism when it can
    (its binary cached or downloadable), else to its Python engines; the result's type tells."""
    from apache_beam.runners.direct.direct_runner import DirectPipelineResult
    from apache_beam.runners.portability.fn_api_runner.fn_runner import RunnerResult

    if isinstance(result, RunnerResult):
        return "FnApiRunner (Beam's Python batch engine)"
    if isinstance(result, DirectPipelineResult):
        return "BundleBasedDirectRunner (Beam's Python streaming engine)"
    runner = runner_name(options) if options is not None else type(result).__name__
    if runner.lower() in ("directrunner", "prismrunner"):
        return "Prism"
    if runner.lower() == "flinkrunner":
        return f"Flink ({options.get_all_options().get('flink_master') or '[auto]'})"
    return runner


def query_metrics(result: beam.runners.runner.PipelineResult) -> dict[str, list]:
    """`result.metrics().query()`, with each metric summed over the engine's stages that ran its step.

    Why: a step fed by a Flatten of inputs from different stages (the offline writer after the
    per-view rows are merged) is fused into each of those stages. Flink's job server reports one
    MonitoringInfo per stage for it, under the same step and name, and Beam's PortableMetrics
    keeps only the last of them (offline_store.rows_written 245 of 311: one view's stage). Beam's
    FnApiRunner sums the same case with `monitoring_infos.consolidate`; this does the same here.
    """
    from apache_beam.metrics import monitoring_infos
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability import portable_runner

    job_service, job_id = getattr(result, "_job_service", None), getattr(result, "_job_id", None)
    if not isinstance(result, portable_runner.PipelineResult) or job_service is None or job_id is None:
        return result.metrics().query()
    response = job_service.GetJobMetrics(beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id))
    for kind in (response.metrics.attempted, response.metrics.committed):
        merged = list(monitoring_infos.consolidate(kind))
        del kind[:]
        kind.extend(merged)
    return portable_runner.PortableMetrics(response).query()


def report(result: beam.runners.runner.PipelineResult, options: Optional[PipelineOptions] = None,
           out=None) -> dict[str, int]:
    """Print the engine that ran, the run's summary table (pipelines.summary.run_summary) and every
    counter, to `out` (default: stderr). Returns the counters."""
    from pipelines.summary import run_summary

    out = out or sys.stderr
    engine = engine_name(result, options)
    print(f"engine: {engine}", file=out)
    counters: dict[str, int] = {}
    lags: dict[str, tuple[int, int, int]] = {}  # freshness per view: (count, sum, max) of lag ms
    try:
        metrics = query_metrics(result)
        for counter in metrics["counters"]:
            key = f"{counter.key.metric.namespace}.{counter.key.metric.name}"
            counters[key] = counters.get(key, 0) + (counter.committed or counter.attempted or 0)
        for dist in metrics.get("distributions", []):
            if dist.key.metric.namespace == "freshness" and dist.key.metric.name.startswith("lag_ms."):
                data = dist.committed or dist.attempted
                if data is not None and data.count:
                    view = dist.key.metric.name.split(".", 1)[1]
                    count, total, top = lags.get(view, (0, 0, 0))
                    lags[view] = (count + data.count, total + data.sum, max(top, data.max))
    except Exception as err:  # some runners do not support metrics queries
        _LOG.info("metrics unavailable: %s", err)
        return counters
    if counters:
        spec = None
        path = options.view_as(FeatureStoreOptions).feature_spec if options is not None else None
        if path:
            try:
                spec = load_spec(path)
            except SpecError:
                spec = None
        elapsed = time.monotonic() - _STARTED[0] if _STARTED else None
        print("\n".join(run_summary(counters, spec, elapsed, engine, lags)), file=out)
        print("counters:", file=out)
        for key in sorted(counters):
            print(f"  {key:45s} {counters[key]:>12,}", file=out)
    return counters


def input_bytes(pattern: str) -> Optional[int]:
    """The size of the files matching `pattern` (None when the filesystem can't say)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        return sum(m.size_in_bytes for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # an unmatched glob or a filesystem without sizes: progress without a total
        return None


@contextlib.contextmanager
def file_progress(program: str, options: PipelineOptions) -> Iterator[None]:
    """Progress of a run reading --events files (transforms.progress), while it lasts."""
    events = options.view_as(EventFileOptions).events
    if not events:
        yield
        return
    progress.start(program, input_bytes(events))
    try:
        yield
    finally:
        progress.stop()


_STARTED: list[float] = []  # when run_main started the entry point (for the summary's elapsed time)


def run_main(program: str, main, argv: Optional[Sequence[str]] = None, options: Sequence[type] = (),
             description: Optional[str] = None) -> None:
    """Run an entry point: --help / --help_beam print and exit 0; unknown flags, spec errors and
    other user mistakes are one line and exit 2; a failed run is one line naming the step and the
    cause, exit 1 (the traceback too with --verbose)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _STARTED[:] = [time.monotonic()]
    if options:
        handle_help(program, description, options, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam.runners", "apache_beam.io", "apache_beam.transforms", "apache_beam.typehints"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if options:
            check_flags(options, argv)
        main()
    except (SpecError, UsageError, StoreConfigError) as err:  # an unsupported store URL is a usage error
        fail(program, str(err))
    except Exception as err:
        if "--verbose" in argv:
            traceback.print_exc()
        # Runners wrap a failed bundle's exception in their own; a store that stayed unreachable
        # after its retry budget is its own clear line.
        cause: Optional[BaseException] = err
        while cause is not None and not isinstance(cause, StoreError):
            cause = cause.__cause__ or cause.__context__
        fail(program, str(cause) if cause is not None else describe_failure(err), code=1)


def redacted(url: Optional[str]) -> str:
    return redact_url(url) if url else "-"
