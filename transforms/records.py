"""The records every part of the project passes around, as plain types (no Beam import):
`Event` (a parsed event), `DeadLetter` (a refused record), `FeatureRow` (one pane of one window
for one entity) and `ViewLayout` (what a store needs to know about a view).

Event and DeadLetter travel with a RowCoder registered in transforms/parse.py (OpaqueRowCoder);
FeatureRow with Beam's primitive coder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Tuple

from transforms.spec import EmbeddingSpec, FeatureSpecFile, FeatureViewSpec


class Event(NamedTuple):
    """One parsed event, reduced to what the spec needs."""

    event_time_ms: int
    event_id: Optional[str]
    keys: Sequence[str]  # one per entity in ParsePlan.entities order
    nums: Sequence[Optional[float]]  # one per ParsePlan.num_fields
    strs: Sequence[Optional[str]]  # one per ParsePlan.str_fields
    matches: int  # bit i set when ParsePlan.where_clauses[i] matches
    arrival_ms: Optional[int] = None  # the pipeline clock when it arrived (lateness guard)


class DeadLetter(NamedTuple):
    """A record the pipeline refused, with why and where.

    `payload` is the record as received: its text when it was UTF-8 (`encoding` "utf-8"), base64
    of its bytes otherwise ("base64"), or JSON for records that arrived as objects (Parquet rows:
    "json"), so every dead letter can be decoded and re-ingested exactly (`payload_bytes`).
    """

    payload: str
    reason: str  # short code: invalid_json, bad_timestamp, missing_entity_key, bad_type, too_late, ...
    error: str  # human-readable detail
    stage: str  # parse | window | online_store | ...
    time: str  # RFC 3339, when it was dead-lettered
    encoding: str = "utf-8"  # of payload: utf-8 | base64 | json
    event_time_ms: Optional[int] = None  # when the record was parsed far enough to know it
    views: Optional[Sequence[str]] = None  # too_late: the views it came too late for


class FeatureRow(NamedTuple):
    """One emitted pane of one window for one entity. `features` follows the view's order.

    Rows are few (one per entity, window and pane), and their values have mixed types, so
    they travel with Beam's primitive coder rather than a RowCoder schema.
    """

    view: str
    entity: str
    window_start_ms: int
    window_end_ms: int
    pane_timing: str  # EARLY | ON_TIME | LATE
    pane_index: int
    max_event_time_ms: int
    features: Tuple[Any, ...]


@dataclass(frozen=True)
class ViewLayout:
    """What a store needs to know about one view (or embedding), derived from the spec."""

    name: str
    join_key: str
    key_dtype: str  # string | int64
    feature_names: tuple[str, ...]
    value_types: tuple[str, ...]  # int64 | double | string | float_list
    ttl_seconds: Optional[int]
    period_seconds: Optional[int]  # None: every window is current (sessions)

    @classmethod
    def from_view(cls, spec: FeatureSpecFile, view: FeatureViewSpec) -> "ViewLayout":
        features = (tuple(f.name for f in view.features), tuple(spec.value_type(f) for f in view.features))
        return cls._of(spec, view.entity, view.name, *features, view.ttl, view.period_seconds)

    @classmethod
    def from_embedding(cls, spec: FeatureSpecFile, embedding: EmbeddingSpec) -> "ViewLayout":
        return cls._of(spec, embedding.entity, embedding.name, ("embedding",), ("float_list",), embedding.ttl, None)

    @classmethod
    def _of(cls, spec: FeatureSpecFile, entity_name: str, name: str, feature_names: tuple[str, ...],
            value_types: tuple[str, ...], ttl_seconds: Optional[int],
            period_seconds: Optional[int]) -> "ViewLayout":
        entity = spec.entities[entity_name]
        return cls(name, entity.join_key, entity.dtype, feature_names, value_types, ttl_seconds, period_seconds)


def layouts(spec: FeatureSpecFile) -> dict[str, ViewLayout]:
    """Every online "view" of the spec: feature views and embeddings (one feature `embedding`)."""
    out = {v.name: ViewLayout.from_view(spec, v) for v in spec.feature_views}
    out.update({e.name: ViewLayout.from_embedding(spec, e) for e in spec.embeddings})
    return out
