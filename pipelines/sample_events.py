"""A realistic, seeded event stream for the demo, tests and benchmarks.

Users and items with Zipf-skewed popularity, views/clicks/purchases, events slightly out of
order, a share of late events, and (optionally) a few malformed records.

    python -m pipelines.sample_events --out events.jsonl --events 100000 [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Iterator, Optional

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
EVENT_TYPES = ("view", "click", "purchase")
MALFORMED = (
    b'{"event_time": 1767225600000, "user_id": "u1", "amount": ',  # truncated JSON
    b'{"user_id": "u2", "event_type": "click"}',  # no timestamp
    b'{"event_time": "yesterday", "user_id": "u3"}',  # unparsable timestamp
    b'{"event_time": 1767225600000, "event_type": "click"}',  # no entity key
    b'{"event_time": 1767225600000, "user_id": "u4", "item_id": "i1", "amount": "12 EUR"}',  # wrong type
    b"\xff\xfe not utf-8",
    b'["an", "array"]',
)


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (rank ** s) for rank in range(1, n + 1)]


def generate(
    n_events: int,
    seed: int = 7,
    users: int = 1000,
    items: int = 500,
    events_per_second: float = 50.0,
    out_of_order_fraction: float = 0.05,
    max_disorder_ms: int = 20_000,
    late_fraction: float = 0.0,
    late_delay_ms: int = 600_000,
    malformed_every: int = 0,
    start_ms: int = START_MS,
) -> Iterator[bytes]:
    """Yield JSON lines in *arrival* order (event time mostly increasing, some disorder and lateness)."""
    rng = random.Random(seed)
    user_ids = [f"u{i}" for i in range(users)]
    item_ids = [f"i{i}" for i in range(items)]
    user_w = _zipf_weights(users)
    item_w = _zipf_weights(items)
    step_ms = 1000.0 / events_per_second
    batch = 1000
    for offset in range(0, n_events, batch):
        size = min(batch, n_events - offset)
        chosen_users = rng.choices(user_ids, user_w, k=size)
        chosen_items = rng.choices(item_ids, item_w, k=size)
        for i in range(size):
            index = offset + i
            if malformed_every and index % malformed_every == malformed_every - 1:
                yield MALFORMED[(index // malformed_every) % len(MALFORMED)]
                continue
            arrival_ms = start_ms + int(index * step_ms)
            event_ms = arrival_ms
            roll = rng.random()
            if roll < late_fraction:
                event_ms -= rng.randint(late_delay_ms // 2, late_delay_ms)
            elif roll < late_fraction + out_of_order_fraction:
                event_ms -= rng.randint(1, max_disorder_ms)
            kind = rng.choices(EVENT_TYPES, (70, 25, 5))[0]
            record = {
                "event_id": f"e{index}",
                "event_time": event_ms,
                "user_id": chosen_users[i],
                "item_id": chosen_items[i],
                "event_type": kind,
                "amount": round(rng.lognormvariate(3.0, 0.8), 2) if kind == "purchase" else None,
            }
            yield json.dumps(record, separators=(",", ":")).encode()


def write_jsonl(path: str, lines: Iterator[bytes]) -> int:
    count = 0
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")
            count += 1
    return count


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--late_fraction", type=float, default=0.0)
    parser.add_argument("--malformed_every", type=int, default=0)
    args = parser.parse_args(argv)
    count = write_jsonl(args.out, generate(args.events, args.seed, late_fraction=args.late_fraction,
                                           malformed_every=args.malformed_every))
    print(f"wrote {count} events to {args.out}")


if __name__ == "__main__":
    main()
