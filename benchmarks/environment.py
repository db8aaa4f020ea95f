"""What the numbers were measured on: machine, versions, code revision, command, date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _run(*command: str) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=30, cwd=REPO
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(command: str) -> dict[str, Any]:
    import apache_beam
    import pyarrow
    import redis

    status = _run("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "nproc": int(_run("nproc") or os.cpu_count() or 0),
        "cpu_model": cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "beam": apache_beam.__version__,
        "pyarrow": pyarrow.__version__,
        "redis_py": redis.__version__,
        "redis_server": _run("redis-server", "--version").split(" v=")[-1].split(" ")[0],
        "git_commit": _run("git", "rev-parse", "--short", "HEAD"),
        "git_modified_files": [line[3:] for line in status.splitlines()],
    }
