"""Run one benchmark case in a fresh Python process and measure it from outside.

Peak memory is per run: the case process's own VmHWM (it reports it; see cases.memory_mb for why
not ru_maxrss) and the peak of the summed RSS of its whole process tree (sampled from /proc every
50 ms, so SDK worker processes count too). CPU time comes from wait4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any]  # what the case reported about itself (timings, counters)
    wall_s: float  # the whole subprocess, interpreter start-up included
    peak_tree_rss_mb: float  # peak of the summed RSS of the process and its descendants
    cpu_s: float  # user + system of the process and the descendants it reaped
    error: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            **self.result,
            "process_wall_s": round(self.wall_s, 2),
            "peak_tree_rss_mb": round(self.peak_tree_rss_mb, 1),
            "process_cpu_s": round(self.cpu_s, 2),
            "ok": self.ok,
        }
        if self.error:
            out["error"] = self.error
        return out


def children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                kids += [int(k) for k in handle.read().split()]
    except OSError:
        pass
    return kids


def tree_rss_bytes(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/statm") as handle:
                total += int(handle.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
        stack += children(current)
    return total


def load_average() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def run_case(case: str, params: dict[str, Any], workdir: Path, timeout_s: float) -> Outcome:
    """`python -m benchmarks.cases CASE` in a new session; killed (whole group) after timeout_s."""
    result_path = workdir / f"{params.get('label', case)}.result.json"
    log_path = workdir / "logs" / f"{params.get('label', case)}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    # SDK worker subprocesses (multi_processing) import our modules too: give them the repo.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "benchmarks.cases",
        case,
        "--params",
        json.dumps(params),
        "--out",
        str(result_path),
    ]
    started = time.perf_counter()
    peak = 0
    error = None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            peak = max(peak, tree_rss_bytes(proc.pid))
            if error is None and time.perf_counter() - started > timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)
                error = f"timed out after {timeout_s:.0f} s (killed)"
            time.sleep(0.05)
    wall = time.perf_counter() - started
    result: dict[str, Any] = {}
    if result_path.exists():
        result = json.loads(result_path.read_text())
    ok = proc.returncode == 0 and bool(result) and error is None
    if not ok and error is None:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-12:]
        error = f"exit code {proc.returncode}: " + " | ".join(tail)
    return Outcome(ok, result, wall, peak / 2**20, usage.ru_utime + usage.ru_stime, error)
