"""Spec validation: every mistake names the file, the path inside it and the bad value."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from conftest import EXAMPLE_SPEC, REPO
from transforms.spec import SpecError, load_spec, parse_spec

BASE = yaml.safe_load(EXAMPLE_SPEC.read_text())


def test_example_spec_loads_with_parsed_durations():
    spec = load_spec(EXAMPLE_SPEC)
    v = spec.view("user_5m")
    assert (v.window.size, v.window.period) == (300, 60)
    assert (v.trigger.early_every, v.trigger.late_every) == (10, 1)
    assert (v.allowed_lateness, v.ttl, v.accumulation) == (3600, 86400, "accumulating")
    assert [spec.value_type(f) for f in v.features] == [
        "int64", "double", "double", "double", "string", "int64", "double"]


def mutate(path: list, value=None, delete: bool = False) -> dict:
    data = copy.deepcopy(BASE)
    node = data
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize("path, value, delete, message", [
    (["feature_views", 0, "features", 2, "agg"], "avgg", False,
     "shop.yaml: feature_views[0].features[2].agg: unknown aggregation (expected one of count, sum, mean, "
     "min, max, first, last, approx_count_distinct, approx_percentile, variance, stddev, first_k, last_k, top_k, histogram) (got 'avgg')"),
    (["feature_views", 0, "windw"], {"type": "fixed"}, False,
     "shop.yaml: feature_views[0].windw: unknown key (got {'type': 'fixed'})"),
    (["feature_views", 0, "window", "size"], "5x", False,
     "shop.yaml: feature_views[0].window.size: must be a duration: an integer and one of s, m, h, d (got '5x')"),
    (["feature_views", 0, "allowed_lateness"], "999999999999999999d", False,
     "shop.yaml: feature_views[0].allowed_lateness: must be at most 36500d (got '999999999999999999d')"),
    (["source", "dedup_horizon"], "99999999999999999999999s", False,
     "shop.yaml: source.dedup_horizon: must be at most 36500d (got '99999999999999999999999s')"),
    (["feature_views", 0, "allowed_lateness"], "1 hour", False,
     "shop.yaml: feature_views[0].allowed_lateness: must be a duration: an integer and one of s, m, h, d "
     "(got '1 hour')"),
    (["feature_views", 0, "window", "type"], "tumbling", False,
     "shop.yaml: feature_views[0].window: unknown window type (expected fixed, sliding or session) "
     "(got 'tumbling')"),
    (["source", "timestamp_field"], None, True, "shop.yaml: source.timestamp_field: required key is missing"),
    (["feature_views", 0, "entity"], "usr", False,
     "shop.yaml: feature_views[0].entity: unknown entity 'usr' (defined: user, item)"),
    (["feature_views", 0, "features", 6, "q"], 1.5, False,
     "shop.yaml: feature_views[0].features[6].q: Input should be less than or equal to 1 (got 1.5)"),
    (["feature_views", 0, "window", "period"], "2m", False,
     "shop.yaml: feature_views[0].window: period must divide size (got size=300s, period=120s)"),
    (["feature_views", 0, "accumulation"], "both", False,
     "shop.yaml: feature_views[0].accumulation: Input should be 'accumulating' or 'discarding' (got 'both')"),
    (["feature_views", 0, "features", 0, "where"], {"event_type": {"nested": 1}}, False,
     "shop.yaml: feature_views[0].features[0].where.event_type: must be a string, number, boolean, or a "
     "list of them (got {'nested': 1})"),
])
def test_errors_name_file_path_and_value(path, value, delete, message):
    with pytest.raises(SpecError) as err:
        parse_spec(mutate(path, value, delete), "shop.yaml")
    assert str(err.value) == message


def test_missing_field_and_misplaced_q_are_rejected():
    with pytest.raises(SpecError, match=r"features\[1\]: aggregation 'sum' needs a 'field'"):
        parse_spec(mutate(["feature_views", 0, "features", 1, "field"], delete=True), "s")
    with pytest.raises(SpecError, match=r"'q' only applies to approx_percentile"):
        parse_spec(mutate(["feature_views", 0, "features", 1, "q"], 0.5), "s")
    with pytest.raises(SpecError, match=r"features\[6\]: approx_percentile needs 'q'"):
        parse_spec(mutate(["feature_views", 0, "features", 6, "q"], delete=True), "s")


@pytest.mark.parametrize("feature, message", [
    ({"name": "f", "agg": "top_k", "field": "item_id"},
     r"features\[7\]: top_k needs 'k' \(an integer from 1 to 1000\)"),
    ({"name": "f", "agg": "last_k", "field": "item_id", "k": 0},
     r"features\[7\].k: Input should be greater than or equal to 1 \(got 0\)"),
    ({"name": "f", "agg": "first_k", "field": "item_id", "k": 2.5},
     r"features\[7\].k: Input should be a valid integer \(got 2.5\)"),
    ({"name": "f", "agg": "histogram", "field": "event_type"},
     r"features\[7\]: histogram needs 'cap' \(an integer from 1 to 10000\)"),
    ({"name": "f", "agg": "histogram", "field": "event_type", "cap": 10001},
     r"features\[7\].cap: Input should be less than or equal to 10000 \(got 10001\)"),
    ({"name": "f", "agg": "sum", "field": "amount", "k": 3},
     r"features\[7\]: 'k' only applies to first_k/last_k/top_k \(agg is 'sum'\)"),
    ({"name": "f", "agg": "top_k", "field": "item_id", "k": 3, "cap": 3},
     r"features\[7\]: 'cap' only applies to histogram \(agg is 'top_k'\)"),
    ({"name": "f", "agg": "variance", "field": "amount", "dtype": "string"},
     r"features\[7\]: 'dtype' only applies to first/last/first_k/last_k \(agg is 'variance'\)"),
])
def test_k_and_cap_are_validated_like_q(feature, message):
    data = copy.deepcopy(BASE)
    data["feature_views"][0]["features"].append(feature)
    with pytest.raises(SpecError, match=message):
        parse_spec(data, "s")


def test_list_and_map_features_have_their_stored_types():
    data = copy.deepcopy(BASE)
    data["feature_views"][0]["features"] += [
        {"name": "a", "agg": "last_k", "field": "amount", "k": 2},
        {"name": "b", "agg": "first_k", "field": "item_id", "k": 2},
        {"name": "c", "agg": "top_k", "field": "amount", "k": 2},
        {"name": "d", "agg": "histogram", "field": "item_id", "cap": 9},
        {"name": "e", "agg": "stddev", "field": "amount"},
    ]
    spec = parse_spec(data, "s")
    types = {f.name: spec.value_type(f) for f in spec.feature_views[0].features}
    assert [types[n] for n in "abcde"] == ["double_list", "string_list", "string_list", "int64_map", "double"]


def test_duplicates_are_rejected():
    data = copy.deepcopy(BASE)
    data["feature_views"].append(copy.deepcopy(data["feature_views"][0]))
    with pytest.raises(SpecError, match=r"feature_views\[2\].name: duplicate view name 'user_5m'"):
        parse_spec(data, "s")
    data = mutate(["feature_views", 0, "features", 1, "name"], "clicks")
    with pytest.raises(SpecError, match="duplicate feature name 'clicks'"):
        parse_spec(data, "s")


def test_yaml_is_loaded_safely(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("project: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="evil.yaml: line 1, column 10: invalid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="nothere.yaml: cannot read the feature spec"):
        load_spec(tmp_path / "nothere.yaml")


def test_cli_prints_one_line_and_exits_non_zero_for_a_bad_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate(["feature_views", 0, "features", 2, "agg"], "avgg")))
    events = tmp_path / "e.jsonl"
    events.write_text("{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.backfill_features", "--events", str(events),
         "--feature_spec", str(bad), "--online_store", f"sqlite:///{tmp_path}/o.db",
         "--offline_store", str(tmp_path / "off")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"backfill_features: error: {bad}: feature_views[0].features[2].agg: unknown aggregation "
        "(expected one of count, sum, mean, min, max, first, last, approx_count_distinct, "
        "approx_percentile, variance, stddev, first_k, last_k, top_k, histogram) (got 'avgg')"
    )
