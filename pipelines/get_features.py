"""Read features back from the online store: one JSON line per entity, or a table.

    python -m pipelines.get_features --feature_spec shop.yaml --online_store sqlite:///online.db \
        --view user_5m --entity u1 --entity u2 [--format json|table]

Each row carries `event_timestamp` (the window's end), `created_timestamp` (when the stored pane
was written), the window and the features; an entity without features has nulls. No Beam import:
a call takes a fraction of a second. Exit codes: 0 answered; 2 a usage or spec error, a store
that is not there (nothing is created) or was written with another spec; 1 the store failed
(unreachable after retries).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any, Optional, Sequence

from pipelines.cli import fail

PROGRAM = "get_features"


def get_features(spec_path: str, online_store: str, view: str, entities: Sequence[str]) -> list[dict[str, Any]]:
    """The JSON rows `get_features` prints (the Python API is transforms.FeatureReader)."""
    from transforms.io.online.reader import FeatureReader

    with FeatureReader(spec_path, online_store) as reader:
        return [row.to_json() for row in reader.get(view, entities)]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as an aligned text table: entity, times, then one column per feature."""
    features = list(rows[0]["features"]) if rows else []
    header = ["entity", "event_timestamp", "created_timestamp", *features]
    body = [[_cell(row["entity"]), _cell(row["event_timestamp"]), _cell(row["created_timestamp"]),
             *(_cell(row["features"].get(name)) for name in features)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in [header, *body])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return str(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{PROGRAM}", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--feature_spec", required=True, help="Path to the feature spec YAML the store was written with.")
    parser.add_argument("--online_store", required=True,
                        help="sqlite:///path/online.db or redis://[user:password@]host:port/db, rediss://...")
    parser.add_argument("--view", required=True, help="Feature view (or embedding) name from the spec.")
    parser.add_argument("--entity", action="append", required=True,
                        help="Entity key; repeat the flag for several entities.")
    parser.add_argument("--format", choices=("json", "table"), default="json",
                        help="json: one JSON object per line (default); table: aligned columns.")
    parser.add_argument("--verbose", action="store_true", help="On a store failure, print the full traceback too.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parser().parse_args(argv)  # usage errors: argparse's message, exit 2
    if __name__ == "__main__" and "opentelemetry.sdk.metrics" not in sys.modules:
        # redis-py imports OpenTelemetry's SDK when it is installed (Beam's dependencies bring
        # it), for metrics this one-shot program never turns on: ~0.06 s of a 0.3 s call. redis-py
        # treats the SDK as optional (ImportError: off), so tell it the SDK is absent here.
        sys.modules["opentelemetry.sdk.metrics"] = None  # type: ignore[assignment]
    from transforms.io.online.base import StoreError, StoreNotFoundError
    from transforms.spec import SpecError

    try:
        rows = get_features(args.feature_spec, args.online_store, args.view, args.entity)
    except (SpecError, StoreNotFoundError, ValueError) as err:
        fail(PROGRAM, str(err))
    except StoreError as err:
        if args.verbose:
            traceback.print_exc()
        fail(PROGRAM, str(err), code=1)
    if args.format == "table":
        print(format_table(rows))
    else:
        print("\n".join(json.dumps(row) for row in rows))


if __name__ == "__main__":
    main(sys.argv[1:])
