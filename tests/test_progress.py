"""Progress of a local run: the readers of both backfill paths report every byte and line they
read to the launching process (Beam's Python runners run them in it)."""

from __future__ import annotations

import io
import json

import pytest

from conftest import EXAMPLE_SPEC
from pipelines import backfill_features
from pipelines.common import input_bytes
from transforms import progress


@pytest.mark.parametrize("preaggregate", ["true", "false"])
def test_readers_report_every_byte_and_line(tmp_path, preaggregate):
    lines = [json.dumps({"event_time": 1767225600000 + i, "user_id": f"u{i % 5}", "item_id": "i1",
                         "event_type": "view"}) for i in range(3000)] + ["{broken"]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    shown = progress.start("backfill_features", input_bytes(str(events)), stream=out,
                           interval_s=0.0, bar=False)
    try:
        backfill_features.run(["--events", str(events), "--feature_spec", str(EXAMPLE_SPEC), "--runner", "FnApiRunner",
                               "--online_store", f"sqlite:///{tmp_path}/o.db", "--offline_store", str(tmp_path / "o"),
                               "--preaggregate", preaggregate])
    finally:
        progress.stop()
    size = events.stat().st_size
    assert shown.line().startswith(f"backfill_features: read {size / 1024:,.1f} KB of {size / 1024:,.1f} KB (100 %), "
                                   "3,001 events, ")
    assert out.getvalue().splitlines()[-1].startswith("backfill_features: read ")

