"""Helpers shared by the tests (not a test module): tiny pushbot sets, CLI runs, damaged checkpoints."""

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
    pushbot.generate(path, pushbot.Spec(**counts, seed=seed), workers=1)
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


# ----------------------------------------------------------------------------- damaged checkpoints
# A step folder as CheckpointStore writes it: <step>/meta (JSON, with the state's SHA-256) and
# <step>/state (orbax OCDBT: zstd-compressed chunks in state/ocdbt.process_0/d/).


def largest_array_file(step_dir: str) -> str:
    d = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    return max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)


def flip_a_byte(step_dir: str) -> None:
    """Change one byte in the middle of the largest data file. Where it lands (a compressed chunk,
    a B-tree node) differs between saves, so the read fails either in orbax or on the checksum."""
    path = largest_array_file(step_dir)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x5A
    open(path, "wb").write(bytes(data))


def rewrite_state_with_one_value_changed(step_dir: str) -> None:
    """Replace the state with a well-formed orbax checkpoint of the same tree in which the first
    element of the largest array is larger by 1: it reads back fine, only the checksum notices."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    state = os.path.abspath(os.path.join(step_dir, "state"))
    checkpointer = ocp.StandardCheckpointer()
    leaves, treedef = jax.tree_util.tree_flatten(checkpointer.restore(state))
    i = max(range(len(leaves)), key=lambda k: np.size(leaves[k]))
    leaves[i] = np.array(leaves[i])
    leaves[i].flat[0] += 1
    checkpointer.save(state + ".new", jax.tree_util.tree_unflatten(treedef, leaves))
    checkpointer.wait_until_finished()
    checkpointer.close()
    shutil.rmtree(state)
    os.rename(state + ".new", state)
