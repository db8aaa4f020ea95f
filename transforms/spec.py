"""The feature spec: strict pydantic models, a YAML loader with precise errors, and durations.

The spec is the single source of truth for the backfill, the streaming pipeline, the online
reader and the templates. A typo is an error that names the file, the path and the bad value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

# The spec's enum of aggregations; each is one class in transforms/aggregations.py.
AGGREGATIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "first",
    "last",
    "approx_count_distinct",
    "approx_percentile",
    "variance",
    "stddev",
    "first_k",
    "last_k",
    "top_k",
    "histogram",
)
# The arguments some aggregations take: spec key -> the aggregations that need it.
ARGUMENTS = {
    "q": ("approx_percentile",),
    "k": ("first_k", "last_k", "top_k"),
    "cap": ("histogram",),
}
VALUE_AGGS = ("first", "last", "first_k", "last_k")  # stored as the field's type (`dtype`)
MAX_K = 1000  # list features: at most this many values per window
MAX_CAP = 10000  # histogram: at most this many distinct values stored per window


def where_matches(value: Any, allowed: Any) -> bool:
    """A `where` clause's rule for one field: the value equals one of the allowed values, and
    JSON true never equals 1 (booleans compare only with booleans)."""
    for candidate in allowed:
        if isinstance(candidate, bool) or isinstance(value, bool):
            if isinstance(candidate, bool) and isinstance(value, bool) and candidate == value:
                return True
        elif value == candidate:
            return True
    return False


class SpecError(ValueError):
    """A user mistake in a spec: the message names file, path and value; no traceback needed."""


MAX_DURATION_S = 100 * 365 * 86400  # 100 years


def parse_duration(value: Any) -> int:
    """'90s' | '5m' | '1h' | '1d' -> whole seconds."""
    if not isinstance(value, str):
        raise ValueError(f"must be a duration string like 30s, 5m, 1h or 1d (got {value!r})")
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError(f"must be a duration: an integer and one of s, m, h, d (got {value!r})")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION_S:
        # Beyond this, window ends and expiry times leave the range every stage can represent
        # (event times are bounded to years 1970..9999 and windows must end inside it).
        raise ValueError(f"must be at most {MAX_DURATION_S // 86400}d (got {value!r})")
    return seconds


Duration = Annotated[int, BeforeValidator(parse_duration)]
Scalar = Union[bool, int, float, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    timestamp_field: str = Field(min_length=1)
    id_field: Optional[str] = None
    # With id_field: events repeating an id within this much event time are dropped (counted).
    dedup_horizon: Duration = Field(default=600, gt=0)


class EntitySpec(_Strict):
    join_key: str = Field(pattern=_NAME)
    # Feast's entity key encoding depends on the value type; most join keys are strings.
    dtype: Literal["string", "int64"] = "string"


class FixedWindow(_Strict):
    type: Literal["fixed"]
    size: Duration = Field(gt=0)


class SlidingWindow(_Strict):
    type: Literal["sliding"]
    size: Duration = Field(gt=0)
    period: Duration = Field(gt=0)

    @model_validator(mode="after")
    def _period_divides_size(self) -> "SlidingWindow":
        if self.period > self.size or self.size % self.period:
            raise ValueError(
                f"period must divide size (got size={self.size}s, period={self.period}s)"
            )
        return self


class SessionWindow(_Strict):
    type: Literal["session"]
    gap: Duration = Field(gt=0)


WindowSpec = Annotated[Union[FixedWindow, SlidingWindow, SessionWindow], Field(discriminator="type")]


class TriggerSpec(_Strict):
    early_every: Optional[Duration] = Field(default=None, gt=0)
    late_every: Optional[int] = Field(default=None, gt=0, strict=True)


class FeatureSpec(_Strict):
    name: str = Field(pattern=_NAME)
    agg: Literal[AGGREGATIONS]  # type: ignore[valid-type]
    field: Optional[str] = None
    where: Optional[dict[str, Union[Scalar, list[Scalar]]]] = None
    q: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    k: Optional[int] = Field(default=None, ge=1, le=MAX_K, strict=True)
    cap: Optional[int] = Field(default=None, ge=1, le=MAX_CAP, strict=True)
    # Only for first/last/first_k/last_k: the stored type. Default: double when the field feeds
    # a numeric aggregation anywhere in the spec, else string.
    dtype: Optional[Literal["string", "double"]] = None

    @model_validator(mode="after")
    def _check_arguments(self) -> "FeatureSpec":
        if self.agg != "count" and not self.field:
            raise ValueError(f"aggregation {self.agg!r} needs a 'field'")
        for key, aggs in ARGUMENTS.items():
            given = getattr(self, key) is not None
            if self.agg in aggs and not given:
                expected = "in [0, 1]" if key == "q" else f"(an integer from 1 to {MAX_K if key == 'k' else MAX_CAP})"
                raise ValueError(f"{self.agg} needs {key!r} {expected}")
            if given and self.agg not in aggs:
                raise ValueError(f"{key!r} only applies to {'/'.join(aggs)} (agg is {self.agg!r})")
        if self.dtype is not None and self.agg not in VALUE_AGGS:
            raise ValueError(f"'dtype' only applies to {'/'.join(VALUE_AGGS)} (agg is {self.agg!r})")
        if self.where is not None and not self.where:
            raise ValueError("'where' must list at least one field")
        return self


class FeatureViewSpec(_Strict):
    name: str = Field(pattern=_NAME)
    entity: str
    window: WindowSpec
    trigger: TriggerSpec = TriggerSpec()
    allowed_lateness: Duration = Field(default=0, ge=0)
    accumulation: Literal["accumulating", "discarding"] = "accumulating"
    ttl: Optional[Duration] = Field(default=None, gt=0)
    features: list[FeatureSpec] = Field(min_length=1)

    @field_validator("features")
    @classmethod
    def _unique_feature_names(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        seen: set[str] = set()
        for feature in features:
            if feature.name in seen:
                raise ValueError(f"duplicate feature name {feature.name!r}")
            seen.add(feature.name)
        return features

    @property
    def period_seconds(self) -> Optional[int]:
        """The refresh period of the online value: sliding period, fixed size, none for sessions."""
        if isinstance(self.window, SlidingWindow):
            return self.window.period
        if isinstance(self.window, FixedWindow):
            return self.window.size
        return None


class EmbeddingSpec(_Strict):
    """A text embedding stored like a feature view called `name` with one feature `embedding`."""

    name: str = Field(pattern=_NAME)
    entity: str
    field: str = Field(min_length=1)
    model_path: Optional[str] = None  # local dir or gs:// in Hugging Face layout; default: MiniLM
    ttl: Optional[Duration] = Field(default=None, gt=0)


class FeatureSpecFile(_Strict):
    project: str = Field(pattern=_NAME)
    source: SourceSpec
    entities: dict[str, EntitySpec] = Field(min_length=1)
    feature_views: list[FeatureViewSpec] = Field(default_factory=list)
    embeddings: list[EmbeddingSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_references(self) -> "FeatureSpecFile":
        names: set[str] = set()
        for section in ("feature_views", "embeddings"):
            for i, item in enumerate(getattr(self, section)):
                if item.entity not in self.entities:
                    raise _located(
                        (section, i, "entity"),
                        f"unknown entity {item.entity!r} (defined: {', '.join(self.entities)})",
                    )
                if item.name in names:
                    raise _located((section, i, "name"), f"duplicate view name {item.name!r}")
                names.add(item.name)
        return self

    def embedding(self, name: str) -> EmbeddingSpec:
        for item in self.embeddings:
            if item.name == name:
                return item
        known = ", ".join(e.name for e in self.embeddings) or "none"
        raise SpecError(f"unknown embedding {name!r} (embeddings in the spec: {known})")

    def view(self, name: str) -> FeatureViewSpec:
        for view in self.feature_views:
            if view.name == name:
                return view
        known = ", ".join(v.name for v in self.feature_views) or "none"
        raise SpecError(f"unknown view {name!r} (views in the spec: {known})")

    def numeric_fields(self) -> frozenset[str]:
        from transforms.aggregations import AGGREGATIONS as classes

        return frozenset(
            f.field
            for v in self.feature_views
            for f in v.features
            if classes[f.agg].reads == "number" and f.field
        )

    def field_type(self, feature: FeatureSpec) -> str:
        """'double' | 'string': how a first/last/first_k/last_k feature reads its field."""
        if feature.dtype:
            return feature.dtype
        return "double" if feature.field in self.numeric_fields() else "string"

    def value_type(self, feature: FeatureSpec) -> str:
        """The stored type of a feature's values: int64 | double | string | double_list |
        string_list | int64_map (transforms/aggregations.py says which)."""
        from transforms.aggregations import AGGREGATIONS as classes

        cls = classes[feature.agg]
        return cls.output_type(self.field_type(feature) if cls.reads == "value" else "double")


class _LocatedError(ValueError):
    """Raised inside validators that know a more precise location than pydantic would give."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


def _located(loc: tuple, message: str) -> _LocatedError:
    return _LocatedError(loc, message)


_UNION_TAGS = {"fixed", "sliding", "session"}


def _format_loc(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # pydantic puts the discriminator tag and the type of union members into locations.
        if i and loc[i - 1] == "window" and part in _UNION_TAGS:
            continue
        if part in ("bool", "int", "float", "str", "list[union[bool,int,float,str]]"):
            continue
        if part.startswith(("function-", "literal[", "list[")):
            continue
        out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_error(source: str, err: dict) -> str:
    loc = _format_loc(tuple(err.get("loc", ())))
    kind = err.get("type", "")
    msg = err.get("msg", "invalid")
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error" and loc.endswith(".agg"):
        msg = f"unknown aggregation (expected one of {', '.join(AGGREGATIONS)})"
    elif kind == "union_tag_invalid":
        msg = "unknown window type (expected fixed, sliding or session)"
        err = {**err, "input": err.get("ctx", {}).get("tag")}
    elif ".where." in f".{loc}":
        msg = "must be a string, number, boolean, or a list of them"
    msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in ("missing",) and "(got" not in msg:
        msg = f"{msg} (got {err['input']!r})"
    return f"{source}: {loc}: {msg}"


def parse_spec(data: Any, source: str = "<spec>") -> FeatureSpecFile:
    """Validate a spec given as a dict; raise SpecError naming source, path and bad value."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: (top level): must be a mapping (got {type(data).__name__})")
    try:
        return FeatureSpecFile.model_validate(data)
    except _LocatedError as err:  # pragma: no cover - pydantic wraps these; kept for safety
        raise SpecError(f"{source}: {_format_loc(err.loc)}: {err.message}") from None
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        ctx_error = first.get("ctx", {}).get("error")
        if isinstance(ctx_error, _LocatedError):
            raise SpecError(f"{source}: {_format_loc(ctx_error.loc)}: {ctx_error.message}") from None
        raise SpecError(_format_error(source, first)) from None


def load_spec(path: str | Path) -> FeatureSpecFile:
    """Read a YAML spec (local path or gs://...) with yaml.safe_load (never yaml.load) and validate it."""
    path = str(path)
    try:
        if "://" in path:
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(path) as handle:
                text = handle.read().decode("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read the feature spec: {getattr(err, 'strerror', None) or err}") from None
    except Exception as err:  # Beam's filesystems raise their own error types (BeamIOError, ...)
        raise SpecError(f"{path}: cannot read the feature spec: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"{path}: {where}invalid YAML: {problem}") from None
    return parse_spec(data, str(path))
