r"""Point-in-time correct training sets: labels joined as of their time with the offline store.

    python -m pipelines.training_set --feature_spec shop.yaml --offline_store offline/ \
        --labels labels.parquet --features user_5m:clicks,user_5m:spend,item_1h:views \
        --output train.parquet [--label_timestamp_field event_timestamp] [--as_of_created]

Labels: Parquet or JSONL (.jsonl/.json, optionally .gz) with each view's join key and a time
(timestamp, epoch ms or RFC 3339). Output: every label column unchanged, in label order, plus one
column `VIEW__FEATURE` per feature. Semantics: README "Training data" and transforms/training.py.
Locally (no --runner) the join runs in Arrow on this machine; with --runner (any Beam runner) it
runs as a Beam pipeline and OUT is a directory of part files, in label order by name.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.training import TrainingSetError, ViewRequest, join_labels, parse_features

PROGRAM = "training_set"


def read_labels(path: str) -> pa.Table:
    """A Parquet file (or directory) or a JSONL file (.gz too), local or on a Beam filesystem."""
    from apache_beam.io.filesystems import FileSystems

    if "://" not in path and not os.path.exists(path):
        raise TrainingSetError(f"--labels: no such file {path!r}")
    if path.endswith(".parquet") or os.path.isdir(path):
        if "://" in path:
            with FileSystems.open(path) as handle:
                return pq.read_table(handle)
        return pq.read_table(path)
    import pyarrow.json as pj

    with FileSystems.open(path) as handle:  # decompresses .gz by its name
        data = handle.read()
    try:
        return pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=1 << 24))
    except pa.ArrowInvalid as err:
        raise TrainingSetError(f"--labels: {path} is not JSONL ({str(err).splitlines()[0]})") from None


def read_view_panes(offline_store: str, spec, request: ViewRequest) -> pa.Table:
    """read_offline of one view; an empty table when the view has no rows yet."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.io.offline import read_offline, view_schema

    root = FileSystems.join(offline_store, request.view.name)
    if not FileSystems.exists(root) or not FileSystems.match([FileSystems.join(root, "*", "*.parquet")])[0].metadata_list:
        return view_schema(request.layout).empty_table()
    return read_offline(offline_store, request.layout)


def training_set(spec_path: str, offline_store: str, labels: pa.Table, features: Sequence[str],
                 timestamp_field: str = "event_timestamp", as_of_created: bool = False) -> pa.Table:
    """The training set as an Arrow table (the command's OUT)."""
    from transforms.spec import load_spec

    spec = load_spec(spec_path)
    requests = parse_features(spec, features)
    panes = {r.view.name: read_view_panes(offline_store, spec, r) for r in requests}
    return join_labels(labels, timestamp_field, requests, panes, as_of_created)


def run_beam(spec_path: str, offline_store: str, labels: str, features: Sequence[str], output: str,
             timestamp_field: str, as_of_created: bool, beam_args: Sequence[str]) -> int:
    """The Beam variant (transforms/training_beam.py) on the runner `beam_args` name; returns how
    many labels were written (OUT is a directory of part files, in label order by name)."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.cli import check_flags
    from pipelines.common import UsageError
    from transforms.training_beam import build

    check_flags((), beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        raise UsageError(f"Beam options ({beam_args[0]} ...) run the Beam variant: add --runner")
    pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
    build(pipeline, spec_path, offline_store, labels, features, output, timestamp_field, as_of_created)
    pipeline.run().wait_until_finish()
    parts = FileSystems.match([FileSystems.join(output, "part-*.parquet")])[0].metadata_list
    total = 0
    for part in parts:
        with FileSystems.open(part.path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{PROGRAM}", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature_spec", required=True, help="The feature spec (YAML, local or gs://).")
    parser.add_argument("--offline_store", required=True, help="The offline store the pipelines wrote.")
    parser.add_argument("--labels", required=True, help="Labels: Parquet or JSONL (.gz too).")
    parser.add_argument("--features", required=True, action="append",
                        help="VIEW:FEATURE[,VIEW:FEATURE...] (repeatable).")
    parser.add_argument("--output", required=True, help="Output Parquet file (a directory with --runner).")
    parser.add_argument("--label_timestamp_field", default="event_timestamp",
                        help="The labels' time column (default: event_timestamp).")
    parser.add_argument("--as_of_created", action="store_true",
                        help="Also ignore panes created after the label's time (what was online then).")
    parser.add_argument("--verbose", action="store_true", help="On a runtime failure, print the full traceback.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = _parser().parse_known_args(argv)  # --help answers here, before Beam is imported
    from pipelines.common import UsageError, run_main

    def _main() -> None:
        started = time.perf_counter()
        try:
            if beam_args:
                rows = run_beam(args.feature_spec, args.offline_store, args.labels, args.features,
                                args.output, args.label_timestamp_field, args.as_of_created, beam_args)
            else:
                labels = read_labels(args.labels)
                table = training_set(args.feature_spec, args.offline_store, labels, args.features,
                                     args.label_timestamp_field, args.as_of_created)
                pq.write_table(table, args.output)
                rows = table.num_rows
        except TrainingSetError as err:
            raise UsageError(str(err)) from None
        print(f"{PROGRAM}: {rows} labels -> {args.output} in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    run_main(PROGRAM, _main, argv)


if __name__ == "__main__":
    main()
