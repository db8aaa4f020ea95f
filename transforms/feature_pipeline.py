"""The shared graph: raw events -> parse -> de-duplicate -> one ComputeFeatures per view, and the
sinks it ends with (WriteFeatures).

The backfill and the streaming pipeline both call `FeaturePipeline`, so their values agree by
construction; only the source and the windowing's trigger differ (bounded or not: `is_stream`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import apache_beam as beam
from apache_beam.pvalue import PBegin, PCollection

from transforms.backfill.tiles import TiledBackfill
from transforms.compute import ComputeFeatures
from transforms.dedup import DropDuplicateEvents
from transforms.io.commit import RunCommit
from transforms.io.sinks import NewestCurrentRows, WriteDeadLetters, WriteOffline, WriteOnline
from transforms.parse import DEAD_LETTER_TAG, ParseEvents
from transforms.records import layouts
from transforms.spec import FeatureSpecFile
from transforms.streaming.tiles import BlocksToTiles, EventsToTiles, blocks_to_tiles_fits, tile_tag
from transforms.windows import GuardLateness, is_stream, reach_ms, tileable


class FeatureOutputs(NamedTuple):
    rows: PCollection  # FeatureRows: every emitted pane of every view
    dead_letters: PCollection  # DeadLetters
    # Each view's rows, before the Flatten into `rows`. Streaming sinks write these view by view:
    # Prism and Flink run a Flatten outside the worker, so writing `rows` would send every row
    # to the engine and back. (Leaving the unconsumed Flatten out of the graph saved ~0.6 s of
    # Python CPU on 300k events on Prism but cost Prism ~1.8 s more, so it stays.)
    per_view: tuple = ()


class TiledOutputs(NamedTuple):
    row_batches: PCollection  # RowTables (tiled views) or lists of FeatureRows of one view (the others)
    newest_rows: PCollection  # the newest current FeatureRow per (view, entity)
    dead_letters: PCollection


class FeaturePipeline(beam.PTransform[PCollection[Any], FeatureOutputs]):
    """Raw events (JSON bytes/str or dicts) -> FeatureOutputs(rows, dead_letters). Bounded input
    fires each window once; a stream fires the spec's triggers (`is_stream`)."""

    def __init__(self, spec: FeatureSpecFile, timestamp_from_element: bool = False,
                 clock: Optional[str] = None, blocks: bool = False, preaggregate: bool = True):
        super().__init__()
        self._from_element = timestamp_from_element
        self._clock = clock
        self._spec = spec
        self._blocks = blocks  # a stream of blocks of JSONL lines (ReadEventFiles(blocks=True))
        self._preaggregate = preaggregate  # streaming: partial accumulators per tile (fixed, sliding)
        if blocks and (clock is not None or timestamp_from_element or not preaggregate
                       or not blocks_to_tiles_fits(spec)):
            raise ValueError("blocks of lines need pre-aggregation, a spec without id_field or session "
                             "views, and no clock")

    def expand(self, raw: PCollection[Any]) -> FeatureOutputs:
        if self._blocks:  # the stream's fast path: blocks parsed straight into tiles
            tiles = raw | "Tiles" >> BlocksToTiles(self._spec)
            per_view = [tiles[tile_tag(view)] | ComputeFeatures(self._spec, view, from_tiles=True)
                        for view in self._spec.feature_views]
            rows = per_view | "Merge views" >> beam.Flatten()
            return FeatureOutputs(rows, tiles[DEAD_LETTER_TAG], tuple(per_view))
        parsed = raw | "Parse events" >> ParseEvents(self._spec, self._from_element, self._clock)
        events = parsed.events
        if self._spec.source.id_field:
            reach = max((reach_ms(view) for view in self._spec.feature_views), default=0)
            events = events | "Drop duplicate ids" >> DropDuplicateEvents(self._spec.source.dedup_horizon, reach)
        per_view = []
        streaming = self._preaggregate and is_stream(events)
        tiled = [view for view in self._spec.feature_views if tileable(view)] if streaming else []
        if tiled:  # the streaming fast path: partial accumulators per tile (transforms/streaming/tiles.py)
            tiles = events | "Tiles" >> EventsToTiles(self._spec, tiled)
            per_view += [tiles[tile_tag(view)] | ComputeFeatures(self._spec, view, from_tiles=True)
                         for view in tiled]
        for view in self._spec.feature_views:
            if any(view.name == t.name for t in tiled):
                continue
            view_events = events
            if self._clock is not None:
                view_events = events | GuardLateness(view)
            per_view.append(view_events | ComputeFeatures(self._spec, view))
        rows = per_view | "Merge views" >> beam.Flatten()
        return FeatureOutputs(rows, parsed.dead_letter, tuple(per_view))


class TiledFeaturePipeline(beam.PTransform[PBegin, TiledOutputs]):
    """The bounded fast path: files read and pre-aggregated per (entity, tile) in one pass
    (transforms/backfill/tiles.py); session views, which cannot be tiled, take the event path."""

    def __init__(self, spec: FeatureSpecFile, paths: list[str], range_bytes: Optional[int] = None):
        super().__init__()
        self._spec = spec
        self._paths = paths
        self._range_bytes = range_bytes  # JSONL files are read in ranges of this size (files.RANGE_BYTES)

    def expand(self, pbegin: PBegin) -> TiledOutputs:
        read = pbegin | "Read tiles" >> TiledBackfill(self._spec, self._paths, self._range_bytes)
        untiled = [
            read.events | ComputeFeatures(self._spec, view)
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
        return TiledOutputs(row_batches, newest_rows, read.dead_letters)


class WriteFeatures(beam.PTransform[Union[FeatureOutputs, TiledOutputs], None]):
    """The sinks every feature pipeline ends with, for the stores that are given: the online
    store (current windows; a bounded run writes only the newest per entity), the offline store
    (every pane) and the dead letters. `commit` (bounded runs) makes the offline and dead-letter
    files replace an earlier run's."""

    def __init__(self, spec: FeatureSpecFile, online_store: Optional[str] = None,
                 offline_store: Optional[str] = None, dead_letter: Optional[str] = None,
                 commit: Optional[RunCommit] = None):
        super().__init__()
        self._spec = spec
        self._online = online_store
        self._offline = offline_store
        self._dead_letter = dead_letter
        self._commit = commit

    def expand(self, outputs: Union[FeatureOutputs, TiledOutputs]) -> None:
        # (label suffix, online rows, offline rows, latest only, commit) per pair of sinks
        if isinstance(outputs, TiledOutputs):  # already reduced to the newest rows
            sinks = [("", outputs.newest_rows, outputs.row_batches, False, self._commit)]
        elif outputs.per_view and is_stream(outputs.rows):  # view by view (FeatureOutputs.per_view)
            sinks = [(f" {i + 1}" if i else "", rows, rows, False, None) for i, rows in enumerate(outputs.per_view)]
        else:
            sinks = [("", outputs.rows, outputs.rows, not is_stream(outputs.rows), self._commit)]
        for suffix, online_rows, offline_rows, latest_only, commit in sinks:
            if self._online:
                online_rows | f"Online store{suffix}" >> WriteOnline(self._online, self._spec, latest_only=latest_only)
            if self._offline:
                offline_rows | f"Offline store{suffix}" >> WriteOffline(self._offline, self._spec, commit=commit)
        if self._dead_letter:
            outputs.dead_letters | "Dead letters" >> WriteDeadLetters(self._dead_letter, commit=self._commit)
