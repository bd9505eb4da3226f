"""python -m vp_jax.tools.summary: train.py's --config flags (overrides included), the same one-line errors."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

from vp_jax.config import load_config_file, model_config
from vp_jax.tools.summary import parameter_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "vp_jax.tools.summary", *args], cwd=ROOT, env=env, capture_output=True,
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
