"""Baseline (c): DuckDB, what a user picks instead of Beam for a one-machine backfill.

The same features in SQL over the same JSONL files, generated from the feature spec: the events
are read once with `read_json` and explicit columns (the event time as text, since real logs mix
RFC 3339 strings with epoch-ms numbers: digits are epoch ms, the rest is cast to TIMESTAMPTZ,
offsets applied, and floored to the millisecond as the pipeline's parse_timestamp does), kept
once per id when the spec has `source.id_field`, then each view is one GROUP BY over (entity,
window start): each event repeated once per sliding window it belongs to (size / period), or
its fixed window's start. Aggregations map to DuckDB's own: count (FILTER for `where`), sum
(0 without values, as the pipeline writes), avg, min, max, last by event time (ties by value,
as the pipeline breaks them), `approx_count_distinct` (HyperLogLog) and `approx_quantile`
(t-digest). Each view is written to Parquet, as the pipeline's offline store is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
NUMERIC_AGGS = ("sum", "mean", "min", "max", "approx_percentile")


def duration_ms(value: Any) -> int:
    """'5m', '1h', '30s', or seconds as a number (the spec's forms) -> milliseconds."""
    if isinstance(value, (int, float)):
        return int(value * 1000)
    for unit in ("ms", "s", "m", "h", "d"):
        number = value[: -len(unit)]
        if value.endswith(unit) and number.replace(".", "", 1).isdigit():
            return int(float(number) * DURATION_MS[unit])
    raise ValueError(f"not a duration the DuckDB baseline knows (got {value!r})")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _where(where: dict[str, Any]) -> str:
    """The spec's `where` (field: value or list of values, all must hold) as SQL."""
    terms = []
    for field, allowed in where.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        terms.append(f"{_ident(field)} IN ({', '.join(_literal(v) for v in values)})")
    return " AND ".join(terms)


def _aggregate(feature: dict[str, Any]) -> str:
    agg, field = feature["agg"], feature.get("field")
    column = _ident(field) if field else None
    where = feature.get("where")
    if agg == "count":
        expression = "count(*)" if not column else f"count({column})"
    elif agg == "sum":
        expression = f"sum({column})"
    elif agg == "mean":
        expression = f"avg({column})"
    elif agg in ("min", "max"):
        expression = f"{agg}({column})"
    elif agg == "last":
        expression = f"arg_max({column}, struct_pack(t := ts, v := {column}))"
    elif agg == "first":
        expression = f"arg_min({column}, struct_pack(t := ts, v := {column}))"
    elif agg == "approx_count_distinct":
        expression = f"approx_count_distinct({column})"
    elif agg == "approx_percentile":
        expression = f"approx_quantile({column}, {float(feature['q'])})"
    else:
        raise ValueError(f"the DuckDB baseline has no SQL for agg {agg!r} (feature {feature['name']!r})")
    if where:
        expression += f" FILTER (WHERE {_where(where)})"
    if agg in ("count", "sum"):
        expression = f"coalesce({expression}, 0)"
    return f"{expression} AS {_ident(feature['name'])}"


def _fields(spec: dict[str, Any]) -> dict[str, str]:
    """Every field a view reads, with its DuckDB type (the event time as text)."""
    numeric = {f["field"] for v in spec["feature_views"] for f in v["features"] if f["agg"] in NUMERIC_AGGS}
    fields = {spec["source"]["timestamp_field"]: "VARCHAR"}
    if spec["source"].get("id_field"):
        fields[spec["source"]["id_field"]] = "VARCHAR"
    for view in spec["feature_views"]:
        fields[spec["entities"][view["entity"]]["join_key"]] = "VARCHAR"
        for feature in view["features"]:
            names = [feature.get("field"), *(feature.get("where") or {})]
            for name in filter(None, names):
                fields.setdefault(name, "DOUBLE" if name in numeric else "VARCHAR")
    return fields


def events_sql(events_path: str, spec: dict[str, Any]) -> str:
    """SELECT of the events: ts (epoch ms, BIGINT) and the fields, one row per id."""
    fields = _fields(spec)
    source = spec["source"]
    time = _ident(source["timestamp_field"])
    columns = ", ".join(f"{_literal(name)}: {_literal(kind)}" for name, kind in fields.items())
    epoch = (f"CASE WHEN regexp_full_match({time}, '-?[0-9]+') THEN CAST({time} AS BIGINT) "
             f"ELSE epoch_us(CAST({time} AS TIMESTAMPTZ)) // 1000 END")
    others = ", ".join(_ident(name) for name in fields if name != source["timestamp_field"])
    read = f"read_json({_literal(events_path)}, format = 'newline_delimited', columns = {{{columns}}})"
    if source.get("id_field"):
        # Redeliveries repeat the record: any copy will do (the pipeline keeps the first).
        read = f"(SELECT DISTINCT ON ({_ident(source['id_field'])}) * FROM {read})"
    return f"SELECT {epoch} AS ts, {others} FROM {read}"


def view_sql(view: dict[str, Any], spec: dict[str, Any], events: str = "events") -> str:
    """One GROUP BY per view over (entity, window start in epoch ms)."""
    key = _ident(spec["entities"][view["entity"]]["join_key"])
    window = view["window"]
    size = duration_ms(window["size"])
    if window["type"] == "sliding":
        period = duration_ms(window["period"])
        per_event = -(-size // period)
        windows = (f"(SELECT *, ts - ts % {period} - k * {period} AS window_start "
                   f"FROM {events}, range({per_event}) AS r(k)) WHERE window_start + {size} > ts")
    elif window["type"] == "fixed":
        windows = f"(SELECT *, ts - ts % {size} AS window_start FROM {events})"
    else:
        raise ValueError(f"the DuckDB baseline has no SQL for {window['type']!r} windows (view {view['name']!r})")
    features = ", ".join(_aggregate(f) for f in view["features"])
    return f"SELECT {key}, window_start, {features} FROM {windows} GROUP BY {key}, window_start"


def run(events_path: str, spec: dict[str, Any], out_dir: Path, threads: int = 1) -> dict[str, int]:
    """Compute every view of `spec` over the file into out_dir/<view>.parquet; rows per view."""
    import duckdb

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    with duckdb.connect() as con:
        con.execute(f"SET threads = {int(threads)}")
        con.execute(f"CREATE TEMP TABLE events AS {events_sql(events_path, spec)}")
        for view in spec["feature_views"]:
            target = out_dir / f"{view['name']}.parquet"
            con.execute(f"COPY ({view_sql(view, spec)}) TO {_literal(str(target))} (FORMAT parquet)")
            rows[view["name"]] = con.execute(f"SELECT count(*) FROM {_literal(str(target))}").fetchone()[0]
    return rows
