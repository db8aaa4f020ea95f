"""Progress of a local run: bytes and events read by this process's readers, shown while it lasts.

The launcher starts it with the input's size; the readers (the fast path's ranges, the event
path's lines) report to it when they run in the same process - Beam's Python runners, and Prism
and Flink with LOOPBACK workers. On a terminal a tqdm bar; otherwise a plain line every
`interval_s` seconds. Workers in other processes (Dataflow, multi-processing) report nothing
here; their runner shows progress its own way. No Beam import.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, label: str, total_bytes: Optional[int], stream: TextIO, interval_s: float = 5.0,
                 bar: Optional[bool] = None):
        self._label = label
        self._total = total_bytes or None
        self._stream = stream
        self._interval = interval_s
        self._lock = threading.Lock()
        self._bytes = self._events = 0
        self._started = self._last = time.monotonic()
        self._bar = None
        if bar if bar is not None else stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                             file=stream, leave=False, mininterval=0.5)

    def advance(self, n_bytes: int, n_events: int) -> None:
        with self._lock:
            self._bytes += n_bytes
            self._events += n_events
            if self._bar is not None:
                self._bar.update(n_bytes)
                return
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                print(self.line(now), file=self._stream, flush=True)

    def line(self, now: Optional[float] = None) -> str:
        elapsed = (now or time.monotonic()) - self._started
        read = f"read {_size(self._bytes)}"
        if self._total:
            read += f" of {_size(self._total)} ({100 * self._bytes / self._total:.0f} %)"
        rate = self._events / elapsed if elapsed > 0 else 0.0
        return (f"{self._label}: {read}, {self._events:,} events, {rate:,.0f} events/s, "
                f"{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d} elapsed")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"  # pragma: no cover


_current: Optional[Progress] = None


def start(label: str, total_bytes: Optional[int], stream: Optional[TextIO] = None, interval_s: float = 5.0,
          bar: Optional[bool] = None) -> Progress:
    global _current
    _current = Progress(label, total_bytes, stream or sys.stderr, interval_s, bar)
    return _current


def advance(n_bytes: int, n_events: int = 0) -> None:
    """What a reader read: no-op unless a run in this process started the progress."""
    current = _current
    if current is not None:
        current.advance(n_bytes, n_events)


def stop() -> None:
    global _current
    if _current is not None:
        _current.close()
    _current = None
