"""Command-line plumbing of the Beam entry points (backfill_features, streaming_features,
embed_texts): grouped `--help`, `--help_beam`, strict flags, and one line per failure.

Exit codes, the same on every entry point: 0 success; 2 a usage or spec error (one line, no
traceback); 1 a runtime failure (one line naming the step that failed and the cause; the full
traceback only with `--verbose`).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from typing import Iterable, NoReturn, Optional, Sequence

GROUP_ORDER = ("input", "stores", "behaviour")
BEAM_HINT = ("Beam's own options (--runner, --streaming, --project, --region, --temp_location, "
             "--flink_master, --prism_location, ...) are accepted too; --help_beam lists them all.")


def fail(program: str, message: str, code: int = 2) -> NoReturn:
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(code)


def _parser(program: str, description: str, option_classes: Iterable[type]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m pipelines.{program}", description=description, epilog=BEAM_HINT, add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    groups = {title: parser.add_argument_group(title) for title in GROUP_ORDER}
    for cls in option_classes:
        cls._add_argparse_args(groups[getattr(cls, "group", "behaviour")])
    groups["behaviour"].add_argument("--verbose", action="store_true",
                                     help="On a runtime failure, print the full traceback too.")
    help_group = parser.add_argument_group("help")
    help_group.add_argument("-h", "--help", action="store_true", help="Show this help and exit.")
    help_group.add_argument("--help_beam", action="store_true", help="List Beam's own pipeline options and exit.")
    for action in parser._actions:  # the default after each help text, where there is one
        if action.help and action.default not in (None, False, argparse.SUPPRESS) and "default" not in action.help:
            action.help += f" (default: {action.default})"
    return parser


def handle_help(program: str, description: Optional[str], option_classes: Sequence[type],
                argv: Sequence[str]) -> None:
    """-h/--help: our flags grouped (input, stores, behaviour) with help and defaults; --help_beam:
    every Beam option. Prints and exits 0; otherwise returns."""
    if not {"-h", "--help", "--help_beam"} & set(argv):
        return
    if "--help_beam" in argv:
        print(_beam_parser(option_classes).format_help())
    else:
        print(_parser(program, textwrap.dedent(description or "").strip(), option_classes).format_help())
    sys.exit(0)


def _beam_parser(option_classes: Sequence[type]) -> argparse.ArgumentParser:
    """Every option Beam knows (each direct PipelineOptions subclass, ours included), as Beam's
    own PipelineOptions.get_all_options builds it."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(prog="Beam pipeline options", allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    classes.update({str(cls): cls for cls in option_classes})
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def check_flags(option_classes: Sequence[type], argv: Sequence[str]) -> None:
    """An argument that is neither ours nor a Beam option is a usage error (Beam itself only logs
    it and runs on), with the closest known flag as a suggestion."""
    from pipelines.common import UsageError

    parser = _beam_parser(option_classes)
    _, unknown = parser.parse_known_args(list(argv))
    if not unknown:
        return
    known = [opt for action in parser._actions for opt in action.option_strings]
    for arg in unknown:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; --help lists ours, --help_beam Beam's"
            raise UsageError(f"unknown option {name}{hint}")
    raise UsageError(f"unexpected argument {unknown[0]!r} (flags take the form --name value)")


_STEP = re.compile(r"\[while running '([^']+)'\]")


def describe_failure(err: BaseException) -> str:
    """One line for a failed run: the step that failed (from Beam's "[while running 'step']") and
    the innermost cause."""
    chain: list[BaseException] = []
    cause: Optional[BaseException] = err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = "\n".join(str(e) for e in chain)
    steps = _STEP.findall(text)
    inner = chain[-1]
    # a portable runner's error carries the worker's traceback as text: its last "Error: ..." line
    lines = [line.strip() for line in _STEP.sub("", str(inner)).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    last = lines[-1] if lines else repr(inner)
    message = errors[-1] if errors else f"{type(inner).__name__}: {last}"
    if len(message) > 300:
        message = message[:297] + "..."
    return f"step '{steps[-1]}' failed: {message}" if steps else f"the run failed: {message}"
