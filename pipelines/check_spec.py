"""Check a feature spec against a sample of the events it will read, before a run.

    python -m pipelines.check_spec --feature_spec shop.yaml --events 'events/*.jsonl' [--sample 10000]

Reports every field the spec reads (timestamp, id, join keys, feature fields, `where` keys)
that no sampled event has, with the closest field the events do have ("did you mean"), and every
`where` value no sampled event matches. A typo'd `field:` would otherwise make a feature null or
0 for every entity without a word. Exit 0: every field was seen; 1: something was never seen (the
report says what); 2: a usage or spec error. Reads JSONL (also .gz) and Parquet, locally or on
any filesystem Beam knows; does not import Beam for local files.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import gzip
import io
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import orjson

from transforms.spec import FeatureSpecFile, SpecError, load_spec, where_matches

PROGRAM = "check_spec"


def fail(message: str) -> None:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _open(path: str) -> io.BufferedIOBase:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(path)
    return open(path, "rb")


def _match(pattern: str) -> list[str]:
    if "://" in pattern:
        from apache_beam.io.filesystems import FileSystems

        return sorted(m.path for result in FileSystems.match([pattern]) for m in result.metadata_list)
    return sorted(glob.glob(pattern)) or ([pattern] if os.path.isfile(pattern) else [])


def sample_records(patterns: Sequence[str], limit: int) -> Iterator[Any]:
    """Up to `limit` decoded records from the files matching `patterns`, in file-name order
    (lines that are not JSON are skipped: the pipeline dead-letters them)."""
    seen = 0
    for path in (p for pattern in patterns for p in _match(pattern)):
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            with _open(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
                    for record in batch.to_pylist():
                        yield record
                        seen += 1
                        if seen >= limit:
                            return
            continue
        with _open(path) as raw:
            handle = gzip.open(raw) if path.endswith(".gz") else raw
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                yield record
                seen += 1
                if seen >= limit:
                    return


@dataclass
class Usage:
    """Where the spec reads one field: 'source.timestamp_field', 'user_5m.spend (field)', ..."""

    field: str
    places: list[str] = field(default_factory=list)


def _uses(spec: FeatureSpecFile) -> dict[str, Usage]:
    uses: dict[str, Usage] = {}

    def use(name: str, place: str) -> None:
        uses.setdefault(name, Usage(name)).places.append(place)

    use(spec.source.timestamp_field, "source.timestamp_field")
    if spec.source.id_field:
        use(spec.source.id_field, "source.id_field")
    used_entities = {v.entity for v in spec.feature_views} | {e.entity for e in spec.embeddings}
    for name in sorted(used_entities):
        use(spec.entities[name].join_key, f"entities.{name}.join_key")
    for view in spec.feature_views:
        for feature in view.features:
            if feature.field:
                use(feature.field, f"{view.name}.{feature.name} (field)")
            for key in feature.where or {}:
                use(key, f"{view.name}.{feature.name} (where)")
    for embedding in spec.embeddings:
        use(embedding.field, f"{embedding.name} (embedding field)")
    return uses


def check(spec: FeatureSpecFile, records: Sequence[Any]) -> list[str]:
    """The problems found, one line each (empty: every field the spec reads was seen)."""
    present: Counter[str] = Counter()
    values: dict[str, Counter] = {}
    where_fields = {key for v in spec.feature_views for f in v.features for key in (f.where or {})}
    objects = 0
    for record in records:
        if not isinstance(record, dict):
            continue
        objects += 1
        for key, value in record.items():
            if value is not None:
                present[key] += 1
            if key in where_fields and isinstance(value, (str, int, float, bool)):
                values.setdefault(key, Counter())[value] += 1
    if not objects:
        return ["no JSON object in the sample: check --events"]
    problems = []
    known = sorted(present)
    for usage in _uses(spec).values():
        if present[usage.field]:
            continue
        close = difflib.get_close_matches(usage.field, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(f"no sampled event has a value for {usage.field!r} (used by {', '.join(usage.places)}){hint}")
    for view in spec.feature_views:
        for feature in view.features:
            for key, allowed in (feature.where or {}).items():
                if not present[key]:
                    continue  # reported above
                wanted = allowed if isinstance(allowed, list) else [allowed]
                seen = values.get(key, Counter())
                if not any(where_matches(candidate, wanted) for candidate in seen):
                    common = ", ".join(repr(v) for v, _ in seen.most_common(5))
                    problems.append(f"{view.name}.{feature.name}: no sampled event has {key} in {wanted!r} "
                                    f"(most common values: {common})")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{PROGRAM}", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature_spec", required=True, help="The feature spec (YAML, local or gs://).")
    parser.add_argument("--events", required=True, action="append",
                        help="Event files: a path or glob (JSONL, .gz, Parquet); repeatable.")
    parser.add_argument("--sample", type=int, default=10_000, help="How many events to read (default: 10000).")
    args = parser.parse_args(argv)
    if args.sample < 1:
        fail(f"--sample must be at least 1 (got {args.sample})")
    try:
        spec = load_spec(args.feature_spec)
    except SpecError as err:
        fail(str(err))
    if not any(_match(pattern) for pattern in args.events):
        fail(f"--events: no file matches {', '.join(args.events)}")
    records = list(sample_records(args.events, args.sample))
    problems = check(spec, records)
    print(f"{PROGRAM}: {len(records)} events sampled from {', '.join(args.events)}")
    for problem in problems:
        print(f"  {problem}")
    if problems:
        sys.exit(1)
    print("  every field the spec reads was seen")


if __name__ == "__main__":
    main(sys.argv[1:])
