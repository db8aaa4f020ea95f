"""Every batch run ends with one summary table that reconciles, and a warning for a field that
had no value in any event (a typo'd `field:` would otherwise be a silent null)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import EXAMPLE_SPEC
from pipelines import backfill_features


def _events(tmp_path):
    lines = [json.dumps({"event_time": 1767225600000 + i * 1000, "event_id": f"e{i % 95}", "user_id": f"u{i % 4}",
                         "item_id": f"i{i % 3}", "event_type": "purchase", "amount": 2.0}) for i in range(100)]
    lines += ["{not json", json.dumps({"event_time": "yesterday", "user_id": "u1"})]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("preaggregate", ["true", "false"])
def test_summary_reconciles_and_warns_about_a_field_never_seen(tmp_path, capsys, preaggregate):
    data = yaml.safe_load(EXAMPLE_SPEC.read_text())
    data["feature_views"][0]["features"][1]["field"] = "amout"  # spend: a typo
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    backfill_features.main(["--events", str(_events(tmp_path)), "--feature_spec", str(spec),
                            "--online_store", f"sqlite:///{tmp_path}/o.db", "--offline_store", str(tmp_path / "off"),
                            "--runner", "FnApiRunner", "--preaggregate", preaggregate])
    err = capsys.readouterr().err
    table = err[err.index("summary ("):err.index("counters:")].splitlines()
    rows = {line[:30].strip(): line[30:].strip() for line in table[1:] if not line.startswith("warning")}
    assert rows["events in"] == "102"
    assert rows["used"] == "95"  # 100 parsed, 5 of them repeated ids
    assert rows["refused"] == "2  (bad_timestamp 1, invalid_json 1)"
    assert rows["duplicates removed"] == "5"
    assert int(rows["offline rows user_5m"].replace(",", "")) > 0
    assert int(rows["offline rows item_1h"].replace(",", "")) == 3  # three items, one hour
    assert rows["online rows"] == "7"  # four users' and three items' current windows
    assert rows["dead letters written"] == "2"
    warnings = [line for line in table if line.startswith("warning")]
    assert warnings == ["warning: field 'amout' had no value in any of the 100 events (read by user_5m.spend): "
                        "a typo in the spec? `python -m pipelines.check_spec` compares a spec with a sample "
                        "of events"]
    assert "  fields.no_value.amout " in err and "fields.no_value.amount " not in err  # amount: always there


def test_streaming_freshness_is_summarised_per_view():
    from pipelines.summary import run_summary

    lines = run_summary({"parse.events_in": 10, "parse.parsed": 10, "online_store.rows_written": 3}, None, 2.0,
                        "Prism", {"user_5m": (3, 6_000, 4_000), "item_1h": (1, 500, 500)})
    assert lines[0] == "summary (2.0 s, engine Prism):"
    assert [line.split()[1] + ": " + line.split("  ")[-1].strip() for line in lines if "freshness" in line] == [
        "item_1h: mean lag 0.5 s, max 0.5 s over 1 online writes",
        "user_5m: mean lag 2.0 s, max 4.0 s over 3 online writes"]
