"""The bounded fast path (tiles) gives the same rows as the event-at-a-time path, reads split
files exactly once, and handles gzip, Parquet and session views."""

from __future__ import annotations

import gzip
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from apache_beam.testing.util import assert_that, equal_to

from conftest import EXAMPLE_SPEC, batch_options
from pipelines import backfill_features
from pipelines.sample_events import generate
from transforms.combine import FeatureViewCombineFn
from transforms.backfill import files, tiles
from transforms.backfill.columnar import block_lines, columnar_schema
from transforms.io.online.registry import open_online_store
from transforms.parse import ParsePlan, Verdicts
from transforms.spec import load_spec
from transforms.windows import tile_ms

SESSION_VIEW = {
    "name": "user_sessions", "entity": "user", "window": {"type": "session", "gap": "2m"},
    "features": [{"name": "n", "agg": "count"}, {"name": "spend", "agg": "sum", "field": "amount"}],
}


@pytest.fixture(scope="module")
def lines():
    return list(generate(3000, seed=9, users=30, items=50, events_per_second=10, malformed_every=400))


def _rows(offline, view, key):
    table = ds.dataset(offline / view, partitioning="hive").to_table().drop(["created_timestamp"])
    return sorted(table.to_pylist(), key=lambda r: (r[key], r["window_end"], r["pane_index"]))


def _run(tmp_path, name, events, spec, preaggregate):
    offline = tmp_path / name
    result = backfill_features.run([
        "--events", str(events), "--feature_spec", str(spec), "--online_store", f"sqlite:///{tmp_path}/{name}.db",
        "--offline_store", str(offline), "--runner", "FnApiRunner", "--preaggregate", preaggregate,
    ])
    counters = {}
    for c in result.metrics().query()["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    return offline, counters


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(b[k])) if isinstance(b[k], float) else a[k] == b[k]) for k in a)


@pytest.mark.slow
def test_tiles_equal_the_event_path_for_every_view_including_sessions(lines, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    data = yaml.safe_load(EXAMPLE_SPEC.read_text())
    data["feature_views"].append(SESSION_VIEW)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    fast, fast_counts = _run(tmp_path, "fast", events, spec, "true")
    slow, slow_counts = _run(tmp_path, "slow", events, spec, "false")
    for key in ("events_in", "parsed", "dead_lettered"):
        assert fast_counts[key] == slow_counts[key]
    assert fast_counts["events_in"] == 3000
    spec_file = load_spec(spec)
    stores = [open_online_store(f"sqlite:///{tmp_path}/{name}.db", spec_file) for name in ("fast", "slow")]
    for view, key in (("user_5m", "user_id"), ("item_1h", "item_id"), ("user_sessions", "user_id")):
        assert_same_rows(_rows(fast, view, key), _rows(slow, view, key))
        # Online: the fast path's newest current window per entity is the one the event path keeps.
        entities = sorted({r[key] for r in _rows(slow, view, key)})
        fast_online, slow_online = (store.read(view, entities) for store in stores)
        assert all(slow_online)
        for a, b in zip(fast_online, slow_online):
            assert a[:3] == b[:3]
            assert_same_rows([a.features], [b.features])


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    """Same windows and values; float sums up to rounding, sketches merged from different
    partial sketches within their error (percentiles are checked against data elsewhere)."""
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        x, y = dict(x), dict(y)
        x.pop("p90_amount", None), y.pop("p90_amount", None)
        items_x, items_y = x.pop("items", None), y.pop("items", None)
        assert items_x == items_y or abs(items_x - items_y) <= 0.05 * items_y
        assert _close(x, y), (x, y)


def test_split_ranges_read_every_line_exactly_once(tmp_path):
    path = tmp_path / "e.jsonl"
    payload = [json.dumps({"i": i, "pad": "x" * (i % 37)}).encode() for i in range(2000)]
    path.write_bytes(b"\n".join(payload) + b"\n\n")
    ranges = files.split_files([str(path)], range_bytes=997)
    assert len(ranges) > 40
    seen = [json.loads(line)["i"] for r in ranges for line in files.read_range(r)]
    assert sorted(seen) == list(range(2000))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([b"", b"  ", b"\r", b"x" * 50, b"{}", b"y"]), max_size=60),
       st.booleans(), st.integers(1, 40), st.integers(1, 64))
def test_blocks_hold_exactly_the_lines_of_their_range(pieces, crlf, range_bytes, block_bytes):
    """Ranges and blocks at any byte sizes: every non-blank line once, whole, in order."""
    import tempfile

    ending = b"\r\n" if crlf else b"\n"
    data = ending.join(pieces) + (ending if pieces and pieces[-1] == b"y" else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/e.jsonl"
        with open(path, "wb") as handle:
            handle.write(data)
        ranges = files.split_files([path], range_bytes=range_bytes)
        blocks = [b for r in ranges for b in files.read_blocks(r, block_bytes=block_bytes)]
        assert all(b.endswith(b"\n") for b in blocks[:-1])
        got = [line for b in blocks for line in block_lines(b)]
        assert got == [p.rstrip(b"\r") for p in data.split(b"\n") if p.strip()]


def test_blocks_with_blank_lines_and_two_objects_on_a_line_match_the_event_path(tmp_path):
    """A blank line and a line Arrow reads as two rows must not cancel out in the row count."""
    event = {"event_time": 1_767_225_600_000, "user_id": "u1", "item_id": "i1", "event_type": "click",
             "amount": 2.0}
    good = json.dumps(event).encode()
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\r\n".join([good, good + good, b"   ", good, b""]) + b"\n" + good)
    fast, fast_counts = _run(tmp_path, "fast", path, EXAMPLE_SPEC, "true")
    slow, slow_counts = _run(tmp_path, "slow", path, EXAMPLE_SPEC, "false")
    for key in ("events_in", "parsed", "dead_lettered"):
        assert fast_counts[key] == slow_counts[key], key
    assert fast_counts["dead_lettered"] == 1
    for view, key in (("user_5m", "user_id"), ("item_1h", "item_id")):
        assert_same_rows(_rows(fast, view, key), _rows(slow, view, key))
    assert {r["clicks"] for r in _rows(fast, "user_5m", "user_id")} == {3}


def test_gzip_and_parquet_inputs(lines, tmp_path):
    good = [json.loads(line) for line in lines if line.startswith(b"{") and b'"event_time":' in line
            and b'"item_id"' in line and b"EUR" not in line and b'"user_id"' in line]
    gz = tmp_path / "events.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n".join(json.dumps(r).encode() for r in good)))
    parquet = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(good), parquet, row_group_size=500)
    for path in (gz, parquet):
        ranges = files.split_files([str(path)])
        assert sum(1 for r in ranges for _ in files.read_range(r)) == len(good)
    out_gz, gz_counts = _run(tmp_path, "gz", gz, EXAMPLE_SPEC, "true")
    out_pq, pq_counts = _run(tmp_path, "pq", parquet, EXAMPLE_SPEC, "true")
    for counts in (gz_counts, pq_counts):
        assert (counts["parsed"], counts["dead_lettered"]) == (len(good), 0)
    for view, key in (("user_5m", "user_id"), ("item_1h", "item_id")):
        assert_same_rows(_rows(out_gz, view, key), _rows(out_pq, view, key))


def test_windows_assembled_from_one_tile(tmp_path):
    spec = load_spec(EXAMPLE_SPEC)
    # one event at minute 2.5: tile [2, 3) -> windows ending 3, 4, 5, 6, 7
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"event_time": 150_000, "user_id": "u", "item_id": "i", "amount": 2.0,
                                "event_type": "click"}) + "\n")
    with beam.Pipeline(options=batch_options()) as p:
        out = p | tiles.TiledBackfill(spec, [str(path)])
        rows = (out.row_batches | beam.Filter(lambda batch: batch.view == "user_5m")  # RowTables
                | beam.FlatMap(lambda batch: batch.table.to_pylist()))
        ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731
        assert_that(rows | beam.Map(lambda r: (ms(r["window_start"]), ms(r["window_end"]), r["clicks"], r["spend"])),
                    equal_to([(e - 300_000, e, 1, 2.0) for e in (180_000, 240_000, 300_000, 360_000, 420_000)]))
        # the online store's row: the earliest-ending window, the one whose last period holds the event
        newest = out.newest | beam.Filter(lambda r: r.view == "user_5m")
        assert_that(newest | beam.Map(lambda r: r.window_end_ms), equal_to([180_000]), label="newest")


GARBAGE = [
    b'{"event_time": "2026-01-01T00:00:01Z", "user_id": "u1", "item_id": "i1", "amount": 1}',  # RFC 3339
    b'{"event_time": 1767225600000, "user_id": 7, "item_id": "i1"}',  # int key for a string entity
    b'{"event_time": 1767225600000, "user_id": "u1", "item_id": "i1", "amount": true}',
    b'{"event_time": 1767225600000, "user_id": "u1", "item_id": "i1", "amount": 1e999}',
    b'{"event_time": 1767225600000, "user_id": "u1", "item_id": "i1", "amount": 123456789012345678901234567890}',
    b'{"event_time": 1767225600000, "user_id": "u1", "item_id": 5}',
    b'{"event_time": 1767225600000, "user_id": "", "item_id": "i1"}',
    b'{"event_time": null, "user_id": "u1", "item_id": "i1"}',
    b'{"event_time": -1, "user_id": "u1", "item_id": "i1"}',
    b'{"event_time": 1767225600000.0, "user_id": "u1", "item_id": "i1"}',
    b'{"event_time": 1767225600000, "user_id": "u1", "item_id": "i1", "extra": {"deep": [1, {"x": null}]}}',
    b'{"event_time": 1767225600000, "user_id": "u1", "item_id": "i1", "event_type": 3}',
    b'[1, 2, 3]',
    b'\xff\xfe',
    b'{"event_time": 1767225600000, "user_id": "u1"',
    b'{"event_time": 1767225600000, "user_id": "u1", "item_id": "i1"} {"again": 1}',
]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(GARBAGE), st.integers(0, 10_000)), min_size=1, max_size=300))
def test_columnar_chunks_equal_the_event_at_a_time_parser(items):
    """The vectorized read of a JSONL range and the per-event parser (with each view's
    CombineFn per tile) agree on every tile and every dead letter."""
    import tempfile

    spec = load_spec(EXAMPLE_SPEC)
    lines = [g if isinstance(g, bytes) else json.dumps({
        "event_time": 1_767_225_600_000 + g * 997, "user_id": f"u{g % 7}", "item_id": f"i{g % 11}",
        "event_type": ["click", "view", "purchase"][g % 3], "amount": (g % 13) * 1.5 if g % 4 else None,
        "event_id": f"e{g}"}).encode() for g in items]
    fns = {v.name: FeatureViewCombineFn(spec, v) for v in spec.feature_views}
    assert columnar_schema(ParsePlan.from_spec(spec)) is not None  # the spec is read column-wise

    fast_tiles, fast_letters = {}, []
    read = tiles._ReadAndPreaggregate(spec, list(spec.feature_views), emit_events=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/e.jsonl"
        with open(path, "wb") as handle:
            handle.write(b"\n".join(lines) + b"\n")
        for out in read.process((files.FileRange(path, 0, os.path.getsize(path)), b"")):
            if isinstance(out, beam.pvalue.TaggedOutput):
                fast_letters.append(out.value.reason)
            else:  # a batch of tiles of one view and entity shard
                (view, shard), data = out
                fn = fns[view]
                batch = tiles.read_tile_batches([data])
                assert set(tiles.entity_shards(batch["entity"].combine_chunks(), 16).tolist()) == {shard}
                for entity, start, acc in zip(*(batch[c].to_pylist() for c in ("entity", "start", "acc"))):
                    assert (view, entity, start) not in fast_tiles
                    fast_tiles[(view, entity, start)] = fn.extract_output(fn.get_accumulator_coder().decode(acc))

    plan = ParsePlan.from_spec(spec)
    accs, slow_letters = {}, []
    verdicts = Verdicts(plan.parse)
    for line in lines:
        event, letter = verdicts(line)
        if letter is not None:
            slow_letters.append(letter.reason)
            continue
        for view in spec.feature_views:
            tile = tile_ms(view)
            key = (view.name, event.keys[plan.entity_index(view.entity)], event.event_time_ms // tile * tile)
            fn = fns[view.name]
            accs[key] = fn.add_input(accs[key] if key in accs else fn.create_accumulator(), event)
    slow_tiles = {key: fns[key[0]].extract_output(acc) for key, acc in accs.items()}

    assert sorted(fast_letters) == sorted(slow_letters)
    assert fast_tiles.keys() == slow_tiles.keys()
    for key, values in slow_tiles.items():
        for a, b in zip(fast_tiles[key], values):
            assert a == pytest.approx(b, rel=1e-9) if isinstance(b, float) else a == b, key


@given(st.lists(st.sampled_from(list(b"{}a \t\r\n\x0b\x0c")), max_size=12).map(bytes))
def test_blank_line_check_equals_the_regex(body):
    """The blocks' blank-line check on the lines' first bytes decides as the regex does."""
    from transforms.backfill.columnar import _BLANK_LINE, _has_blank_line

    assert _has_blank_line(body) == (_BLANK_LINE.search(b"\n" + body + b"\n") is not None)


def test_tiles_of_one_entity_from_several_ranges_are_merged_before_assembly(lines):
    """A shard's group holds one batch per range; the same (entity, tile) in two batches is
    merged first, so its windows equal those of the tiles built from all events at once."""
    spec = load_spec(EXAMPLE_SPEC)
    plan = ParsePlan.from_spec(spec)
    verdicts = Verdicts(plan.parse)
    events = [e for e, letter in map(verdicts, lines) if letter is None]
    views = [(v.name, plan.entity_index(v.entity), tile_ms(v), FeatureViewCombineFn(spec, v))
             for v in spec.feature_views]
    halves = [[{} for _ in views] for _ in range(3)]  # two "ranges" (events alternate) and all
    for i, event in enumerate(events):
        tiles.add_to_tiles(views, halves[i % 2], event)
        tiles.add_to_tiles(views, halves[2], event)
    assemble = tiles._AssembleWindows(spec, list(spec.feature_views))

    def rows(parts: list[int]) -> dict:
        out = {}
        for index, (name, _, _, fn) in enumerate(views):
            groups: dict = {}
            for part in parts:
                for key, batch in tiles.tile_batches(name, fn, halves[part][index], 4):
                    groups.setdefault(key, []).append(batch)
            assert len(groups) == 4
            for key, batches in groups.items():
                for output in assemble.process((key, batches)):
                    if isinstance(output, beam.pvalue.TaggedOutput):
                        out[("newest", output.value.view, output.value.entity)] = output.value
                    else:
                        for row in output.table.to_pylist():
                            out[(name, row[spec.entities[spec.view(name).entity].join_key], row["window_end"])] = row
        return out

    merged, whole = rows([0, 1]), rows([2])
    assert merged.keys() == whole.keys() and len(merged) > 100
    for key, row in whole.items():
        if key[0] == "newest":
            assert merged[key][:7] == row[:7]
            assert_same_rows([dict(zip(range(99), merged[key].features))], [dict(zip(range(99), row.features))])
        else:
            assert_same_rows([merged[key]], [row])
