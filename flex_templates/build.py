"""Build and push a template's image, then write its Flex Template spec file to GCS.

    python -m flex_templates.build --template streaming_features \
        --image us-central1-docker.pkg.dev/P/REPO/streaming-features:TAG \
        --gcs_path gs://B/templates [--target cpu|gpu] [--builder docker|cloud-build] [--dry_run]

--builder docker runs `docker build --target` and `docker push` here; cloud-build runs the same
build on Cloud Build (flex_templates/cloudbuild.yaml), for machines without a Docker engine.
Then `gcloud dataflow flex-template build` writes GCS_PATH (or GCS_PATH/<template>.json) with
the image and metadata.json. --dry_run prints the commands, shell-quoted, and runs nothing.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from typing import Optional, Sequence

from flex_templates.launch import IMAGE
from flex_templates.templates import NAMES, REPO, TemplateError, load, spec_gcs_path
from pipelines.cli import fail

PROGRAM = "build"
TARGETS = ("cpu", "gpu")


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The commands to run from the repository root; raises TemplateError on a user mistake."""
    template = load(args.template)
    if not IMAGE.fullmatch(args.image):
        raise TemplateError(
            f"--image must be an image reference such as "
            f"us-central1-docker.pkg.dev/P/REPO/NAME:TAG (got {args.image!r})"
        )
    gcs_path = spec_gcs_path(template.name, args.gcs_path)
    metadata = template.metadata_file.relative_to(REPO).as_posix()
    project = ["--project", args.project] if args.project else []
    if args.builder == "docker":
        image = [
            [
                "docker",
                "build",
                "--target",
                args.target,
                "--build-arg",
                f"TEMPLATE={template.name}",
                "--tag",
                args.image,
                "--file",
                "Dockerfile",
                ".",
            ],
            ["docker", "push", args.image],
        ]
    else:
        image = [
            [
                "gcloud",
                "builds",
                "submit",
                ".",
                "--config",
                "flex_templates/cloudbuild.yaml",
                "--substitutions",
                f"_IMAGE={args.image},_TARGET={args.target},_TEMPLATE={template.name}",
                *project,
            ]
        ]
    return image + [
        [
            "gcloud",
            "dataflow",
            "flex-template",
            "build",
            gcs_path,
            "--image",
            args.image,
            "--sdk-language",
            "PYTHON",
            "--metadata-file",
            metadata,
            *project,
        ]
    ]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--template", required=True, choices=NAMES)
    parser.add_argument(
        "--image", required=True, help="where to push, e.g. REGION-docker.pkg.dev/P/REPO/NAME:TAG"
    )
    parser.add_argument(
        "--gcs_path",
        required=True,
        help="gs://.../<file>.json, or a gs:// base for <template>.json",
    )
    parser.add_argument(
        "--target", choices=TARGETS, default="cpu", help="Dockerfile target (gpu: CUDA + torch)"
    )
    parser.add_argument("--builder", choices=("docker", "cloud-build"), default="docker")
    parser.add_argument(
        "--project", help="Google Cloud project for gcloud (default: gcloud's configured one)"
    )
    parser.add_argument("--dry_run", action="store_true", help="print the commands; run nothing")
    args = parser.parse_args(argv)
    try:
        todo = commands(args)
    except TemplateError as err:
        fail(PROGRAM, str(err))
    if args.dry_run:
        print(shlex.join(["cd", str(REPO)]))
        for command in todo:
            print(shlex.join(command))
        return
    for command in todo:
        if shutil.which(command[0]) is None:
            fail(
                PROGRAM,
                f"{command[0]} is not installed here (try --builder cloud-build, or --dry_run)",
                code=1,
            )
        print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
        code = subprocess.run(command, cwd=REPO, check=False).returncode
        if code:
            fail(PROGRAM, f"{shlex.join(command[:4])} ... exited with code {code}", code=1)
    print(
        f"template {args.template}: {spec_gcs_path(args.template, args.gcs_path)} -> {args.image}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
