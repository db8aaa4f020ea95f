"""`make demo`: the base package only, and a run that shows early, on-time and late panes and
counts that reconcile."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from pipelines.common import prism_cached

# What the extras bring; the demo must run without any of it.
NOT_BASE = ["torch", "transformers", "sentence_transformers", "feast", "pytest", "hypothesis", "google.cloud.scheduler_v1"]


def test_make_demo_installs_the_base_package_only():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: \$\(BASE\)$", makefile, re.MULTILINE)
    base_rule = makefile[makefile.index("$(BASE): pyproject.toml"):].split("\n\n")[0]
    assert "pip install --quiet -e .\n" in base_rule + "\n" and "[" not in base_rule.split("-e", 1)[1]
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    extras = ("torch", "transformers", "sentence-transformers", "feast", "pytest", "hypothesis",
              "google-cloud-scheduler")
    assert not [dep for dep in base if dep.startswith(extras)]


@pytest.mark.slow
def test_demo_runs_without_the_extras_and_reconciles(tmp_path):
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in NOT_BASE)  # importing them fails
    code = f"import sys; {blocked}; from pipelines import demo; demo.main(['--out', {str(tmp_path / 'demo')!r}])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    events_in = int(re.search(r"Events in: +([\d,]+)", out).group(1).replace(",", ""))
    used = int(re.search(r"used: +([\d,]+)", out).group(1).replace(",", ""))
    refused = int(re.search(r"refused: +([\d,]+)", out).group(1).replace(",", ""))
    too_late = int(re.search(r"too late: +([\d,]+) for every view", out).group(1).replace(",", ""))
    expected = 6000 if prism_cached() else 1500  # Prism plays more events in the same time
    assert events_in == expected == used + refused + too_late and refused == expected // 500
    early, on_time, late = (int(n.replace(",", "")) for n in
                            re.search(r"Panes user_5m: +early ([\d,]+), on time ([\d,]+), late ([\d,]+)", out).groups())
    assert early > 0 and on_time > 0 and late > 0
    assert re.search(r"3/3 done in (\d+)s", out)
