"""Every aggregation against a plain-Python reference on random events, through random merges
and accumulator coder round trips (as a shuffle would do); sketches within their error bounds."""

from __future__ import annotations

import collections
import random
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_spec, view
from transforms.combine import FeatureViewCombineFn
from transforms.aggregations import HLL_LG_K
from transforms.parse import ParsePlan

FEATURES = [
    {"name": "n", "agg": "count"},
    {"name": "clicks", "agg": "count", "where": {"event_type": "click"}},
    {"name": "spend", "agg": "sum", "field": "amount"},
    {"name": "avg", "agg": "mean", "field": "amount"},
    {"name": "lo", "agg": "min", "field": "amount"},
    {"name": "hi", "agg": "max", "field": "amount", "where": {"event_type": ["click", "buy"]}},
    {"name": "first_item", "agg": "first", "field": "item"},
    {"name": "last_item", "agg": "last", "field": "item"},
    {"name": "last_amount", "agg": "last", "field": "amount"},
    {"name": "items", "agg": "approx_count_distinct", "field": "item"},
    {"name": "p90", "agg": "approx_percentile", "field": "amount", "q": 0.9},
    {"name": "var", "agg": "variance", "field": "amount"},
    {"name": "std", "agg": "stddev", "field": "amount", "where": {"event_type": "click"}},
    {"name": "first3", "agg": "first_k", "field": "item", "k": 3},
    {"name": "last2_amount", "agg": "last_k", "field": "amount", "k": 2},
    {"name": "top2", "agg": "top_k", "field": "item", "k": 2},
    {"name": "hist", "agg": "histogram", "field": "event_type", "cap": 2},
]
SPEC = make_spec([view(features=FEATURES)])
PLAN = ParsePlan.from_spec(SPEC)
FN = FeatureViewCombineFn(SPEC, SPEC.feature_views[0])
CODER = FN.get_accumulator_coder()

events_strategy = st.lists(
    st.fixed_dictionaries({
        "ts": st.integers(0, 10_000),
        "user_id": st.just("u"),
        "amount": st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2))),
        "item": st.one_of(st.none(), st.sampled_from([f"i{k}" for k in range(30)])),
        "event_type": st.sampled_from(["click", "view", "buy"]),
    }),
    max_size=60,
)


def combine(records: list[dict], rng: random.Random) -> tuple:
    """Split into random partitions, accumulate, encode/decode, merge in random order."""
    events = [PLAN.parse(r) for r in records]
    rng.shuffle(events)
    cuts = sorted(rng.sample(range(len(events) + 1), k=min(3, len(events) + 1)))
    parts = [events[a:b] for a, b in zip([0] + cuts, cuts + [len(events)])]
    accs = []
    for part in parts:
        acc = FN.create_accumulator()
        for e in part:
            acc = FN.add_input(acc, e)
        accs.append(CODER.decode(CODER.encode(acc)))
    rng.shuffle(accs)
    return FN.extract_output(FN.merge_accumulators(accs))


def reference(records: list[dict]) -> dict:
    amounts = [r["amount"] for r in records if r["amount"] is not None]
    hi = [r["amount"] for r in records if r["amount"] is not None and r["event_type"] in ("click", "buy")]
    items = [(r["ts"], r["item"]) for r in records if r["item"] is not None]
    last_amounts = [(r["ts"], r["amount"]) for r in records if r["amount"] is not None]
    clicked = [r["amount"] for r in records if r["amount"] is not None and r["event_type"] == "click"]
    return {
        "max_ts": max((r["ts"] for r in records), default=-1),
        "n": len(records),
        "clicks": sum(r["event_type"] == "click" for r in records),
        "spend": sum(amounts),
        "avg": statistics.fmean(amounts) if amounts else None,
        "lo": min(amounts, default=None),
        "hi": max(hi, default=None),
        # ties on event time are broken by value, so the result never depends on merge order
        "first_item": min(items)[1] if items else None,
        "last_item": max(items)[1] if items else None,
        "last_amount": max(last_amounts)[1] if last_amounts else None,
        "items": len({i for _, i in items}),
        "amounts": sorted(amounts),
        "var": statistics.pvariance(amounts) if amounts else None,
        "std": statistics.pstdev(clicked) if clicked else None,
        "first3": [i for _, i in sorted(items)[:3]] or None,
        "last2_amount": [a for _, a in sorted(last_amounts, reverse=True)[:2]] or None,
        "top2": [i for i, _ in ranked(i for _, i in items)[:2]] or None,
        "hist": dict(ranked(r["event_type"] for r in records)[:2]) or None,
    }


def ranked(values) -> list[tuple]:
    """(value, count) by count, then value: the order of top_k and histogram."""
    return sorted(collections.Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))


def check_quantile(value, data: list[float], q: float, eps: float) -> None:
    if not data:
        assert value is None
        return
    n = len(data)
    below = sum(x < value for x in data) / n
    at_or_below = sum(x <= value for x in data) / n
    assert below - eps <= q <= at_or_below + eps, (value, below, at_or_below)


@settings(max_examples=150, deadline=None)
@given(events_strategy, st.integers(0, 2**31))
def test_every_aggregation_matches_the_reference(records, seed):
    records = [{**r, "ts": 1_700_000_000_000 + r["ts"]} for r in records]
    out = combine(records, random.Random(seed))
    ref = reference(records)
    names = ["max_ts"] + [f["name"] for f in FEATURES]
    got = dict(zip(names, out))
    assert got["max_ts"] == ref["max_ts"]
    for exact in ("n", "clicks", "lo", "hi", "first_item", "last_item", "last_amount", "first3", "last2_amount",
                  "top2", "hist"):  # top_k's sketch is exact below 768 distinct values
        assert got[exact] == ref[exact], exact
    assert abs(got["spend"] - ref["spend"]) <= 1e-6 * max(1.0, sum(abs(a) for a in ref["amounts"]))
    if ref["avg"] is None:
        assert got["avg"] is None
    else:
        assert abs(got["avg"] - ref["avg"]) <= 1e-6 * max(1.0, max(abs(a) for a in ref["amounts"]))
    assert got["items"] == ref["items"]  # HLL is exact at these cardinalities
    check_quantile(got["p90"], ref["amounts"], 0.9, eps=1e-9)  # KLL is exact below k items
    for moment in ("var", "std"):  # population moments, merged pairwise (Chan et al.)
        if ref[moment] is None:
            assert got[moment] is None, moment
        else:
            assert abs(got[moment] - ref[moment]) <= 1e-6 * max(1.0, ref[moment]) + 1e-3, (moment, got[moment], ref[moment])
    assert isinstance(got["n"], int) and isinstance(got["items"], int)


def test_sketches_stay_within_documented_error_on_large_inputs():
    rng = random.Random(11)
    records = [
        {"ts": 1_700_000_000_000 + i, "user_id": "u", "amount": rng.lognormvariate(3, 1),
         "item": f"i{rng.randrange(50_000)}", "event_type": "view"}
        for i in range(60_000)
    ]
    out = combine(records, rng)
    got = dict(zip(["max_ts"] + [f["name"] for f in FEATURES], out))
    true_distinct = len({r["item"] for r in records})
    rse = 1.04 / (2 ** HLL_LG_K) ** 0.5
    assert abs(got["items"] - true_distinct) <= 3 * rse * true_distinct
    check_quantile(got["p90"], sorted(r["amount"] for r in records), 0.9, eps=0.0133 * 2)
    assert got["n"] == 60_000
