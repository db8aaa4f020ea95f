"""Read features back from the online store: one JSON line per entity.

    python -m pipelines.get_features --feature_spec shop.yaml --online_store sqlite:///online.db \
        --view user_5m --entity u1 --entity u2
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence

from pipelines.common import UsageError, run_main
from transforms.io.online.feast_codec import rfc3339
from transforms.io.online.registry import open_online_store
from transforms.spec import load_spec


def get_features(spec_path: str, online_store: str, view: str, entities: Sequence[str]) -> list[dict[str, Any]]:
    spec = load_spec(spec_path)
    store = open_online_store(online_store, spec)
    try:
        layout = store.layout(view)
        keys: list[Any] = list(entities)
        if layout.key_dtype == "int64":
            try:
                keys = [int(e) for e in entities]
            except ValueError:
                raise UsageError(f"--entity: {layout.join_key} is an int64 key (got {entities!r})") from None
        records = store.read(view, keys)
    finally:
        store.close()
    out = []
    for entity, record in zip(keys, records):
        if record is None:
            out.append({"view": view, "entity": entity, "window_start": None, "window_end": None,
                        "features": {name: None for name in layout.feature_names}})
        else:
            out.append({"view": view, "entity": entity, "window_start": rfc3339(record.window_start_ms),
                        "window_end": rfc3339(record.window_end_ms), "features": record.features})
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="get_features", description=__doc__.splitlines()[0])
    parser.add_argument("--feature_spec", required=True)
    parser.add_argument("--online_store", required=True)
    parser.add_argument("--view", required=True)
    parser.add_argument("--entity", action="append", required=True)
    args = parser.parse_args(argv)

    def _main() -> None:
        for line in get_features(args.feature_spec, args.online_store, args.view, args.entity):
            print(json.dumps(line))

    run_main("get_features", _main)


if __name__ == "__main__":
    main(sys.argv[1:])
