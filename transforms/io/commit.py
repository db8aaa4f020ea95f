"""How a bounded run replaces its earlier output: files are staged, then renamed into place and
the earlier run's files deleted once every file is written (RunCommit, CommitFiles)."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Iterable, NamedTuple, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection


class RunCommit(NamedTuple):
    """How a bounded run replaces its earlier output: files are staged under
    `<root>/_staging/<run>/` and named with `key` (a fingerprint of the run's input); once all
    are written they are renamed into place and older files with the same key are deleted."""

    key: str
    run: str

    @classmethod
    def for_inputs(cls, paths: Sequence[str]) -> "RunCommit":
        digest = hashlib.sha256("\n".join(sorted(paths)).encode("utf-8", "surrogatepass")).hexdigest()
        return cls(digest[:16], uuid.uuid4().hex[:12])

    def staging(self, root: str) -> str:
        return FileSystems.join(root, "_staging", self.run)

    def final_path(self, root: str, staging_root: str, staged: str) -> str:
        return FileSystems.join(root, staged[len(staging_root):].lstrip("/"))


class _Commit(beam.DoFn):
    def __init__(self, patterns: list[str], staging: str):
        self._patterns = patterns
        self._staging = staging
        self._replaced = Metrics.counter("commit", "earlier_files_replaced")

    def process(self, moves: list[tuple[str, str]]) -> Iterable[str]:
        finals = {final for final, _ in moves}
        for directory in {os.path.dirname(final) for final in finals if "://" not in final}:
            os.makedirs(directory, exist_ok=True)
        if moves:
            FileSystems.rename([staged for _, staged in moves], [final for final, _ in moves])
        # rename first, then delete: a failure in between leaves copies (read_offline removes
        # them), never a gap
        old = []
        for pattern in self._patterns:
            try:
                matched = FileSystems.match([pattern])[0].metadata_list
            except Exception:  # nothing matches yet on some filesystems
                matched = []
            old += [m.path for m in matched if m.path not in finals]
        if old:
            FileSystems.delete(old)
            self._replaced.inc(len(old))
        if FileSystems.exists(self._staging):
            FileSystems.delete([self._staging])
        yield from sorted(finals)


class CommitFiles(beam.PTransform[PCollection[Tuple[str, str]], PCollection[str]]):
    """(final, staged) path pairs of a bounded run -> the final paths, once all are written:
    staged files renamed into place, then files matching `patterns` that this run did not
    write (an earlier run's) deleted, so re-running leaves the output as after one run."""

    def __init__(self, patterns: list[str], staging: str):
        super().__init__()
        self._patterns = patterns
        self._staging = staging

    def expand(self, moves: PCollection[Tuple[str, str]]) -> PCollection[str]:
        return (
            moves
            | "One window" >> beam.WindowInto(beam.transforms.window.GlobalWindows())
            | "All files" >> beam.combiners.ToList()
            | "Rename and replace" >> beam.ParDo(_Commit(self._patterns, self._staging))
        )
