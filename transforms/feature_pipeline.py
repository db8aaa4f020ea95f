"""The shared graph: raw events -> parse -> one ComputeFeatures per view -> stores and dead letters.

The backfill and the streaming pipeline both call `FeaturePipeline`, so their values agree by
construction; only the source and the windowing's trigger differ.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.dedup import DropDuplicateEvents
from transforms.events import DeadLetter, ParseEvents, payload_bytes
from transforms.features import ComputeFeatures
from transforms.sinks import NewestCurrentRows, RunCommit, WriteDeadLetters, WriteOffline, WriteOnline
from transforms.spec import FeatureSpecFile
from transforms.stores.online import layouts
from transforms.tiles import TiledBackfill, is_parquet, tileable
from transforms.windowing import GuardLateness, reach_ms


class FeatureOutputs(NamedTuple):
    rows: beam.PCollection
    dead_letters: beam.PCollection


class TiledOutputs(NamedTuple):
    row_batches: beam.PCollection  # lists of FeatureRows of one view (all windows)
    newest_rows: beam.PCollection  # the newest current FeatureRow per (view, entity)
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
        clock: Optional[str] = None,
        commit: Optional[RunCommit] = None,
    ):
        super().__init__()
        self._commit = commit
        self._from_element = timestamp_from_element
        self._clock = clock
        self._spec = spec
        self._streaming = streaming
        self._online = online_store
        self._offline = offline_store
        self._dead_letter = dead_letter

    def expand(self, raw: beam.PCollection) -> FeatureOutputs:
        parsed = raw | "Parse events" >> ParseEvents(self._spec, self._from_element, self._clock)
        events = parsed.events
        if self._spec.source.id_field:
            reach = max((reach_ms(view) for view in self._spec.feature_views), default=0)
            events = events | "Drop duplicate ids" >> DropDuplicateEvents(
                self._spec.source.dedup_horizon, self._streaming, reach)
        per_view, dead_letters = [], [parsed.dead_letter]
        for view in self._spec.feature_views:
            view_events = events
            if self._clock is not None:
                view_events = events | GuardLateness(view)
            per_view.append(view_events | ComputeFeatures(self._spec, view, self._streaming))
        rows = per_view | "Merge views" >> beam.Flatten()
        all_dead = dead_letters | "Merge dead letters" >> beam.Flatten() if len(dead_letters) > 1 else dead_letters[0]
        write_outputs(rows, rows, all_dead, self._spec, self._online, self._offline, self._dead_letter,
                      latest_only=not self._streaming, commit=self._commit)
        return FeatureOutputs(rows, all_dead)


def write_outputs(
    online_rows: beam.PCollection,
    offline_rows: beam.PCollection,
    dead_letters: beam.PCollection,
    spec: FeatureSpecFile,
    online_store: Optional[str],
    offline_store: Optional[str],
    dead_letter: Optional[str],
    latest_only: bool = False,
    commit: Optional[RunCommit] = None,
) -> None:
    """The sinks every feature pipeline ends with. `offline_rows` may be FeatureRows or lists of
    them; `latest_only` (bounded runs) reduces `online_rows` to the newest per entity first;
    `commit` (bounded runs) makes the offline and dead-letter files replace an earlier run's."""
    if online_store:
        online_rows | "Online store" >> WriteOnline(online_store, spec, latest_only=latest_only)
    if offline_store:
        offline_rows | "Offline store" >> WriteOffline(offline_store, spec, commit=commit)
    if dead_letter:
        dead_letters | "Dead letters" >> WriteDeadLetters(dead_letter, commit=commit)


class TiledFeaturePipeline(beam.PTransform):
    """The bounded fast path: files read and pre-aggregated per (entity, tile) in one pass
    (transforms/tiles.py); session views, which cannot be tiled, take the event path."""

    def __init__(self, spec: FeatureSpecFile, paths: list[str], online_store: Optional[str] = None,
                 offline_store: Optional[str] = None, dead_letter: Optional[str] = None,
                 commit: Optional[RunCommit] = None, range_bytes: Optional[int] = None):
        super().__init__()
        self._spec = spec
        self._paths = paths
        self._range_bytes = range_bytes  # JSONL files are read in ranges of this size (tiles.RANGE_BYTES)
        self._sinks = (online_store, offline_store, dead_letter)
        self._commit = commit

    def expand(self, pbegin: beam.pvalue.PBegin) -> TiledOutputs:
        read = pbegin | "Read tiles" >> TiledBackfill(self._spec, self._paths, self._range_bytes)
        untiled = [
            read.events | ComputeFeatures(self._spec, view, streaming=False)
            for view in self._spec.feature_views
            if not tileable(view)
        ]
        batches, newest = [read.row_batches], [read.newest]
        if untiled:
            untiled_rows = untiled | "Merge untiled views" >> beam.Flatten()
            batches.append(untiled_rows | "Untiled rows as batches" >> beam.Map(lambda row: [row]))
            newest.append(untiled_rows | "Newest untiled rows" >> NewestCurrentRows(layouts(self._spec)))
        row_batches = batches | "Merge row batches" >> beam.Flatten()
        newest_rows = newest | "Merge newest rows" >> beam.Flatten()
        write_outputs(newest_rows, row_batches, read.dead_letters, self._spec, *self._sinks, commit=self._commit)
        return TiledOutputs(row_batches, newest_rows, read.dead_letters)


class _SkipBlank(beam.DoFn):
    def __init__(self):
        self._blank = Metrics.counter("read", "blank_lines_skipped")

    def process(self, line: bytes) -> Iterable[bytes]:
        if line.strip():
            yield line
        else:
            self._blank.inc()


class DeadLetterPayloads(beam.DoFn):
    """Dead-letter JSONL lines -> the records they hold, as received (to process them again).
    Other lines pass unchanged, so one glob may match events and dead letters together (how
    too-late events are recomputed with the rest of their windows)."""

    _FIELDS = frozenset(DeadLetter._fields[:5])  # payload, reason, error, stage, time

    def __init__(self):
        self._letters = Metrics.counter("read", "dead_letters_unwrapped")

    def process(self, line: bytes) -> Iterable[bytes]:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict) and self._FIELDS <= record.keys():
            try:
                payload = payload_bytes(record)
            except (AttributeError, TypeError, ValueError):  # a damaged dead letter: judged as is
                payload = line
            self._letters.inc()
            yield payload
        else:
            yield line


class ReadEventFiles(beam.PTransform):
    """JSONL (optionally compressed) or Parquet files matching a glob -> raw events. Each file
    is read by its own format (a glob may match both); JSONL files in ranges of `range_bytes`
    (default: Beam's)."""

    def __init__(self, pattern: str, range_bytes: Optional[int] = None):
        super().__init__()
        self._pattern = pattern
        self._range_bytes = range_bytes

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        paths = matching_files(self._pattern)
        parquet = [p for p in paths if is_parquet(p)]
        text = [p for p in paths if not is_parquet(p)]
        parts = []
        if parquet:
            parts.append(pbegin | "Parquet files" >> beam.Create(parquet)
                         | "Read Parquet" >> beam.io.ReadAllFromParquet())
        if text or not parts:
            parts.append(
                pbegin
                | "JSONL files" >> beam.Create(text)
                # Bytes, not str: a line that is not UTF-8 must become a dead letter, not a crash.
                | "Read JSONL" >> beam.io.ReadAllFromText(
                    coder=beam.coders.BytesCoder(),
                    **({"desired_bundle_size": self._range_bytes} if self._range_bytes else {}))
                | "Skip blank lines" >> beam.ParDo(_SkipBlank())
            )
        return parts[0] if len(parts) == 1 else parts | "Both formats" >> beam.Flatten()


def matching_files(pattern: str) -> list[str]:
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # Beam raises BeamIOError for unmatched globs on some filesystems
        return []
    return [m.path for m in result.metadata_list]
