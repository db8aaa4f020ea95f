"""Shared fixtures: a real Redis, pinned Beam runners, sample specs.

Redis comes from REDIS_URL, else testcontainers when a Docker engine answers, else a
`redis-server` started here on a free port. Tests never flush a Redis they did not start:
each test writes under its own project name instead.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis
from apache_beam import __version__ as beam_version
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SPEC = REPO / "pipelines" / "examples" / "shop.yaml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip on a laptop; under CI a missing service is a failure - green must mean tested."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batch_options(**extra) -> PipelineOptions:
    # FnApiRunner directly: DirectRunner would first try to download Prism (offline here).
    return PipelineOptions([], runner="FnApiRunner", **extra)


def streaming_options(**extra) -> PipelineOptions:
    options = PipelineOptions([], runner="BundleBasedDirectRunner", **extra)
    options.view_as(StandardOptions).streaming = True
    return options


# --- real engines (`make engines`, engines/README.md) ----------------------------------------------

BEAM_CACHE = Path.home() / ".apache_beam" / "cache"  # where Beam's runners look; fetch.sh stages there
ENGINES_CACHE = Path(os.environ.get("BEAM_ENGINES_CACHE", Path.home() / ".cache" / "beam-feature-engines"))
FLINK_HOME = ENGINES_CACHE / "flink-1.19.0"
FLINK_ARGS = ["--runner", "FlinkRunner", "--flink_version", "1.19", "--environment_type", "LOOPBACK"]
# TestStream on Flink: one element per bundle, or a late element lands in an EARLY pane (the
# watermark hold of a bundle covers it); one task, so panes come out in the stream's order.
FLINK_TEST_STREAM_ARGS = ["--max_bundle_size", "1", "--parallelism", "1"]


def prism_binary() -> Path:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "amd64")
    return BEAM_CACHE / "prism" / "bin" / f"apache_beam-v{beam_version}-prism-{platform.system().lower()}-{arch}"


def flink_job_server_jar() -> Path:
    return BEAM_CACHE / "jars" / f"beam-runners-flink-1.19-job-server-{beam_version}.jar"


def runner_args(engine: str) -> list[str]:
    """Runner flags for an engine, after checking it is there (PrismRunner would otherwise try to
    download from GitHub, FlinkRunner from Maven Central). Flink runs its embedded mini cluster."""
    if engine == "fnapi":
        return ["--runner", "FnApiRunner"]
    if engine == "direct":
        return ["--runner", "BundleBasedDirectRunner"]
    if engine == "prism":
        if not prism_binary().exists():
            skip_or_fail(f"no Prism binary at {prism_binary()}: run `make engines`")
        return ["--runner", "PrismRunner"]
    if engine == "flink":
        if not flink_job_server_jar().exists() or shutil.which("java") is None:
            skip_or_fail(f"no Flink job server jar at {flink_job_server_jar()} or no java: run `make engines`")
        return FLINK_ARGS + ["--flink_master", "[local]"]
    raise ValueError(engine)


_flink_job_server: list = []  # (process, endpoint), started on first use


def shared_flink_job_server() -> str:
    """One Flink job server (the jar FlinkRunner starts, on its embedded mini cluster) for the many
    small TestStream pipelines, instead of a JVM per pipeline; stopped when the tests end. The
    backfill and streaming tests in test_engines.py let FlinkRunner start its own."""
    if not _flink_job_server:
        runner_args("flink")  # the jar is there
        port = free_port()
        process = subprocess.Popen(
            ["java", "-jar", str(flink_job_server_jar()), "--flink-master", "[local]", "--job-port", str(port),
             "--artifact-port", "0", "--expansion-port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(process.kill)
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the Flink job server did not start (exit {process.poll()})")
                time.sleep(0.5)
        _flink_job_server.append((process, f"localhost:{port}"))
    return _flink_job_server[0][1]


def streaming_options_on(engine: str) -> PipelineOptions:
    """Streaming options for a TestStream pipeline on one engine (Flink: the shared job server)."""
    args = runner_args(engine)
    if engine == "flink":
        args += FLINK_TEST_STREAM_ARGS + ["--job_endpoint", shared_flink_job_server()]
    options = PipelineOptions(args)
    options.view_as(StandardOptions).streaming = True
    return options


class RedisServer:
    """A redis-server process owned by the tests (so they may kill and restart it)."""

    def __init__(self, workdir: Path, *extra_args: str):
        self.workdir = workdir
        self.port = free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail("no redis-server binary and no REDIS_URL")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                redis.Redis(host="127.0.0.1", port=self.port).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def project() -> str:
    """A project name unique to the test: keys never collide in a shared Redis."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """PUBSUB_EMULATOR_HOST when set; else testcontainers' emulator when Docker answers; else the
    in-process fake gRPC server under tests/ (the real google-cloud-pubsub client talks to all)."""
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        yield os.environ["PUBSUB_EMULATOR_HOST"]
        return
    if _docker_answers():
        from testcontainers.google import PubSubContainer

        with PubSubContainer() as container:
            host = container.get_pubsub_emulator_host()
            os.environ["PUBSUB_EMULATOR_HOST"] = host
            yield host
            del os.environ["PUBSUB_EMULATOR_HOST"]
        return
    from pubsub_fake import FakePubSubServer

    server = FakePubSubServer()
    host = server.start()
    server.set_emulator_env()
    try:
        yield host
    finally:
        server.stop()
