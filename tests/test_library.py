"""The library API: README's "Use in your own pipeline" runs as written, `transforms` exports the
public names with docstrings, and a serving import (`FeatureReader`) loads no Beam."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import transforms
from conftest import EXAMPLE_SPEC
from transforms import FeatureReader, load_spec
from transforms.io.sinks import read_dead_letters

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"load_spec", "ParseEvents", "ComputeFeatures", "FeaturePipeline", "WriteOnline", "WriteOffline",
          "WriteDeadLetters", "FeatureReader", "read_offline", "WriteFeatures", "TiledFeaturePipeline"}


def readme_examples() -> list[str]:
    """The python blocks of the README section "Use in your own pipeline", in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Use in your own pipeline\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    blocks = readme_examples()
    assert len(blocks) == 2
    shutil.copy(EXAMPLE_SPEC, tmp_path / "shop.yaml")
    out = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # what the README's comments say it prints
    printed = re.findall(r"^# (.*)$", blocks[0], flags=re.M)[-1:] + re.findall(r"# (\d+):", blocks[0])
    assert out.stdout.splitlines() == printed, out.stdout
    spec = load_spec(str(tmp_path / "shop.yaml"))
    with FeatureReader(spec, f"sqlite:///{tmp_path}/pieces.db") as pieces, \
            FeatureReader(spec, f"sqlite:///{tmp_path}/online.db") as whole:
        assert pieces.get("user_5m", ["u1"])[0].features == whole.get("user_5m", ["u1"])[0].features
    for directory in ("dead_letters", "pieces_dead_letters"):
        letters = read_dead_letters(str(tmp_path / directory))
        assert [(d["reason"], d["stage"]) for d in letters] == [("bad_timestamp", "parse")]


def test_transforms_exports_the_public_api_with_docstrings():
    assert PUBLIC <= set(transforms.__all__) <= set(dir(transforms))
    for name in PUBLIC | {"OnlineFeatures"}:
        value = getattr(transforms, name)
        assert value.__doc__ and value.__doc__.strip(), name
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        transforms.Nope  # noqa: B018


def test_a_serving_process_imports_no_beam():
    code = ("import sys; from transforms import FeatureReader, load_spec; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'apache_beam', 'pyarrow', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr
