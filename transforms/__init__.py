"""Streaming ML feature pipelines on Apache Beam: the public API for use in your own pipeline.

    import apache_beam as beam
    from transforms import FeaturePipeline, WriteFeatures, load_spec

    spec = load_spec("shop.yaml")
    with beam.Pipeline() as p:
        outputs = p | beam.Create(raw_events) | FeaturePipeline(spec)   # (rows, dead_letters)
        outputs | WriteFeatures(spec, online_store="sqlite:///online.db", offline_store="offline/")

Spec and records: `load_spec`, `FeatureSpecFile`, `SpecError`, `Event`, `DeadLetter`, `FeatureRow`.
Beam transforms: `ParseEvents` (raw -> events, dead letters), `ComputeFeatures` (events of one
view -> FeatureRows), `FeaturePipeline` (the two, every view, de-duplication), `TiledFeaturePipeline`
(bounded files, pre-aggregated while read), `WriteOnline`, `WriteOffline`, `WriteDeadLetters`,
`WriteFeatures` (all three). Reading back: `FeatureReader` (the online store, no Beam import),
`read_offline` (Parquet). README, "Use in your own pipeline", runs an example.

Names are imported on first use, so `from transforms import FeatureReader` (a serving process)
does not import Beam.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module defining it
_EXPORTS = {
    "load_spec": "transforms.spec",
    "FeatureSpecFile": "transforms.spec",
    "SpecError": "transforms.spec",
    "Event": "transforms.records",
    "DeadLetter": "transforms.records",
    "FeatureRow": "transforms.records",
    "ParseEvents": "transforms.parse",
    "ComputeFeatures": "transforms.compute",
    "FeaturePipeline": "transforms.feature_pipeline",
    "TiledFeaturePipeline": "transforms.feature_pipeline",
    "WriteFeatures": "transforms.feature_pipeline",
    "WriteOnline": "transforms.io.sinks",
    "WriteOffline": "transforms.io.sinks",
    "WriteDeadLetters": "transforms.io.sinks",
    "FeatureReader": "transforms.io.online.reader",
    "OnlineFeatures": "transforms.io.online.reader",
    "read_offline": "transforms.io.offline",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ below
    from transforms.compute import ComputeFeatures
    from transforms.feature_pipeline import FeaturePipeline, TiledFeaturePipeline, WriteFeatures
    from transforms.io.offline import read_offline
    from transforms.io.online.reader import FeatureReader, OnlineFeatures
    from transforms.io.sinks import WriteDeadLetters, WriteOffline, WriteOnline
    from transforms.parse import ParseEvents
    from transforms.records import DeadLetter, Event, FeatureRow
    from transforms.spec import FeatureSpecFile, SpecError, load_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transforms' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
