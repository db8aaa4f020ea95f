"""The Beam engines the streaming benchmarks and the soak run on, and whether each is installed.

`make engines` (engines/fetch.sh) caches Prism and a Flink 1.19 job server where Beam looks for
them; without them PrismRunner would try to download from GitHub and FlinkRunner from Maven
Central (no internet here), so a missing engine is reported, not fetched.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from apache_beam import __version__ as beam_version

ENGINES = ("direct", "prism", "flink")
NAMES = {"direct": "BundleBasedDirectRunner", "prism": "Prism", "flink": "Flink mini cluster"}

# Flink's embedded mini cluster (one task: 2 cores here), SDK workers in this process (LOOPBACK).
FLINK_ARGS = [
    "--runner", "FlinkRunner", "--flink_version", "1.19", "--flink_master", "[local]",
    "--environment_type", "LOOPBACK", "--parallelism", "1",
]
RUNNER_ARGS = {
    "direct": ["--runner", "BundleBasedDirectRunner"],
    "prism": ["--runner", "PrismRunner"],  # LOOPBACK workers by default (PrismRunner)
    "flink": FLINK_ARGS,
}


def flink_job_server_jar() -> Path:
    return Path.home() / ".apache_beam" / "cache" / "jars" / f"beam-runners-flink-1.19-job-server-{beam_version}.jar"


def missing(engine: str) -> Optional[str]:
    """Why `engine` cannot run here, or None."""
    if engine == "prism":
        from pipelines.common import prism_cached

        return None if prism_cached() else "Prism is not cached: run `make engines`"
    if engine == "flink":
        if shutil.which("java") is None:
            return "no java on PATH"
        if not flink_job_server_jar().exists():
            return f"no Flink job server jar at {flink_job_server_jar()}: run `make engines`"
    return None


def runner_args(engine: str) -> list[str]:
    if engine not in RUNNER_ARGS:
        raise ValueError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    return list(RUNNER_ARGS[engine])
