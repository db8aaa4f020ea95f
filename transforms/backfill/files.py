"""Event files for the backfill: globs, formats (JSONL, maybe compressed, or Parquet, each file by
its own), byte and row-group ranges so several workers read one big file, blocks of whole lines,
and dead-letter files read back as the records they hold."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import orjson
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PBegin, PCollection

from transforms import progress
from transforms.backfill.columnar import block_lines
from transforms.parse import payload_bytes
from transforms.records import DeadLetter

RANGE_BYTES = 16 * 1024 * 1024
BLOCK_BYTES = 8 * 1024 * 1024


def matching_files(pattern: str) -> list[str]:
    """The paths a glob matches (local or any Beam filesystem); none for a glob without match."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # Beam raises BeamIOError for unmatched globs on some filesystems
        return []
    return [m.path for m in result.metadata_list]


def is_parquet(path: str) -> bool:
    """Each matched file is read by its own format: Parquet by name, JSONL (maybe compressed) else."""
    return path.endswith(".parquet")


class FileRange(NamedTuple):
    path: str
    start: int
    end: int  # JSONL: byte offsets; Parquet: row groups [start, end)


def split_files(paths: list[str], range_bytes: Optional[int] = None) -> list[FileRange]:
    """Byte ranges of JSONL files (lines are assigned to the range they start in) and
    row-group ranges of Parquet files, so several workers can read one big file."""
    range_bytes = range_bytes or RANGE_BYTES
    ranges = []
    for path in paths:
        if is_parquet(path):
            with FileSystems.open(path) as handle:
                groups = pq.ParquetFile(handle).num_row_groups
            ranges += [FileRange(path, g, g + 1) for g in range(groups)]
        elif path.endswith(".gz"):
            ranges.append(FileRange(path, 0, -1))  # compressed: not splittable
        else:
            size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
            ranges += [FileRange(path, s, min(s + range_bytes, size)) for s in range(0, max(size, 1), range_bytes)]
    return ranges


def read_blocks(file_range: FileRange, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The JSONL lines of one range as blocks of whole lines (about `block_bytes` each): the
    lines that start in [start, end), or the whole (decompressed) file when end is -1."""
    path, start, end = file_range
    with FileSystems.open(path) as handle:
        if start:
            handle.seek(start - 1)
            handle.readline()  # the line that straddles `start` belongs to the previous range
        position = handle.tell()
        carry = b""
        while True:
            size = block_bytes if end == -1 else min(block_bytes, end - position)
            data = handle.read(size) if size > 0 else b""
            position += len(data)
            block = carry + data
            if not data or (end != -1 and position >= end):
                if end != -1 and block and not block.endswith(b"\n"):
                    block += handle.readline()  # the last line started before `end`: finish it
                if block:
                    yield block
                return
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                yield block[:cut]


def read_range(file_range: FileRange) -> Iterator[Any]:
    """Raw events (bytes lines, or dicts for Parquet) of one range."""
    path, start, end = file_range
    if is_parquet(path):
        with FileSystems.open(path) as handle:
            table = pq.ParquetFile(handle).read_row_groups(list(range(start, end)))
        yield from table.to_pylist()
        return
    for block in read_blocks(file_range):
        yield from block_lines(block)


def range_key(file_range: FileRange) -> str:
    return f"{file_range.start}:{file_range.end}:{file_range.path}"


class _SkipBlank(beam.DoFn):
    def __init__(self):
        self._blank = Metrics.counter("read", "blank_lines_skipped")

    def process(self, line: bytes) -> Iterable[bytes]:
        progress.advance(len(line) + 1, 1)
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


STREAM_BLOCK_BYTES = 1024 * 1024


class _ReadBlocks(beam.DoFn):
    def __init__(self, block_bytes: int):
        self._block_bytes = block_bytes

    def process(self, file_range: FileRange) -> Iterable[bytes]:
        yield from read_blocks(file_range, self._block_bytes)


class ReadEventFiles(beam.PTransform[PBegin, PCollection[Any]]):
    """JSONL (optionally compressed) or Parquet files matching a glob -> raw events. Each file
    is read by its own format (a glob may match both); JSONL files in ranges of `range_bytes`
    (default: Beam's). With `blocks`, JSONL comes as blocks of whole lines (about
    STREAM_BLOCK_BYTES each, blank lines included) instead of one element per line, for the
    streaming fast path (transforms/streaming/tiles.py BlocksToTiles)."""

    def __init__(self, pattern: str, range_bytes: Optional[int] = None, blocks: bool = False):
        super().__init__()
        self._pattern = pattern
        self._range_bytes = range_bytes
        self._blocks = blocks

    def expand(self, pbegin: PBegin) -> PCollection[Any]:
        paths = matching_files(self._pattern)
        parquet = [p for p in paths if is_parquet(p)]
        text = [p for p in paths if not is_parquet(p)]
        parts = []
        if parquet:
            parts.append(pbegin | "Parquet files" >> beam.Create(parquet)
                         | "Read Parquet" >> beam.io.ReadAllFromParquet())
        if text and self._blocks:
            parts.append(
                pbegin
                | "JSONL ranges" >> beam.Create(split_files(text, self._range_bytes))
                | "Spread ranges" >> beam.Reshuffle()
                | "Read JSONL blocks" >> beam.ParDo(_ReadBlocks(STREAM_BLOCK_BYTES))
            )
        elif text or not parts:
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
