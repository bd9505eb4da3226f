"""python -m vp_jax.summary: train.py's --config flags (overrides included), the same one-line errors."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

from vp_jax.config import load_config_file, model_config
from vp_jax.summary import parameter_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "vp_jax.summary", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_an_override_reaches_the_counted_model():
    proc = _run("--config", "configs/tiny.py", "--config.model.z_dim=8", "--config.model.learned_prior=False")
    assert proc.returncode == 0, proc.stderr
    total = int(re.search(r"^total\s+([\d,]+)", proc.stdout, re.M).group(1).replace(",", ""))
    cfg = dataclasses.replace(model_config(load_config_file(os.path.join(ROOT, "configs", "tiny.py"))),
                              z_dim=8, learned_prior=False)
    assert total == parameter_counts(cfg)["total"]
    assert total != parameter_counts(dataclasses.replace(cfg, z_dim=4))["total"]
    assert "fixed N(0, I)" in proc.stdout


def test_a_misspelt_field_is_one_line():
    proc = _run("--config", "configs/tiny.py", "--config.model.zdim=8")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: --config.model.zdim=8: config.model has no field 'zdim' (did you mean config.model.z_dim?)"]


def test_design_doc_lists_every_module():
    """docs/design.md's module map names each module of the package, and no module that is gone."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "design.md")).read()
    layout = text.split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"^\s+(\w+\.py)\b", layout, flags=re.M))
    on_disk = {name for _, _, names in os.walk(os.path.join(root, "vp_jax"))
               for name in names if name.endswith(".py") and name != "__init__.py"}
    assert listed == on_disk, f"missing from docs/design.md: {sorted(on_disk - listed)}; gone: {sorted(listed - on_disk)}"
