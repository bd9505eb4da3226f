"""A battery of bad inputs through the real command lines.

Every case runs ``train.py``, ``eval.py`` or ``python -m vp_jax.data.prepare`` in a subprocess and
expects: exit status 2, exactly ONE line ``error: ...`` on stderr naming the file or field (the
``needles``) and what was expected, no Python traceback, and no partial output (no workdir, no
cache folder that looks complete, no temporary folders, no ``eval/`` folder).

The reader-level behaviour of the same data problems is tested in ``test_data_lab.py``; here the
point is what a user sees.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from data_support import assert_one_line_error, flip_a_byte, make_pushbot, rewrite_state_with_one_value_changed
from PIL import Image

from vp_jax.config import run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = dict(train=8, validate=4, test=4)
SEQ = "pushbot_{split}_000/0"  # the first sequence folder of a split in the pushbot layout


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root (``train.py ...``, ``-m vp_jax.data.prepare ...``)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_nothing_left(*paths: str) -> None:
    """None of ``paths`` exists, nor a temporary sibling ``.<name>.tmp-*`` of one."""
    for path in paths:
        assert not os.path.exists(path), f"left behind: {path}"
        parent, name = os.path.split(path.rstrip("/"))
        leftovers = glob.glob(os.path.join(parent, f".{name}.tmp-*"))
        assert not leftovers, f"left behind: {leftovers}"


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small set in the lab's folder layout (8/4/4 sequences of 30 frames)."""
    return make_pushbot(str(tmp_path_factory.mktemp("bad_inputs") / "pristine"), counts=COUNTS)


@pytest.fixture
def lab(pristine, tmp_path):
    """A private copy of the set to damage."""
    return shutil.copytree(pristine, str(tmp_path / "lab"))


def seq_dir(root: str, split: str = "train") -> str:
    return os.path.join(root, split, SEQ.format(split=split))


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def _truncate(path: str) -> str:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    return path


def _image(path: str, array) -> str:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


# Each damage function breaks the copy at ``root`` and returns (needles...) for the message.
DATA_CASES = {
    "missing split": lambda root: (shutil.rmtree(os.path.join(root, "train")),
                                   (os.path.join(root, "train"), "split folder not found")),
    "empty split folder": lambda root: (shutil.rmtree(os.path.join(root, "train")), os.mkdir(os.path.join(root, "train")),
                                        (os.path.join(root, "train"), "no sequences found")),
    "corrupt PNG": lambda root: (_truncate(os.path.join(seq_dir(root), "3.png")),
                                 (os.path.join(seq_dir(root), "3.png"), "not a readable PNG")),
    "wrong image size": lambda root: (_image(os.path.join(seq_dir(root), "4.png"), np.zeros((32, 32, 3))),
                                      (os.path.join(seq_dir(root), "4.png"), "expected 64x64 pixels, got 32x32")),
    "wrong channels": lambda root: (_image(os.path.join(seq_dir(root), "5.png"), np.zeros((64, 64))),
                                    (os.path.join(seq_dir(root), "5.png"), "expected 3 channels (RGB), got 1")),
    "CSV rows": lambda root: (_write(os.path.join(seq_dir(root), "actions.csv"), "0,0,0,0\n" * 29),
                              (os.path.join(seq_dir(root), "actions.csv"), "expected 30 rows x 4 columns, got 29 rows")),
    "CSV columns": lambda root: (_write(os.path.join(seq_dir(root), "endeffector_positions.csv"),
                                        "0,0,0\n" * 2 + "0,0\n" + "0,0,0\n" * 27),
                                 (os.path.join(seq_dir(root), "endeffector_positions.csv"),
                                  "line 3: expected 3 comma-separated numbers, got 2")),
    "CSV NaN": lambda root: (_write(os.path.join(seq_dir(root), "actions.csv"), "0,0,0,0\n" * 6 + "0,nan,0,0\n" + "0,0,0,0\n" * 23),
                             (os.path.join(seq_dir(root), "actions.csv"), "line 7: 'nan' is not a finite number")),
    "too few frames": lambda root: (os.remove(os.path.join(seq_dir(root), "29.png")),
                                    (os.path.join(seq_dir(root), "29.png"), "only 29 frames, 30 needed")),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_through_prepare(lab, tmp_path, case):
    *_, needles = DATA_CASES[case](lab)
    out = str(tmp_path / "cache" / "lab-train")
    proc = cli("-m", "vp_jax.data.prepare", "--source", "lab", "--root", lab, "--split", "train", "--out", out)
    assert_one_line_error(proc, *needles)
    assert_nothing_left(out)


def tiny(workdir: str, *extra: str) -> list[str]:
    return ["train.py", "--config", "configs/tiny.py", "--workdir", workdir, *extra]


def test_bad_data_through_train_leaves_no_workdir_and_no_cache(lab, tmp_path):
    """The training split is fine (its cache is built), the validation split has a corrupt PNG."""
    png = _truncate(os.path.join(seq_dir(lab, "validate"), "7.png"))
    workdir = str(tmp_path / "run")
    proc = cli(*tiny(workdir, "--config.data.source=lab", f"--config.data.root={lab}"))
    assert_one_line_error(proc, png, "not a readable PNG")
    assert_nothing_left(workdir, os.path.join(lab, ".cache", "validate"))
    assert os.path.isfile(os.path.join(lab, ".cache", "train", "manifest.json"))  # good split: kept for next time


def test_missing_data_root_through_train(tmp_path):
    workdir, root = str(tmp_path / "run"), str(tmp_path / "no_such_data")
    proc = cli(*tiny(workdir, "--config.data.source=lab", f"--config.data.root={root}"))
    assert_one_line_error(proc, root, "data root not found")
    assert_nothing_left(workdir, root)


def test_sequences_shorter_than_seq_len(pristine, tmp_path):
    workdir = str(tmp_path / "run")
    lab = shutil.copytree(pristine, str(tmp_path / "lab"))
    proc = cli(*tiny(workdir, "--config.data.source=lab", f"--config.data.root={lab}", "--config.data.seq_len=40"))
    assert_one_line_error(proc, "sequences have 30 frames", "config.data.seq_len = 40")
    assert_nothing_left(workdir)


# ----------------------------------------------------------------------------- configs and arguments

CONFIG_CASES = {
    "unknown field": (["--config.train.lrr=0.1"], ["--config.train.lrr=0.1", "config.train has no field 'lrr'",
                                                   "did you mean config.train.lr?"]),
    "unknown group": (["--config.optimizer.lr=0.1"], ["config has no field 'optimizer'"]),
    "wrong type": (["--config.train.epochs=2.5"], ["--config.train.epochs=2.5", "invalid literal for int()"]),
    "n_past + n_future > seq_len": (["--config.n_future=30"], ["config.n_future = 30", "n_past + n_future <= data.seq_len (8)"]),
    "unknown KL schedule": (["--config.train.kl.schedule=linear"], ["config.train.kl.schedule = 'linear'", "one of"]),
    "unknown lr schedule": (["--config.train.lr_schedule=step"], ["config.train.lr_schedule = 'step'", "one of"]),
    "non-positive lr": (["--config.train.lr=0"], ["config.train.lr = 0.0", "a positive number"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config(tmp_path, case):
    overrides, needles = CONFIG_CASES[case]
    workdir = str(tmp_path / "run")
    proc = cli(*tiny(workdir, f"--config.data.root={tmp_path / 'data'}", *overrides))
    assert_one_line_error(proc, *needles)
    assert_nothing_left(workdir, str(tmp_path / "data"))


def test_config_file_missing_or_broken(tmp_path):
    workdir = str(tmp_path / "run")
    proc = cli("train.py", "--config", "configs/no_such.py", "--workdir", workdir)
    assert_one_line_error(proc, "--config configs/no_such.py: file not found")
    broken = _write(str(tmp_path / "broken.py"), "def get_config(:\n")
    proc = cli("train.py", "--config", broken, "--workdir", workdir)
    assert_one_line_error(proc, f"--config {broken}: cannot be loaded (SyntaxError")
    assert_nothing_left(workdir)


ARGUMENT_CASES = {
    "train: unknown flag": (["train.py", "--config", "configs/tiny.py", "--workdir", "W", "--bogus"],
                            ["Unknown command line flag 'bogus'"]),
    "train: missing --workdir": (["train.py", "--config", "configs/tiny.py"], ["--workdir"]),
    "train: stray argument": (["train.py", "--config", "configs/tiny.py", "--workdir", "W", "stray"],
                              ["unexpected argument 'stray'"]),
    "train: override without --config": (["train.py", "--workdir", "W", "--config.train.epochs=3"],
                                         ["overrides need --config FILE"]),
    "train: workdir is a file": (["train.py", "--config", "configs/tiny.py", "--workdir", "FILE"],
                                 ["FILE", "exists and is not a folder"]),
    "eval: missing --workdir": (["eval.py"], ["--workdir"]),
    "eval: unknown split": (["eval.py", "--workdir", "W", "--split", "valid"], ["--split=valid", "train|validate|test"]),
    "eval: not a workdir": (["eval.py", "--workdir", "W"], ["W", "no such workdir"]),
}


@pytest.mark.parametrize("case", sorted(ARGUMENT_CASES))
def test_bad_arguments(tmp_path, case):
    args, needles = ARGUMENT_CASES[case]
    workdir, file = str(tmp_path / "W"), _write(str(tmp_path / "FILE"), "not a folder")
    subst = {"W": workdir, "FILE": file}
    proc = cli(*[subst.get(a, a) for a in args])
    assert_one_line_error(proc, *[subst.get(n, n) for n in needles])
    assert_nothing_left(workdir)
    assert open(file).read() == "not a folder"


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpointed(pristine, tmp_path_factory):
    """A workdir as train.py leaves it after one epoch of the tiny model (made in-process: one
    initialised state saved at step 3), on the lab-layout set."""
    import jax

    from vp_jax.config import load_config_file, model_config, save_config_json
    from vp_jax.store.checkpoints import CheckpointStore
    from vp_jax.store.state import create_train_state

    base = tmp_path_factory.mktemp("bad_inputs_ckpt")
    workdir = str(base / "run")
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    # Caches away from the pristine set, which other tests copy.
    config.data.source, config.data.root, config.data.cache_dir = "lab", pristine, str(base / "cache")
    os.makedirs(workdir)
    save_config_json(config, os.path.join(workdir, "config.json"))
    state = create_train_state(run_config(config), jax.random.key(0))
    import dataclasses

    model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(model_config(config)).items()}
    meta = dict(epoch=1, iteration=0, iterator=dict(epoch=0, position=3), epoch_sums=None, seed=1, val_psnr=None,
                row=None, model=model)
    store = CheckpointStore(workdir, keep=2)
    store.save(3, state, meta)
    store.close()
    return workdir


@pytest.fixture
def ckpt_copy(checkpointed, tmp_path):
    workdir = shutil.copytree(checkpointed, str(tmp_path / "run"))
    shutil.copy(os.path.join(workdir, "config.json"), str(tmp_path / "config.json.orig"))
    return workdir


def _step_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints", "3")


CHECKPOINT_CASES = {
    # name: (damage(workdir), eval.py --checkpoint, needles)
    "no such step": (lambda wd: None, "999", ["no checkpoint at step 999", "have [3]"]),
    "not a checkpoint name": (lambda wd: None, "last", ["--checkpoint 'last'", "'best', 'latest' or a step"]),
    "partly deleted": (lambda wd: shutil.rmtree(os.path.join(_step_dir(wd), "state", "ocdbt.process_0")),
                       "latest", ["checkpoints/3: damaged checkpoint", "file(s) missing"]),
    "truncated": (lambda wd: _truncate(os.path.join(_step_dir(wd), "state", "_METADATA")),
                  "latest", ["checkpoints/3: damaged checkpoint"]),
    # Orbax's read or the checksum fails, depending on where the byte lands in this save.
    "changed bytes": (lambda wd: flip_a_byte(_step_dir(wd)), "3",
                      ["checkpoints/3: damaged checkpoint"]),
    # A well-formed state of other values: its files are not those the manifest lists.
    "changed values": (lambda wd: rewrite_state_with_one_value_changed(_step_dir(wd)), "3",
                       ["checkpoints/3: damaged checkpoint", "file(s) missing"]),
    "other model size": (lambda wd: _edit_json(os.path.join(wd, "config.json"), "model", "g_dim", 16),
                         "best", ["checkpoints/3: written by another model", "model.g_dim: checkpoint has 8, config has 16"]),
    "damaged config.json": (lambda wd: _write(os.path.join(wd, "config.json"), '{"model": '), "best",
                            ["config.json: not a readable JSON config"]),
}


def _edit_json(path: str, group: str, key: str, value) -> None:
    data = json.load(open(path))
    data[group][key] = value
    json.dump(data, open(path, "w"))


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_through_eval(ckpt_copy, case):
    """Each damage is refused in one line naming it, before anything is written (in this process;
    the command line's one-line output: test_damaged_checkpoint_through_the_eval_command)."""
    from vp_jax.errors import VPError
    from vp_jax.evaluation.evaluate import EvalOptions, evaluate_workdir

    damage, checkpoint, needles = CHECKPOINT_CASES[case]
    damage(ckpt_copy)
    with pytest.raises(VPError) as err:
        evaluate_workdir(ckpt_copy, EvalOptions(checkpoint=checkpoint))
    assert "\n" not in str(err.value) and all(n in str(err.value) for n in needles), str(err.value)
    assert_nothing_left(os.path.join(ckpt_copy, "eval"))


def test_damaged_checkpoint_through_the_eval_command(ckpt_copy):
    damage, checkpoint, needles = CHECKPOINT_CASES["partly deleted"]
    damage(ckpt_copy)
    proc = cli("eval.py", "--workdir", ckpt_copy, "--checkpoint", checkpoint)
    assert_one_line_error(proc, *needles)
    assert_nothing_left(os.path.join(ckpt_copy, "eval"))


def train_resume(workdir: str, *extra: str) -> list[str]:
    """The train.py command that continues ``checkpointed`` (same config as its config.json)."""
    config = json.load(open(os.path.join(os.path.dirname(workdir), "config.json.orig")))
    data = config["data"]
    return tiny(workdir, "--config.data.source=lab", f"--config.data.root={data['root']}",
                f"--config.data.cache_dir={data['cache_dir']}", *extra)


def test_resume_of_another_model_is_refused_by_the_checkpoint(ckpt_copy):
    """config.json gone (nothing to compare the config with): the checkpoint itself names the field,
    and the workdir is left as it was (no config.json written)."""
    os.remove(os.path.join(ckpt_copy, "config.json"))
    before = sorted(set(os.listdir(ckpt_copy)) | {".lock", ".lock.pid"})  # (train.py's lock files stay; harmless)
    proc = cli(*train_resume(ckpt_copy, "--config.model.z_dim=8"))
    assert_one_line_error(proc, "checkpoints/3: written by another model", "model.z_dim: checkpoint has 4, config has 8")
    assert sorted(os.listdir(ckpt_copy)) == before


def test_resume_with_every_checkpoint_damaged_is_refused(ckpt_copy):
    shutil.rmtree(os.path.join(_step_dir(ckpt_copy), "state"))
    proc = cli(*train_resume(ckpt_copy))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 2 and lines[0].startswith("warning: ") and "warning: warning" not in lines[0] and "damaged checkpoint" in lines[0], proc.stderr
    assert lines[1].startswith("error: ") and "all 1 checkpoints are damaged" in lines[1], proc.stderr
    assert os.path.isdir(os.path.join(ckpt_copy, "checkpoints", "damaged", "3"))
