"""Security: Redis AUTH (requirepass and ACL users) and TLS against real redis-server processes
with certificates made here by openssl; passwords never in errors, logs, metrics or reprs; specs
and inputs never deserialized with an unsafe loader."""

from __future__ import annotations

import ast
import io
import logging
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import EXAMPLE_SPEC, REPO, RedisServer, skip_or_fail
from helpers import make_spec, view
from pipelines import backfill_features
from pipelines.common import report
from pipelines.sample_events import generate
from transforms.io.online.base import StoreError
from transforms.io.online.config import redact_url
from transforms.io.online.registry import open_online_store
from transforms.records import FeatureRow

# Characters that must be percent-encoded in a URL, so the encoded form is tested too.
PASSWORD = "s3cr3t/p@ss"
QUOTED = urllib.parse.quote(PASSWORD, safe="")
ALICE_PASSWORD = "wonderland-9"


class OwnedRedis(RedisServer):
    """conftest's RedisServer with the listening options given by the test (TLS servers listen
    on --tls-port only), ready when the port accepts connections: conftest's readiness check is
    a plain, unauthenticated PING."""

    def start(self) -> "OwnedRedis":
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail("no redis-server binary")
        log = self.workdir / f"redis-{self.port}.log"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir), *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.process.poll() is not None:
                output = log.read_text(errors="replace")
                if "--tls-port" in self.extra_args and ("tls" in output.lower() or "directive" in output):
                    skip_or_fail(f"redis-server cannot serve TLS (built without it?): {output.strip()[-300:]}")
                raise RuntimeError(f"redis-server exited: {output[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")


def start_server(workdir: Path, *args: str):
    server = OwnedRedis(workdir)
    server.extra_args = tuple(arg.replace("{port}", str(server.port)) for arg in args)
    return server.start()


def openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {done.stderr}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate signed by
    it, and an unrelated CA."""
    if shutil.which("openssl") is None:
        skip_or_fail("no openssl binary")
    d = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other_ca"):
        openssl(d, "req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        openssl(d, "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {name: d / name for name in ("ca.pem", "other_ca.pem", "server.pem", "server.key",
                                         "client.pem", "client.key")}


def tls_args(certs: dict[str, Path], auth_clients: str) -> tuple[str, ...]:
    return ("--port", "0", "--tls-port", "{port}", "--tls-cert-file", str(certs["server.pem"]),
            "--tls-key-file", str(certs["server.key"]), "--tls-ca-cert-file", str(certs["ca.pem"]),
            "--tls-auth-clients", auth_clients)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("auth"), "--port", "{port}", "--requirepass", PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("acl"), "--port", "{port}",
                          "--user", "alice", "on", f">{ALICE_PASSWORD}", "~*", "&*", "+@all",
                          "--user", "default", "off")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory, certs):
    server = start_server(tmp_path_factory.mktemp("tls_server"), *tls_args(certs, "no"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory, certs):
    server = start_server(tmp_path_factory.mktemp("mtls_server"), *tls_args(certs, "yes"))
    yield server
    server.stop()


SECRETS = (PASSWORD, QUOTED, ALICE_PASSWORD, "p@ss", "p%40ss", "ss@", "p?ss", "p#ss", "12/34")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {text!r}"


def spec_for(project: str):
    return make_spec([view("v", features=[{"name": "n", "agg": "count"}], ttl="1h")], project=project)


def round_trip(url: str, project: str) -> None:
    store = open_online_store(url, spec_for(project))
    try:
        row = FeatureRow("v", "u1", 0, 60_000, "ON_TIME", 0, 59_999, (7,))
        assert store.write([row]) == (1, 0)
        assert store.read("v", ["u1", "u2"]) == [(0, 60_000, 0, {"n": 7}), None]
        assert_no_secret(repr(store) + str(store))
    finally:
        store.close()


def fails_at_once(url: str, project: str) -> StoreError:
    """The store refuses with a StoreError, without spending the retry budget on it."""
    store = open_online_store(url, spec_for(project))
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.write([FeatureRow("v", "u1", 0, 60_000, "ON_TIME", 0, 59_999, (1,))])
    assert time.monotonic() - started < 1.0, "an error retrying cannot fix was retried"
    assert_no_secret(str(err.value))
    store.close()
    return err.value


# --- AUTH ----------------------------------------------------------------------------------------


def test_requirepass_url_works_and_a_wrong_password_fails_at_once_redacted(password_redis, project):
    port = password_redis.port
    round_trip(f"redis://:{QUOTED}@127.0.0.1:{port}/0", project)
    err = fails_at_once(f"redis://:not-{QUOTED}@127.0.0.1:{port}/0", project)
    assert str(err).startswith(f"Redis redis://:***@127.0.0.1:{port}/0: ")
    assert "invalid username-password pair" in str(err)
    err = fails_at_once(f"redis://127.0.0.1:{port}/0", project)
    assert str(err).startswith(f"Redis redis://127.0.0.1:{port}/0: ") and "authenticated" in str(err)


def test_acl_user_url_works_and_the_disabled_default_user_is_refused(acl_redis, project):
    port = acl_redis.port
    round_trip(f"redis://alice:{ALICE_PASSWORD}@127.0.0.1:{port}/0", project)
    err = fails_at_once(f"redis://alice:wrong-{ALICE_PASSWORD}@127.0.0.1:{port}/0", project)
    assert str(err) == (f"Redis redis://alice:***@127.0.0.1:{port}/0: "
                        "invalid username-password pair or user is disabled.")
    err = fails_at_once(f"redis://:{ALICE_PASSWORD}@127.0.0.1:{port}/0", project)  # as "default"
    assert str(err).startswith(f"Redis redis://:***@127.0.0.1:{port}/0: ")


# --- TLS -----------------------------------------------------------------------------------------


def test_tls_with_a_private_ca_works_by_ip_and_by_host_name(tls_redis, certs, project):
    for host in ("127.0.0.1", "localhost"):
        round_trip(f"rediss://{host}:{tls_redis.port}/0?ssl_ca_certs={certs['ca.pem']}&ssl_cert_reqs=required",
                   project + host[:3])


def test_tls_server_certificate_from_another_ca_fails_at_once(tls_redis, certs, project):
    err = fails_at_once(f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={certs['other_ca.pem']}", project)
    assert str(err).startswith(f"Redis rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs=")
    assert "certificate verify failed" in str(err)


def test_mutual_tls_with_a_client_certificate(mtls_redis, certs, project):
    url = (f"rediss://127.0.0.1:{mtls_redis.port}/0?ssl_ca_certs={certs['ca.pem']}"
           f"&ssl_certfile={certs['client.pem']}&ssl_keyfile={certs['client.key']}")
    round_trip(url, project)


def test_urls_redis_py_would_misread_are_refused_up_front(certs):
    spec = spec_for("p")
    cases = {
        # TLS options on a plain connection: redis-py would fail later, deep in a bundle
        f"redis://127.0.0.1:6379/0?ssl_ca_certs={certs['ca.pem']}": "TLS options need rediss://",
        # a misspelt option would be passed to the connection, or ignored
        "rediss://127.0.0.1:6380/0?ssl_ca_cert=/ca.pem": "unsupported parameter(s) ssl_ca_cert",
        "rediss://127.0.0.1:6380/0?ssl_ca_certs=/nonexistent/ca.pem": "ssl_ca_certs file not found",
        "rediss://127.0.0.1:6380/0?ssl_cert_reqs=yes": "ssl_cert_reqs must be required, optional or none",
        # unencoded "/" or "?" in the password: redis-py would connect to another host
        f"redis://:{PASSWORD}@127.0.0.1:6379/0": "percent-encode",
        "redis://alice:p?ss@127.0.0.1:6379/0": "percent-encode",
        "redis://:p#ss@127.0.0.1:6379/0": "percent-encode",
        "redis://alice:12/34@127.0.0.1:6379/0": "percent-encode",
    }
    for url, message in cases.items():
        with pytest.raises(StoreError) as err:
            open_online_store(url, spec)
        assert message in str(err.value), url
        assert_no_secret(str(err.value))
    for url in ("redis://127.0.0.1/0", "redis://alice:p%3Fss@h:1/0?socket_timeout=5", "unix:///tmp/r.sock?db=1"):
        open_online_store(url, spec).close()  # well-formed: accepted (nothing connects yet)


def test_redact_url_hides_every_form_of_password():
    assert redact_url(f"redis://:{QUOTED}@10.0.0.3:6379/0") == "redis://:***@10.0.0.3:6379/0"
    assert redact_url(f"redis://alice:{ALICE_PASSWORD}@h:6379/1") == "redis://alice:***@h:6379/1"
    assert redact_url("rediss://u:pw@[::1]:6380/0") == "rediss://u:***@[::1]:6380/0"
    assert redact_url("rediss://h:6380/0?ssl_password=k3y&ssl_ca_certs=/ca.pem") == (
        "rediss://h:6380/0?ssl_password=***&ssl_ca_certs=/ca.pem")
    assert redact_url("redis://h:6379/0?Password=x") == "redis://h:6379/0?Password=***"
    # no password: unchanged, including a user name alone and other stores
    for url in ("redis://h:6379/0", "redis://alice@h:6379/0", "sqlite:////data/a@b/online.db"):
        assert redact_url(url) == url
    # unencoded reserved characters end the host part early: hide everything up to the last "@"
    for url in (f"redis://:{PASSWORD}@h:6379/0", "redis://alice:12/34@h:6379/0", "redis://:p#ss@h:6379/0"):
        assert redact_url(url) == "redis://***@h:6379/0"


def test_store_repr_and_str_never_show_the_password(password_redis, tmp_path):
    store = open_online_store(f"redis://:{QUOTED}@127.0.0.1:{password_redis.port}/0", spec_for("p"))
    assert repr(store) == f"RedisOnlineStore('redis://:***@127.0.0.1:{password_redis.port}/0', project='p')"
    assert_no_secret(repr(store) + str(store) + repr(vars(store).get("url")))
    store.close()
    sqlite = open_online_store(f"sqlite:///{tmp_path}/o.db", spec_for("p"))
    assert repr(sqlite) == f"SqliteOnlineStore('{tmp_path}/o.db', project='p')"
    sqlite.close()


# --- no password in logs, metrics or printed output -----------------------------------------------


def test_backfill_with_a_password_never_logs_or_prints_it(password_redis, tmp_path, caplog, capfd):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(generate(300, seed=2, users=10, items=10)) + b"\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(EXAMPLE_SPEC.read_text().replace("project: shop", "project: secured"))
    url = f"redis://:{QUOTED}@127.0.0.1:{password_redis.port}/0"
    caplog.set_level(logging.DEBUG)
    result = backfill_features.run([
        "--events", str(events), "--feature_spec", str(spec), "--online_store", url,
        "--offline_store", str(tmp_path / "offline"), "--runner", "FnApiRunner",
    ])
    printed = io.StringIO()
    metrics = report(result, out=printed)
    assert metrics["online_store.rows_written"] > 0 and metrics.get("online_store.retries", 0) == 0
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert f"online redis://:***@127.0.0.1:{password_redis.port}/0" in logged  # the logs were captured
    out, err = capfd.readouterr()
    assert_no_secret("\n".join([logged, caplog.text, printed.getvalue(), out, err, repr(sorted(metrics))]))


def test_cli_with_a_wrong_password_prints_one_redacted_line(password_redis, tmp_path, capfd):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(generate(10, seed=2)) + b"\n")
    with pytest.raises(SystemExit) as exit_:
        backfill_features.main([
            "--events", str(events), "--feature_spec", str(EXAMPLE_SPEC),
            "--online_store", f"redis://:wrong{QUOTED}@127.0.0.1:{password_redis.port}/0",
            "--offline_store", str(tmp_path / "offline"), "--runner", "FnApiRunner",
        ])
    assert exit_.value.code == 1
    out, err = capfd.readouterr()
    assert err.splitlines()[-1] == (
        f"backfill_features: error: Redis redis://:***@127.0.0.1:{password_redis.port}/0: "
        "invalid username-password pair or user is disabled.")
    assert "Traceback" not in err
    assert_no_secret(out + err)


# --- no unsafe deserialization ------------------------------------------------------------------

UNSAFE_CALLS = {
    "yaml": {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"},
    "pickle": {"load", "loads", "Unpickler"},
    "cPickle": {"load", "loads"},
    "cloudpickle": {"load", "loads"},
    "dill": {"load", "loads"},
    "marshal": {"load", "loads"},
    "shelve": {"open"},
    "torch": {"load"},
    "joblib": {"load"},
}


def unsafe_deserialization(source: str, filename: str = "<source>") -> list[str]:
    """`module.call(` and `from module import call` for the loaders above, and eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and func.attr in UNSAFE_CALLS.get(func.value.id, ())):
                found.append(f"{filename}:{node.lineno}: {func.value.id}.{func.attr}(")
            elif isinstance(func, ast.Name) and func.id in ("eval", "exec"):
                found.append(f"{filename}:{node.lineno}: {func.id}(")
        elif isinstance(node, ast.ImportFrom) and node.module in UNSAFE_CALLS:
            for alias in node.names:
                if alias.name in UNSAFE_CALLS[node.module]:
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name}")
    return found


def test_no_module_deserializes_input_unsafely():
    # the checker itself catches what it is meant to catch
    assert len(unsafe_deserialization(
        "import yaml, pickle\nyaml.load(s)\npickle.loads(b)\nfrom yaml import unsafe_load\neval(x)\n"
        "yaml.safe_load(s)\nmodel.eval()\n")) == 4
    files = sorted(p for d in ("transforms", "pipelines") for p in (REPO / d).rglob("*.py"))
    assert len(files) > 10
    found = [hit for path in files for hit in unsafe_deserialization(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []
