"""Write the image's pip requirements from pyproject.toml, before the code is copied in.

The Dockerfile installs these in a layer of its own, so a code change does not reinstall the
dependencies. torch goes to a file apart: it comes from PyTorch's index (the CPU or the CUDA
build), everything else from PyPI. Standard library only: it runs before anything is installed.

    python image_requirements.py pyproject.toml --extra embeddings --out /tmp/req
    -> /tmp/req/torch.txt, /tmp/req/requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Optional, Sequence

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: Sequence[str]) -> tuple[list[str], list[str]]:
    """(torch requirements, other requirements) of the project and the given extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    found = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            # Not an error: the image builds before an optional feature's extra exists.
            print(f"note: {pyproject} has no [{extra}] extra; skipped", file=sys.stderr)
            continue
        found += optional[extra]
    own = _name(project["name"])
    torch: list[str] = []
    other: list[str] = []
    for requirement in found:
        name = _name(requirement)
        if name == own:  # an extra that pulls in another extra of this project
            continue
        (torch if name == "torch" else other).append(requirement)
    return torch, other


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional-dependency group")
    parser.add_argument("--out", type=Path, required=True, help="directory for the two files")
    args = parser.parse_args(argv)
    torch, other = requirements(args.pyproject, args.extra)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch.txt").write_text("".join(f"{r}\n" for r in torch), encoding="utf-8")
    (args.out / "requirements.txt").write_text("".join(f"{r}\n" for r in other), encoding="utf-8")


if __name__ == "__main__":
    main()
