"""Helpers shared by tests/test_data_*.py (not a test module): tiny pushbot sets and CLI runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import ml_collections

from vp_jax.data import pushbot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = dict(train=10, validate=3, test=3)
SEED = 7


def make_pushbot(path: str, seed: int = SEED, counts: dict = COUNTS) -> str:
    """A tiny pushbot set (16 sequences x 30 frames, well under a second)."""
    pushbot.generate(path, seed=seed, workers=1, **counts)
    return path


def copy_set(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def data_config(root: str, source: str = "pushbot", cache_dir: str = "", **overrides) -> ml_collections.ConfigDict:
    """A ``config.data`` as in configs/lab_bair.py, pointing at ``root``."""
    cfg = ml_collections.ConfigDict(
        dict(
            source=source,
            root=root,
            camera="image_aux1",
            cache_dir=cache_dir,
            seq_len=30,
            random_offset=False,
            normalize_condition=False,
            skip_bad=False,
            tfds_validate=256,
            pushbot=dict(seed=SEED, **COUNTS),
        )
    )
    cfg.update(overrides)
    return cfg


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root; returns the finished process."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A CLI failure: exit status 2, one ``error:`` line on stderr naming each needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
