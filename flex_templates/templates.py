"""The project's Flex Templates: where each one's metadata.json and entry file live, and how
launch parameters are checked against that metadata (unknown, missing, regex) before Dataflow
sees them. Shared by build, launch and schedule; imports no Beam: of the project only the CLI's
one-line failure (pipelines.cli) and the stores' password redaction (transforms.io.online.config)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from pipelines.cli import fail
from transforms.io.online.config import redact_url

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAMES = ("streaming_features", "backfill_features", "embed_texts")

# metadata.json cannot say "exactly one of"; the pipelines' run() refuses anything else
# (tests/test_flex_templates.py checks that these groups match what run() does).
INPUTS = ("input_subscription", "input_topic", "events")
ONE_OF: dict[str, tuple[tuple[str, ...], ...]] = {
    "streaming_features": (INPUTS,),
    "embed_texts": (INPUTS,),
}
STREAMING_INPUTS = frozenset({"input_subscription", "input_topic"})
# Dataflow workers read or write these, so a local path or an SQLite file would be on each
# worker's own disk (silently lost). Local paths stay valid in metadata for local rehearsals.
SHARED_STORAGE = ("events", "offline_store", "dead_letter", "online_store")
GPU_TEMPLATES = frozenset({"embed_texts"})
JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
JOB_NAME_MAX = 63


class TemplateError(ValueError):
    """A user mistake in a template command line; printed as one line, exit code 2."""


def call_google(program: str, refused: str, call: Callable[[], Any]) -> Any:
    """Call a Google API; missing credentials and API refusals become one line and exit 1."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        return call()
    except auth_exceptions.DefaultCredentialsError as err:
        fail(program, f"no Google credentials ({err}); run `gcloud auth application-default login`", code=1)
    except exceptions.GoogleAPICallError as err:
        fail(program, f"{refused}: {err.code} {err.message}", code=1)


GCS = r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[A-Za-z0-9._~%+=,@/-]*)?"


def redact(value: str) -> str:
    """A parameter value safe to echo: a URL's password becomes *** (redact_url); one line (repr)."""
    return repr(redact_url(value))


@dataclass(frozen=True)
class Template:
    name: str
    metadata: dict[str, Any]

    @property
    def directory(self) -> Path:
        return HERE / self.name

    @property
    def metadata_file(self) -> Path:
        return self.directory / "metadata.json"

    @property
    def entry_file(self) -> Path:
        """The file FLEX_TEMPLATE_PYTHON_PY_FILE points at (see the Dockerfile)."""
        return self.directory / "main.py"

    @property
    def streaming(self) -> bool:
        return bool(self.metadata.get("streaming"))

    @cached_property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.metadata["parameters"]}

    @property
    def required(self) -> list[str]:
        return [n for n, p in self.parameters.items() if not p.get("isOptional", False)]

    def is_streaming_run(self, params: Mapping[str, str]) -> bool:
        return self.streaming or any(params.get(n) for n in STREAMING_INPUTS)

    def validate(self, params: Mapping[str, str]) -> None:
        """Raise TemplateError naming the first bad parameter and its value."""
        for name, value in params.items():
            spec = self.parameters.get(name)
            if spec is None:
                raise TemplateError(
                    f"unknown parameter {name}={redact(value)} for template {self.name} "
                    f"(known: {', '.join(self.parameters)})"
                )
            for pattern in spec.get("regexes", []):
                # fullmatch: like Java's Matcher.matches(), and a trailing newline cannot slip
                # past a `$` the way it does with re.match.
                if not re.fullmatch(pattern, value):
                    raise TemplateError(
                        f"parameter {name}={redact(value)} is not valid for template {self.name}: "
                        f"{_first_sentence(spec.get('helpText', ''))} (must match {pattern})"
                    )
        missing = [n for n in self.required if not params.get(n)]
        if missing:
            raise TemplateError(
                f"template {self.name} needs parameter(s) {', '.join(missing)} "
                "(give --param NAME=VALUE)"
            )
        for group in ONE_OF.get(self.name, ()):
            given = [n for n in group if params.get(n)]
            if len(given) != 1:
                got = ", ".join(f"{n}={redact(params[n])}" for n in given) or "none"
                raise TemplateError(
                    f"template {self.name} needs exactly one of {', '.join(group)} (got {got})"
                )

    def check_for_dataflow(self, params: Mapping[str, str]) -> None:
        """Refuse values that pass the metadata but would lose data on Dataflow workers."""
        for name in SHARED_STORAGE:
            value = params.get(name)
            if value is None or value.startswith(("gs://", "projects/", "redis://", "rediss://")):
                continue
            raise TemplateError(
                f"parameter {name}={redact(value)}: Dataflow workers cannot share a local path or "
                "an SQLite file (each worker has its own disk); use gs://..., a Pub/Sub topic or "
                "redis(s)://... (local values are for local runs of the entry file)"
            )


def _first_sentence(text: str) -> str:
    return re.split(r"\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")


def load(name: str) -> Template:
    if name not in NAMES:
        raise TemplateError(f"unknown template {name!r} (templates: {', '.join(NAMES)})")
    path = HERE / name / "metadata.json"
    return Template(name, json.loads(path.read_text(encoding="utf-8")))


def parse_params(pairs: Optional[Iterable[str]]) -> dict[str, str]:
    """['key=value', ...] -> dict; a value may itself contain '='."""
    params: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TemplateError(f"--param {pair!r}: expected NAME=VALUE")
        if key in params:
            raise TemplateError(f"--param {key} given twice")
        params[key] = value
    return params


def check_gcs(value: Optional[str], flag: str) -> str:
    if value is None or not re.fullmatch(GCS, value):
        raise TemplateError(f"{flag} must be gs://bucket[/path] (got {value!r})")
    return value


def spec_gcs_path(template: str, gcs_path: Optional[str]) -> str:
    """The container spec file: GCS_PATH if it ends in .json, else GCS_PATH/<template>.json."""
    path = check_gcs(gcs_path, "--gcs_path")
    return path if path.endswith(".json") else f"{path.rstrip('/')}/{template}.json"


def check_job_name(name: str, flag: str = "--job_name") -> str:
    if len(name) > JOB_NAME_MAX or not JOB_NAME.fullmatch(name):
        raise TemplateError(
            f"{flag} must be lowercase letters, digits and dashes, start with a letter, end with a "
            f"letter or digit, at most {JOB_NAME_MAX} characters (got {name!r})"
        )
    return name


def dashed(template: str) -> str:
    """streaming_features -> streaming-features (Dataflow and Scheduler names allow no _)."""
    base = re.sub(r"[^a-z0-9]+", "-", template.lower()).strip("-")
    return base if base[:1].isalpha() else f"t-{base}"
