"""One verdict: hostile lines through the backfill's fast path, its event path and the streaming
replay give the same offline rows, the same online rows, the same dead letters (the records as
received, with the same reasons) and counts that reconcile, with no crash."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import runner_args
from pipelines import backfill_features, streaming_features
from pipelines.summary import output_summary
from transforms.io.offline import read_offline
from transforms.io.online.registry import open_online_store
from transforms.io.sinks import read_dead_letters
from transforms.parse import ParsePlan, decode_json, payload_bytes
from transforms.spec import parse_spec

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SPEC = {
    "project": "verdict",
    "source": {"timestamp_field": "ts", "id_field": "id", "dedup_horizon": "10m"},
    "entities": {"user": {"join_key": "user_id"}},
    "feature_views": [
        {"name": "hourly", "entity": "user", "window": {"type": "fixed", "size": "1h"},
         "allowed_lateness": "1d",
         "features": [{"name": "n", "agg": "count"}, {"name": "s", "agg": "sum", "field": "amount"},
                      {"name": "hi", "agg": "max", "field": "amount"},
                      {"name": "l", "agg": "last", "field": "item"},
                      {"name": "d", "agg": "approx_count_distinct", "field": "item"}]},
        {"name": "recent", "entity": "user", "window": {"type": "sliding", "size": "10m", "period": "5m"},
         "allowed_lateness": "1d",
         "features": [{"name": "n", "agg": "count"},
                      {"name": "big", "agg": "count", "where": {"kind": "big"}}]},
    ],
}
MAX_MS = ParsePlan.from_spec(parse_spec(SPEC)).max_event_ms


def good(i: int, user: str = "", **extra) -> bytes:
    record = {"ts": T0 + i * 7_000, "user_id": user or f"u{i % 4}", "amount": (i % 8) * 0.25,
              "item": f"i{i % 5}", "kind": "big" if i % 3 == 0 else "small", "id": f"e{i}", **extra}
    return json.dumps(record).encode()


def _with(i: int, tail: bytes, user: str = "") -> bytes:
    """A good event with raw JSON text appended as its last member."""
    return good(i, user)[:-1] + b", " + tail + b"}"


def _ts(i: int, value: bytes) -> bytes:
    """A good event (an id of its own) whose timestamp is the raw JSON `value`."""
    line = good(i).replace(b'"ts": %d' % (T0 + i * 7_000), b'"ts": ' + value)
    return line.replace(b'"id": "e%d"' % i, b'"id": "t%d"' % i)


# (line, verdict): the reason it is dead-lettered for, or None when it is an event
HOSTILE = [
    (_with(1, b'"note": "\\ud800"'), "invalid_json"),  # lone surrogate, unused field
    (good(2)[:-1].replace(b'"u2"', b'"\\udc00x"') + b"}", "invalid_json"),  # lone surrogate, entity key
    (_with(3, b'"note": "\xed\xa0\x80"'), "invalid_json"),  # an encoded surrogate: not UTF-8
    (_with(4, b'"note": "\xff\xfe"'), "invalid_json"),  # invalid UTF-8 in a field nobody reads
    (_with(5, b'"note": NaN'), "invalid_json"),
    (_with(6, b'"note": -Infinity'), "invalid_json"),
    (good(7)[:-1].replace(b'"amount": 1.75', b'"amount": Infinity') + b"}", "invalid_json"),
    (_with(8, b'"note": 1e400'), "invalid_json"),  # beyond double range
    (_with(9, b'"note": ' + b"[" * 1100 + b"]" * 1100), "invalid_json"),  # deeper than 1024
    (_with(10, b'"note": ' + b"[" * 1000 + b"]" * 1000), None),  # deep, but within the limit
    (_with(11, b'"note": "' + b"x" * 1_000_000 + b'"'), None),  # 1 MB in one string
    (good(12, user="u\x00nul"), None),  # NUL inside an entity key
    (good(13, user="big"), None),
    (_with(14, b'"amount2": 123456789012345678901234567890'), None),  # beyond int64, unused
    (good(15)[:-1].replace(b'"ts": ' + str(T0 + 15 * 7000).encode(), b'"ts": "9999-12-31T23:30:00Z"') + b"}",
     "timestamp_out_of_range"),  # its hour window would end after year 9999
    (good(16)[:-1].replace(b'"ts": ' + str(T0 + 16 * 7000).encode(), b'"ts": "9999-12-31T23:59:59-01:00"') + b"}",
     "timestamp_out_of_range"),  # leaves the calendar with its offset
    (good(17)[:-1].replace(b'"ts": ' + str(T0 + 17 * 7000).encode(), b'"ts": "2026-01-01T00:02:00.5+01:00"') + b"}",
     None),  # RFC 3339 with an offset and a fraction
    # timestamps in every spelling, mixed with epoch ms in the same blocks (the fast path quotes
    # the numbers and decides the strings itself only for the exact RFC 3339 shape)
    (_ts(40, b'"2026-01-01T00:04:40Z"'), None),
    (_ts(41, b'"2026-01-01 00:04:47.25-00:00"'), None),
    (_ts(42, b'"2026-01-01T00:04:54.1234567Z"'), None),  # 7 digits: fromisoformat truncates
    (_ts(43, b'"20260101T000501Z"'), None),  # ISO 8601 basic format: the event path takes it
    (_ts(44, b'"2026-W01-4T00:00:00Z"'), None),  # an ISO week date
    (_ts(45, b'"2026-02-29T00:00:00Z"'), "bad_timestamp"),  # no such day
    (_ts(46, b'"2026-01-01T00:00:60Z"'), "bad_timestamp"),  # no leap seconds
    (_ts(47, b'"2026-01-01T00:05:29"'), "bad_timestamp"),  # no time zone
    (_ts(48, b'"2026-01-01T00:05:36+24:00"'), "bad_timestamp"),  # offset out of range
    (_ts(49, b'"1767225943000"'), "bad_timestamp"),  # digits in a string are not epoch ms
    (_ts(50, b'"\\u00011767225950000"'), "bad_timestamp"),  # looks like a quoted number inside
    (_ts(51, b'"\x011767225957000"'), "invalid_json"),  # a raw control character
    (_ts(52, b"01767225964000"), "invalid_json"),  # a leading zero is not JSON
    (_ts(53, b"-1"), "timestamp_out_of_range"),
    (_ts(54, b"1767225978000 "), None),  # a space before the comma
    (_ts(55, b"1.767225985e12"), None),  # a float with an exponent, integral
    (_ts(56, b'"2026-01-01T00:06:32.0009Z"'), None),  # microseconds truncated to ms
    (_ts(57, b'"1969-12-31T23:59:59.9999Z"'), "timestamp_out_of_range"),
    (b'{"t\\u0073": %d, "user_id": "u3", "id": "k58"}' % (T0 + 58 * 7000), None),  # an escaped key
    (b'{"ts": %d, "user_id": "a", "user_id": "dup", "id": "k18"}' % (T0 + 18 * 7000), None),  # last key wins
    (b'{"ts": %d.0, "user_id": "u1", "id": "k19", "amount": 5e-324}' % (T0 + 19 * 7000), None),  # float ts, subnormal
    (b'{"ts": %d, "user_id": "u1", "amount": "12"}' % (T0 + 20 * 7000), "bad_type"),
    (b'{"ts": %d, "user_id": ""}' % (T0 + 21 * 7000), "missing_entity_key"),
    (b"[1, 2]", "not_an_object"),
    (b'{"ts": 1, "user_id": "u1"} {"ts": 2, "user_id": "u1"}', "invalid_json"),  # two objects, one line
    (b"\x00\x01garbage", "invalid_json"),
]
BOM_FIRST = b"\xef\xbb\xbf" + good(0)  # a byte-order mark at the start of the file: an event
AT_THE_END = b'{"ts": %d, "user_id": "late_last", "id": "end"}' % MAX_MS  # the latest accepted time


def corpus(seed: int = 0, hostile=HOSTILE) -> list[bytes]:
    rng = random.Random(seed)
    # enough good lines that the fast path parses most blocks with Arrow (a block Arrow refuses
    # is bisected down to 64 lines, which take the event path)
    lines = [good(i) for i in range(22, 1200)]
    lines += [line for line, _ in hostile]
    lines += [good(30), good(31)]  # redelivered: the same ids and records twice
    lines += [_with(32, b'"note": NaN')]  # a copy of e32 the parser refuses: e32 is used once
    rng.shuffle(lines)
    return [BOM_FIRST] + lines + [AT_THE_END]


def _write(tmp: Path, lines: list[bytes], spec_dict: dict = SPEC) -> tuple[Path, Path]:
    events = tmp / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict))
    return events, spec


def _run_all(tmp: Path, lines: list[bytes], spec_dict: dict = SPEC,
             paths: tuple[str, ...] = ("fast", "event", "replay")) -> dict:
    """{path name: (offline rows, online rows, dead letters, counts)} for each path: the
    backfill's fast and event paths, the streaming replay (DirectRunner), and "stream", the
    files read as a stream on Prism (blocks of lines parsed straight into tiles when the spec
    allows it)."""
    events, spec = _write(tmp, lines, spec_dict)
    entities = sorted({decode_json(line)["user_id"] for line in lines if _is_event(line)})
    out = {}
    for name in paths:
        offline = tmp / f"offline-{name}"
        online = f"sqlite:///{tmp}/online-{name}.db"
        common = ["--feature_spec", str(spec), "--online_store", online, "--offline_store", str(offline)]
        if name == "replay":
            streaming_features.run(["--events", str(events), "--replay", "--runner", "BundleBasedDirectRunner",
                                    "--replay_max_delay", "2m"] + common)
        elif name.startswith("stream"):  # "stream-events": the streaming graph event at a time
            preaggregate = "false" if name == "stream-events" else "true"
            streaming_features.run(["--events", str(events), "--streaming", "--preaggregate", preaggregate,
                                    *runner_args("prism")] + common)
        else:
            backfill_features.run(["--events", str(events), "--runner", "FnApiRunner",
                                   "--preaggregate", "true" if name == "fast" else "false"] + common)
        out[name] = (_final_panes(offline), _online(online, entities), _letters(offline),
                     output_summary(parse_spec(SPEC), str(offline), str(offline / "_dead_letters")))
    return out


def _is_event(line: bytes) -> bool:
    try:
        ParsePlan.from_spec(parse_spec(SPEC)).parse(line)
        return True
    except Exception:
        return False


def _final_panes(offline: Path) -> dict:
    """Per view, the final pane of every window (the backfill writes one ON_TIME pane each)."""
    views = {}
    for view in ("hourly", "recent"):
        final = {}
        for row in read_offline(str(offline), parse_spec(SPEC), view).to_pylist():
            key = (row["user_id"], row["window_end"])
            if key not in final or row["pane_index"] > final[key]["pane_index"]:
                final[key] = row
        views[view] = {key: {k: v for k, v in row.items() if k in FEATURES[view]} for key, row in final.items()}
    return views


FEATURES = {"hourly": ("n", "s", "hi", "l", "d"), "recent": ("n", "big")}


def _online(url: str, entities: list[str]) -> dict:
    store = open_online_store(url, parse_spec(SPEC))
    try:
        return {view: [(r.window_end_ms, r.features) if r else None for r in store.read(view, entities)]
                for view in FEATURES}
    finally:
        store.close()


def _letters(offline: Path) -> collections.Counter:
    return collections.Counter((payload_bytes(letter), letter["reason"])
                               for letter in read_dead_letters(str(offline / "_dead_letters")))


def _assert_one_verdict(out: dict, lines: list[bytes], duplicates_removed: int = 2) -> None:
    fast = out["fast"]
    for name, result in out.items():
        assert result[0] == fast[0], f"offline rows differ between fast and {name}"
        assert result[1] == fast[1], f"online rows differ between fast and {name}"
        assert result[2] == fast[2], f"dead letters differ between fast and {name}"
    n_events = sum(1 for line in lines if _is_event(line))
    for _, _, letters, summary in out.values():
        assert summary["refused"] == sum(letters.values()) == len(lines) - n_events
        assert summary["too_late_every_view"] == 0
    # every event counted once: the count feature of the hourly view sums to the events used
    # (with id_field, e30 and e31 arrive twice: corpus())
    used = sum(row["n"] for row in fast[0]["hourly"].values())
    assert used == n_events - duplicates_removed


@pytest.mark.slow
def test_hostile_lines_get_one_verdict_on_every_path(tmp_path):
    lines = corpus()
    out = _run_all(tmp_path, lines)
    _assert_one_verdict(out, lines)
    letters = out["fast"][2]
    for line, verdict in HOSTILE:
        if verdict is None:
            assert not any(payload == line for payload, _ in letters), line[:80]
        else:
            assert letters[(line, verdict)] == 1, (line[:80], verdict)
    # the events that look hostile but are events were counted where they belong
    hourly = out["fast"][0]["hourly"]
    assert {user for user, _ in hourly} >= {"u\x00nul", "big", "dup", "late_last"}
    assert "a" not in {user for user, _ in hourly}  # a repeated key: the last one wins, as in JSON parsers
    end = max(end for user, end in hourly if user == "late_last")
    assert end.year == 9999


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 10_000), st.lists(st.sampled_from(HOSTILE), min_size=3, max_size=12, unique=True))
def test_random_hostile_mixes_get_one_verdict(tmp_path_factory, seed, hostile):
    lines = corpus(seed, hostile)
    _assert_one_verdict(_run_all(tmp_path_factory.mktemp("mix"), lines), lines)


@pytest.mark.slow
def test_without_ids_files_streamed_on_prism_give_the_same_verdicts(tmp_path):
    """Without id_field and with tileable views only, event files read as a stream go from
    blocks of lines straight into tiles (transforms/streaming/tiles.py BlocksToTiles, the
    columnar parser): the same rows, online values and dead letters as every other path, and as
    the streaming graph event at a time (--preaggregate false)."""
    runner_args("prism")  # Prism is there (else skipped; under CI=true, failed)
    spec = {**SPEC, "source": {"timestamp_field": "ts"}}
    lines = corpus()
    out = _run_all(tmp_path, lines, spec, ("fast", "event", "replay", "stream", "stream-events"))
    _assert_one_verdict(out, lines, duplicates_removed=0)


def test_the_dedup_pre_pass_decodes_like_the_parser(tmp_path):
    """A repeated id whose copies differ only in a field nobody reads: one copy is used, on
    both backfill paths, whatever JSON oddity that field holds (it used to escape the fast
    path's pre-pass, which decoded with another decoder)."""
    copy = _with(40, b'"note": 123456789012345678901234567890')
    lines = [good(40), copy, good(41)]
    events, spec = _write(tmp_path, lines)
    for preaggregate in ("true", "false"):
        offline = tmp_path / f"off-{preaggregate}"
        backfill_features.run(["--events", str(events), "--feature_spec", str(spec), "--runner", "FnApiRunner",
                               "--online_store", f"sqlite:///{tmp_path}/{preaggregate}.db",
                               "--offline_store", str(offline), "--preaggregate", preaggregate])
        rows = read_offline(str(offline), parse_spec(SPEC), "hourly").to_pylist()
        assert sum(r["n"] for r in rows) == 2, preaggregate


@pytest.mark.parametrize("line", [HOSTILE[0][0], HOSTILE[3][0], HOSTILE[14][0], next(line for line, verdict in HOSTILE if verdict == "missing_entity_key"), BOM_FIRST],
                         ids=["lone_surrogate", "not_utf8", "year_9999", "not_an_object", "bom"])
def test_dead_letters_keep_the_record_exactly_for_re_ingestion(tmp_path, line):
    """Every dead letter decodes back to the bytes received; --from_dead_letters processes them
    again with the same verdict."""
    events, spec = _write(tmp_path, [good(50), line])
    offline = tmp_path / "offline"
    backfill_features.run(["--events", str(events), "--feature_spec", str(spec), "--runner", "FnApiRunner",
                           "--online_store", f"sqlite:///{tmp_path}/o.db", "--offline_store", str(offline)])
    letters = list(read_dead_letters(str(offline / "_dead_letters")))
    assert [payload_bytes(letter) for letter in letters] == ([] if line == BOM_FIRST else [line])
    if letters:
        again = tmp_path / "again"
        backfill_features.run(["--events", str(offline / "_dead_letters" / "*.jsonl"), "--feature_spec", str(spec),
                               "--runner", "FnApiRunner", "--from_dead_letters",
                               "--online_store", f"sqlite:///{tmp_path}/again.db", "--offline_store", str(again)])
        assert [(payload_bytes(x), x["reason"]) for x in read_dead_letters(str(again / "_dead_letters"))] == [
            (line, letters[0]["reason"])]
