"""Run a batch Flex Template on a cron: a Cloud Scheduler job whose HTTP target POSTs the same
launch request as flex_templates.launch to Dataflow's flexTemplates:launch, with an OAuth token
of --scheduler_service_account. Creates the job or updates it in place (idempotent); --dry_run
prints it, with the launch request it will send decoded.

    python -m flex_templates.schedule --template backfill_features --cron "0 * * * *" \
        --time_zone UTC --scheduler_service_account launcher@P.iam.gserviceaccount.com \
        --worker_service_account worker@P.iam.gserviceaccount.com --project P \
        --region R --gcs_path gs://B/templates --image IMAGE \
        --param events=gs://B/events/*.jsonl ...

Job names: Cloud Scheduler sends the same body every time and cannot template it, so every
run asks for the same Dataflow job name (default: the Scheduler job's id). Dataflow allows one
*active* job per name and region: a tick that comes while the previous run is still active
starts no second job (the launch is refused, Scheduler logs a failed attempt and does not retry,
retry_count 0); a finished job (done, failed, cancelled, drained) does not hold the name. So
runs never overlap, which is what a backfill into the same stores wants; runs are told apart by
job id and start time. Distinct names per run need something that computes the name at run
time (Cloud Workflows, a function); Scheduler alone cannot. Streaming templates cannot be
scheduled: they run until drained.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zoneinfo
from typing import Optional, Sequence

from google.cloud import scheduler_v1
from google.protobuf import duration_pb2, field_mask_pb2

from flex_templates.launch import add_launch_arguments, build_request, description, launch_body
from flex_templates.templates import (
    call_google,
    STREAMING_INPUTS,
    TemplateError,
    check_job_name,
    dashed,
    load,
)
from pipelines.cli import fail

PROGRAM = "schedule"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,-]+$")
_SA = re.compile(
    r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9-]+\.iam\.gserviceaccount\.com$|"
    r"^[0-9]+-compute@developer\.gserviceaccount\.com$"
)
UPDATE_MASK = ["description", "schedule", "time_zone", "http_target", "retry_config",
               "attempt_deadline"]


def launch_uri(project: str, region: str) -> str:
    return (f"https://dataflow.googleapis.com/v1b3/projects/{project}/locations/{region}"
            "/flexTemplates:launch")


def build_job(args: argparse.Namespace) -> scheduler_v1.Job:
    """Validate everything, then the typed Scheduler job; raises TemplateError on a user mistake."""
    template = load(args.template)
    if template.streaming:
        raise TemplateError(
            f"template {template.name} is a streaming job: launch it once "
            "(flex_templates.launch) and redeploy with --update; do not schedule it"
        )
    if any(p.split("=", 1)[0] in STREAMING_INPUTS for p in args.param):
        raise TemplateError(
            f"a scheduled run must be a batch job: drop {', '.join(sorted(STREAMING_INPUTS))} "
            "and read --param events=... instead"
        )
    fields = args.cron.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise TemplateError(
            f'--cron must be 5 unix-cron fields such as "0 * * * *" (got {args.cron!r})'
        )
    try:
        zoneinfo.ZoneInfo(args.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise TemplateError(
            f"--time_zone must be a tz database name such as UTC or Europe/Paris "
            f"(got {args.time_zone!r})"
        ) from None
    if not _SA.fullmatch(args.scheduler_service_account):
        raise TemplateError(
            f"--scheduler_service_account must be a service account e-mail (name@domain) "
            f"(got {args.scheduler_service_account!r})"
        )
    job_id = check_job_name(args.name or f"{dashed(template.name)}-scheduled", "--name")
    request = build_request(args, job_name=args.job_name or job_id)
    location = args.scheduler_region or args.region
    if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]", location):
        raise TemplateError(
            f"--scheduler_region must be a region such as us-central1 (got {location!r})"
        )
    return scheduler_v1.Job(
        name=f"projects/{args.project}/locations/{location}/jobs/{job_id}",
        description=f"Launch Flex Template {template.name} as Dataflow job "
        f"{request.launch_parameter.job_name} ({request.launch_parameter.container_spec_gcs_path})",
        schedule=args.cron,
        time_zone=args.time_zone,
        http_target=scheduler_v1.HttpTarget(
            uri=launch_uri(args.project, args.region),
            http_method=scheduler_v1.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=json.dumps(launch_body(request), sort_keys=True).encode("utf-8"),
            oauth_token=scheduler_v1.OAuthToken(
                service_account_email=args.scheduler_service_account, scope=SCOPE
            ),
        ),
        # No retries: a refused launch means the previous run is still active (see above).
        retry_config=scheduler_v1.RetryConfig(retry_count=0),
        attempt_deadline=duration_pb2.Duration(seconds=180),
    )


def to_json(job: scheduler_v1.Job) -> str:
    """The job as the REST API spells it, except the HTTP body: the API carries it base64, here
    it is the decoded launch request (`bodyDecoded`), so what each tick sends can be read."""
    data = json.loads(scheduler_v1.Job.to_json(
        job, use_integers_for_enums=False, always_print_fields_with_no_presence=False
    ))
    target = data.get("httpTarget", {})
    if "body" in target:
        target["bodyDecoded"] = json.loads(job.http_target.body.decode("utf-8"))
        del target["body"]
    return json.dumps(data, indent=2, sort_keys=True)


def create_or_update(job: scheduler_v1.Job) -> str:
    from google.api_core import exceptions

    def upsert() -> str:
        client = scheduler_v1.CloudSchedulerClient()
        try:
            client.get_job(name=job.name)
        except exceptions.NotFound:
            client.create_job(parent=job.name.rsplit("/jobs/", 1)[0], job=job)
            return "created"
        client.update_job(job=job, update_mask=field_mask_pb2.FieldMask(paths=UPDATE_MASK))
        return "updated"

    return call_google(PROGRAM, f"Cloud Scheduler refused {job.name}", upsert)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=description(__doc__))
    add_launch_arguments(parser)
    parser.add_argument("--cron", required=True, help='unix-cron schedule, e.g. "0 * * * *"')
    parser.add_argument("--time_zone", default="UTC", help="tz database name the cron is read in (default: UTC)")
    parser.add_argument(
        "--scheduler_service_account",
        required=True,
        help="identity Cloud Scheduler calls Dataflow with (OAuth token); it needs the Dataflow "
             "developer role and to act as --worker_service_account",
    )
    parser.add_argument("--name", help="Cloud Scheduler job id (default: <template>-scheduled)")
    parser.add_argument("--scheduler_region", help="Cloud Scheduler location (default: --region)")
    args = parser.parse_args(argv)
    try:
        job = build_job(args)
    except TemplateError as err:
        fail(PROGRAM, str(err))
    if args.dry_run:
        print(to_json(job))
        return
    print(f"{create_or_update(job)}: {job.name} ({job.schedule} {job.time_zone})")


if __name__ == "__main__":
    main(sys.argv[1:])
