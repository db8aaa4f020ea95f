"""Launch a Flex Template on Dataflow: check the parameters against the template's
metadata.json, derive a unique job name, build a LaunchFlexTemplateRequest and send it, or
print it as JSON (--dry_run).

    python -m flex_templates.launch --template streaming_features --project P --region R \
        --gcs_path gs://B/templates --image IMAGE \
        --param input_subscription=projects/P/subscriptions/S \
        --param feature_spec=gs://B/shop.yaml \
        --param online_store=redis://10.0.0.3:6379/0 --param offline_store=gs://B/offline \
        [--max_workers 10] [--update --job_name NAME [--transform_name_mapping JSON]] [--dry_run]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import secrets
import sys
from typing import Any, Optional, Sequence

from google.cloud import dataflow_v1beta3 as dataflow

from flex_templates.templates import (
    call_google,
    GCS,
    GPU_TEMPLATES,
    JOB_NAME_MAX,
    NAMES,
    Template,
    TemplateError,
    check_gcs,
    check_job_name,
    dashed,
    load,
    parse_params,
    spec_gcs_path,
)
from pipelines.cli import fail

PROGRAM = "launch"
IMAGE = re.compile(  # registry[:port]/path[:tag|@digest]
    r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})?$"
)
_CHECKS = {  # flag -> (pattern, what it must look like); no shell metacharacters anywhere
    "project": (r"[a-z][a-z0-9-]{4,28}[a-z0-9]", "a project id"),
    "region": (r"[a-z]+-[a-z]+[0-9]", "a region such as us-central1"),
    "machine_type": (r"[a-z0-9]+(-[a-z0-9]+)+", "a machine type such as n1-standard-4"),
    "worker_service_account": (
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[a-z]{2,}",
        "a service account e-mail",
    ),
    "network": (r"[A-Za-z0-9._/:-]+", "a network name or URL"),
    "subnetwork": (r"[A-Za-z0-9._/:-]+", "regions/REGION/subnetworks/NAME or its full URL"),
    "temp_location": (GCS, "gs://bucket/path"),
    "staging_location": (GCS, "gs://bucket/path"),
    "gpu_type": (r"nvidia-[a-z0-9-]+", "an accelerator type such as nvidia-tesla-t4 or nvidia-l4"),
}
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}=[a-z0-9_-]{0,63}$")


AMBIGUOUS_SA = ("--service_account is ambiguous: --worker_service_account names the account the Dataflow "
                "workers run as, --scheduler_service_account the identity Cloud Scheduler launches with")


def description(doc: str) -> str:
    """A module docstring's first paragraph as one line of --help."""
    return " ".join(doc.split("\n\n")[0].split())


class _Refused(argparse.Action):
    """A flag that used to exist with another meaning: refused with what to use instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.help)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared with flex_templates.schedule (which launches the same request on a cron)."""
    parser.add_argument("--template", required=True, choices=NAMES, help="which Flex Template to launch")
    parser.add_argument("--project", required=True, help="Google Cloud project of the Dataflow job")
    parser.add_argument("--region", required=True, help="Dataflow region, e.g. us-central1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--container_spec_gcs_path", help="gs://.../<template>.json written by build"
    )
    where.add_argument("--gcs_path", help="gs:// base; the spec is <gcs_path>/<template>.json")
    parser.add_argument(
        "--image",
        required=True,
        help="the template's image (the one build pushed); workers run it too",
    )
    parser.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        default=[],
        help="template parameter (repeat); checked against metadata.json",
    )
    parser.add_argument(
        "--job_name", help="exact Dataflow job name (default: <template>-<UTC time>-<random>)"
    )
    parser.add_argument("--max_workers", type=int, help="autoscaling ceiling (default: Dataflow's)")
    parser.add_argument("--num_workers", type=int, help="workers at start (default: Dataflow's)")
    parser.add_argument("--machine_type", help="worker machine type, e.g. n1-standard-4")
    parser.add_argument(
        "--worker_service_account",
        help="service account the Dataflow workers run as (default: the Compute Engine default)",
    )
    parser.add_argument("--service_account", action=_Refused, help=AMBIGUOUS_SA)
    parser.add_argument("--network", help="VPC network of the workers (default: default)")
    parser.add_argument("--subnetwork", help="regions/REGION/subnetworks/NAME or its full URL")
    parser.add_argument("--temp_location", help="gs:// path for temporary files (default: the template's)")
    parser.add_argument("--staging_location", help="gs:// path for staged files (default: the template's)")
    parser.add_argument("--disable_public_ips", action="store_true", help="workers get private IPs only")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="job label (repeat): lowercase letters, digits, _ and -")
    parser.add_argument(
        "--experiment", action="append", default=[], help="additional experiment (repeat)"
    )
    parser.add_argument(
        "--gpu_type", help=f"worker GPU, e.g. nvidia-tesla-t4 ({', '.join(sorted(GPU_TEMPLATES))})"
    )
    parser.add_argument("--gpu_count", type=int, default=1, help="GPUs per worker with --gpu_type (default: 1)")
    parser.add_argument(
        "--dry_run", action="store_true", help="print the request as JSON; send nothing"
    )


def default_job_name(
    template: str, now: Optional[dt.datetime] = None, token: Optional[str] = None
) -> str:
    """<template>-<YYYYmmdd-HHMMSS>-<6 hex>: unique per launch, valid for Dataflow, <= 63 chars."""
    now = now or dt.datetime.now(dt.timezone.utc)
    suffix = f"{now:%Y%m%d-%H%M%S}-{token or secrets.token_hex(3)}"
    base = dashed(template)[: JOB_NAME_MAX - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def worker_accelerator(gpu_type: str, count: int) -> str:
    """The Dataflow service option that attaches GPUs and installs the NVIDIA driver."""
    return f"worker_accelerator=type:{gpu_type};count:{count};install-nvidia-driver"


def _check_flags(args: argparse.Namespace) -> None:
    for flag, (pattern, what) in _CHECKS.items():
        value = getattr(args, flag, None)
        if value is not None and not re.fullmatch(pattern, value):
            raise TemplateError(f"--{flag} must be {what} (got {value!r})")
    if not IMAGE.fullmatch(args.image):
        raise TemplateError(
            f"--image must be an image reference such as "
            f"us-central1-docker.pkg.dev/P/REPO/NAME:TAG (got {args.image!r})"
        )
    for flag in ("max_workers", "num_workers"):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= 1000:
            raise TemplateError(f"--{flag} must be between 1 and 1000 (got {value})")
    for label in args.label:
        if not _LABEL.fullmatch(label):
            raise TemplateError(
                f"--label must be key=value in lowercase letters, digits, _ and - (got {label!r})"
            )
    for experiment in args.experiment:
        if not re.fullmatch(r"[A-Za-z0-9_.:=;,/-]+", experiment):
            raise TemplateError(
                f"--experiment has characters Dataflow does not use (got {experiment!r})"
            )
    if args.gpu_type:
        if args.template not in GPU_TEMPLATES:
            raise TemplateError(
                f"--gpu_type: template {args.template} runs on CPUs "
                f"(GPU templates: {', '.join(sorted(GPU_TEMPLATES))})"
            )
        if not 1 <= args.gpu_count <= 8:
            raise TemplateError(f"--gpu_count must be between 1 and 8 (got {args.gpu_count})")


# launch flag -> FlexTemplateRuntimeEnvironment field
_ENVIRONMENT = {
    "max_workers": "max_workers",
    "num_workers": "num_workers",
    "machine_type": "machine_type",
    "worker_service_account": "service_account_email",
    "network": "network",
    "subnetwork": "subnetwork",
    "temp_location": "temp_location",
    "staging_location": "staging_location",
}


def environment(
    args: argparse.Namespace, template: Template, params: dict[str, str]
) -> dataflow.FlexTemplateRuntimeEnvironment:
    """The Dataflow knobs: workers, network, GPUs, labels; Streaming Engine for streaming runs."""
    fields: dict[str, Any] = {
        field: getattr(args, flag) for flag, field in _ENVIRONMENT.items()
        if getattr(args, flag) is not None
    }
    experiments = list(args.experiment)
    if args.gpu_type:
        experiments.append(worker_accelerator(args.gpu_type, args.gpu_count))
    if args.disable_public_ips:
        fields["ip_configuration"] = dataflow.WorkerIPAddressConfiguration.WORKER_IP_PRIVATE
    if template.is_streaming_run(params):
        fields["enable_streaming_engine"] = True
    return dataflow.FlexTemplateRuntimeEnvironment(
        additional_experiments=experiments,
        additional_user_labels=dict(label.split("=", 1) for label in args.label),
        **fields,
    )


def build_request(
    args: argparse.Namespace, job_name: Optional[str] = None
) -> dataflow.LaunchFlexTemplateRequest:
    """Validate everything, then the typed request; raises TemplateError on a user mistake."""
    template = load(args.template)
    _check_flags(args)
    params = parse_params(args.param)
    template.validate(params)
    template.check_for_dataflow(params)
    name = check_job_name(job_name or args.job_name or default_job_name(template.name))
    if args.container_spec_gcs_path:
        spec_path = check_gcs(args.container_spec_gcs_path, "--container_spec_gcs_path")
    else:
        spec_path = spec_gcs_path(template.name, args.gcs_path)
    parameter = dataflow.LaunchFlexTemplateParameter(
        job_name=name,
        container_spec_gcs_path=spec_path,
        # Workers run the template's own image (Google's samples pass it the same way).
        parameters={**params, "sdk_container_image": args.image},
        environment=environment(args, template, params),
    )
    if getattr(args, "update", False):
        if not args.job_name:
            raise TemplateError("--update replaces a running job: give its exact --job_name")
        if not template.is_streaming_run(params):
            raise TemplateError(
                f"--update is for streaming jobs; template {template.name} runs as a batch job here"
            )
        parameter.update = True
        parameter.transform_name_mappings = transform_name_mapping(args.transform_name_mapping)
    elif getattr(args, "transform_name_mapping", None):
        raise TemplateError("--transform_name_mapping only applies with --update")
    return dataflow.LaunchFlexTemplateRequest(
        project_id=args.project,
        location=args.region,
        launch_parameter=parameter,
        validate_only=bool(getattr(args, "validate_only", False)),
    )


def transform_name_mapping(text: Optional[str]) -> dict[str, str]:
    if not text:
        return {}
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise TemplateError(f"--transform_name_mapping is not JSON ({err.msg}): {text!r}") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise TemplateError(
            "--transform_name_mapping must be a JSON object "
            f'{{"old step": "new step"}} (got {text!r})'
        )
    return mapping


def to_json(request: dataflow.LaunchFlexTemplateRequest) -> str:
    """The request as the REST API spells it (camelCase, enum names, unset fields left out)."""
    return dataflow.LaunchFlexTemplateRequest.to_json(
        request, use_integers_for_enums=False, always_print_fields_with_no_presence=False
    )


def launch_body(request: dataflow.LaunchFlexTemplateRequest) -> dict[str, Any]:
    """The POST body of .../flexTemplates:launch (project and location are in the URL)."""
    body = json.loads(to_json(request))
    body.pop("projectId", None)
    body.pop("location", None)
    return body


def send(request: dataflow.LaunchFlexTemplateRequest) -> dataflow.Job:
    return call_google(
        PROGRAM, "Dataflow refused the launch",
        lambda: dataflow.FlexTemplatesServiceClient().launch_flex_template(request=request).job,
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=description(__doc__))
    add_launch_arguments(parser)
    parser.add_argument(
        "--update", action="store_true", help="replace the running streaming job --job_name"
    )
    parser.add_argument(
        "--transform_name_mapping", help='with --update: JSON {"old step": "new step"}'
    )
    parser.add_argument(
        "--validate_only", action="store_true", help="ask Dataflow to validate, not run"
    )
    args = parser.parse_args(argv)
    try:
        request = build_request(args)
    except TemplateError as err:
        fail(PROGRAM, str(err))
    if args.dry_run:
        print(to_json(request))
        return
    job = send(request)
    if args.validate_only:
        print(f"valid: {request.launch_parameter.job_name}")
        return
    print(
        json.dumps(
            {
                "job_id": job.id,
                "job_name": job.name or request.launch_parameter.job_name,
                "console": "https://console.cloud.google.com/dataflow/jobs/"
                f"{args.region}/{job.id}?project={args.project}",
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
