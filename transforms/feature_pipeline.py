"""The shared graph: raw events -> parse -> one ComputeFeatures per view -> stores and dead letters.

The backfill and the streaming pipeline both call `FeaturePipeline`, so their values agree by
construction; only the source and the windowing's trigger differ.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.events import ParseEvents
from transforms.features import ComputeFeatures
from transforms.sinks import WriteDeadLetters, WriteOffline, WriteOnline
from transforms.spec import FeatureSpecFile


class FeatureOutputs(NamedTuple):
    rows: beam.PCollection
    dead_letters: beam.PCollection


class FeaturePipeline(beam.PTransform):
    """Raw events (JSON bytes/str or dicts) -> feature rows written to the configured stores."""

    def __init__(
        self,
        spec: FeatureSpecFile,
        streaming: bool,
        online_store: Optional[str] = None,
        offline_store: Optional[str] = None,
        dead_letter: Optional[str] = None,
        timestamp_from_element: bool = False,
    ):
        super().__init__()
        self._from_element = timestamp_from_element
        self._spec = spec
        self._streaming = streaming
        self._online = online_store
        self._offline = offline_store
        self._dead_letter = dead_letter

    def expand(self, raw: beam.PCollection) -> FeatureOutputs:
        parsed = raw | "Parse events" >> ParseEvents(self._spec, self._from_element)
        per_view = [
            parsed.events | ComputeFeatures(self._spec, view, self._streaming)
            for view in self._spec.feature_views
        ]
        rows = per_view | "Merge views" >> beam.Flatten()
        if self._online:
            rows | "Online store" >> WriteOnline(self._online, self._spec)
        if self._offline:
            rows | "Offline store" >> WriteOffline(self._offline, self._spec)
        if self._dead_letter:
            parsed.dead_letter | "Dead letters" >> WriteDeadLetters(self._dead_letter)
        return FeatureOutputs(rows, parsed.dead_letter)


class _SkipBlank(beam.DoFn):
    def __init__(self):
        self._blank = Metrics.counter("read", "blank_lines_skipped")

    def process(self, line: bytes) -> Iterable[bytes]:
        if line.strip():
            yield line
        else:
            self._blank.inc()


class ReadEventFiles(beam.PTransform):
    """JSONL (optionally compressed) or Parquet files matching a glob -> raw events."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self._pattern.endswith(".parquet"):
            return pbegin | "Read Parquet" >> beam.io.ReadFromParquet(self._pattern)
        return (
            pbegin
            # Bytes, not str: a line that is not UTF-8 must become a dead letter, not a crash.
            | "Read JSONL" >> beam.io.ReadFromText(self._pattern, coder=beam.coders.BytesCoder())
            | "Skip blank lines" >> beam.ParDo(_SkipBlank())
        )


def matching_files(pattern: str) -> list[str]:
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # Beam raises BeamIOError for unmatched globs on some filesystems
        return []
    return [m.path for m in result.metadata_list]
