"""`--help` of every Beam entry point run as a program answers before Beam is imported, with the
same text as the entry point's own help (every flag with its help, grouped)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import backfill_features, embed_texts, streaming_features
from pipelines.flags import ENTRY_POINTS

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"backfill_features": backfill_features, "streaming_features": streaming_features,
           "embed_texts": embed_texts}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_as_a_program_imports_no_beam_and_equals_the_entry_points_help(name, capsys):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", f"pipelines.{name}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "pipelines.flags" in imported
    assert not {m for m in imported if m.split(".")[0] in ("apache_beam", "pyarrow", "numpy", "torch")}
    with pytest.raises(SystemExit) as exit_info:
        MODULES[name].main(["--help"])  # the help run_main prints, after Beam is imported
    assert exit_info.value.code == 0
    assert out.stdout == capsys.readouterr().out
    assert "--feature_spec" in out.stdout and "Path to the feature spec YAML." in out.stdout


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_the_fast_help_declares_exactly_the_options_the_entry_point_reads(name):
    # each OPTIONS class is its flags class as PipelineOptions: the same declaration, in order
    assert tuple(cls.__mro__[1] for cls in MODULES[name].OPTIONS) == ENTRY_POINTS[name]


def test_help_beam_still_lists_beams_options():
    out = subprocess.run([sys.executable, "-m", "pipelines.backfill_features", "--help_beam"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--runner" in out.stdout and "--preaggregate" in out.stdout


@pytest.mark.parametrize("name", ["get_features", "check_spec", "training_set", "feast_repo", "check_consistency"])
def test_the_other_tools_answer_help_without_beam_and_document_every_flag(name):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", f"pipelines.{name}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("apache_beam", "feast", "torch")}
    options = out.stdout[out.stdout.index("options:"):]
    entries = re.split(r"\n(?=  -)", options)[1:]  # one per flag: its names, then its help
    undocumented = [e.split()[0] for e in entries if not re.split(r"\s{2,}|\n", e.strip(), maxsplit=1)[1:]]
    assert entries and undocumented == [], undocumented
