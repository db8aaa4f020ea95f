"""check_spec: the fields and `where` values a spec reads, checked against a sample of events."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import EXAMPLE_SPEC, REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.check_spec", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def _events(tmp_path, n: int = 50):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps({
        "event_time": 1767225600000 + i, "event_id": f"e{i}", "user_id": f"u{i % 3}", "item_id": f"i{i % 4}",
        "event_type": ["view", "click", "purchase"][i % 3], "amount": None if i % 3 else 2.5,
    }) for i in range(n)) + "\nnot json\n")
    return path


def test_a_matching_spec_passes(tmp_path):
    proc = _run("--feature_spec", str(EXAMPLE_SPEC), "--events", str(_events(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"check_spec: 50 events sampled from {tmp_path / 'events.jsonl'}",
                                        "  every field the spec reads was seen"]


def test_typos_in_fields_and_where_values_are_reported_with_suggestions(tmp_path):
    data = yaml.safe_load(EXAMPLE_SPEC.read_text())
    features = data["feature_views"][0]["features"]
    features[1]["field"] = "amout"  # spend
    features[0]["where"] = {"event_type": "clik"}  # clicks
    features[4]["field"] = "itme_id"  # last_item
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    proc = _run("--feature_spec", str(spec), "--events", str(tmp_path / "*.jsonl"), "--events", str(_events(tmp_path)))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()[1:]
    assert lines == [
        "  no sampled event has a value for 'amout' (used by user_5m.spend (field)); did you mean 'amount'?",
        "  no sampled event has a value for 'itme_id' (used by user_5m.last_item (field)); did you mean 'item_id'?",
        "  user_5m.clicks: no sampled event has event_type in ['clik'] (most common values: 'view', 'click', "
        "'purchase')",
    ]


def test_usage_errors_exit_2_with_one_line(tmp_path):
    proc = _run("--feature_spec", str(EXAMPLE_SPEC), "--events", str(tmp_path / "none*.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"check_spec: error: --events: no file matches {tmp_path / 'none*.jsonl'}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: [")
    proc = _run("--feature_spec", str(bad), "--events", str(_events(tmp_path)))
    assert proc.returncode == 2 and proc.stderr.startswith(f"check_spec: error: {bad}: line ")
    assert "Traceback" not in proc.stderr
