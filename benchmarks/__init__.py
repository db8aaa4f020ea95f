"""Benchmark suite (issue 6): throughput, memory and scaling of the feature pipelines.

Run it with `make bench` (= `python -m benchmarks.run`), or `python -m benchmarks.run --quick`
for a smoke run. `run_quick()` is the same smoke run as a function, for a test.
"""

from __future__ import annotations

from typing import Any


def run_quick() -> dict[str, Any]:
    """The --quick suite; returns its results and raises RuntimeError if a case failed."""
    from benchmarks.run import run_quick as _run_quick

    return _run_quick()
