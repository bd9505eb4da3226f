"""Reliability of train.py: kill anywhere and resume to the same bits, Ctrl-C, damaged checkpoints,
one writer per workdir, non-finite losses. (Memory over many epochs: benchmarks/train_memory.py.)

Every run is the real ``train.py`` in a subprocess on the tiny config (8 epochs of 4 steps). One
uninterrupted run is the reference; the others are compared with it
bit for bit. They share one JAX persistent compilation cache (module-scoped), so only the first
run of a program compiles. Where the signals land is drawn from a seeded generator
(``VP_TEST_SEED``, default 6; set it to try other moments). The comparisons assume the source
tree does not change while the module runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from data_support import flip_a_byte, largest_array_file, rewrite_state_with_one_value_changed

from vp_jax.config import run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 8 epochs of 4 steps: short enough to run several times, long enough for a kill in a random
# later epoch. 16 training sequences / batch 4 = 4 batches per data epoch.
EPOCHS, EPOCH_SIZE = 8, 4
IGNORED = ["seconds", "rss_mb"]  # wall clock and memory: the only columns allowed to differ


def _env(cache: str) -> dict:
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


class Train:
    """``train.py ARGS`` started in the background, stdout and stderr going to files."""

    def __init__(self, ctx, name: str, *args: str):
        self.out_path = os.path.join(ctx["base"], f"{name}.out")
        self.err_path = os.path.join(ctx["base"], f"{name}.err")
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "train.py"), *args],
                cwd=ROOT, env=_env(ctx["cache"]), stdout=out, stderr=err,
            )

    @property
    def stdout(self) -> str:
        with open(self.out_path) as f:
            return f.read()

    @property
    def stderr(self) -> str:
        with open(self.err_path) as f:
            return f.read()

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Block until ``text`` appears on stdout; fail if the process ends first."""
        deadline = time.time() + timeout
        while text not in self.stdout:
            if self.proc.poll() is not None and text not in self.stdout:
                raise AssertionError(f"exited ({self.proc.returncode}) before {text!r}:\n{self.stderr[-3000:]}")
            if time.time() > deadline:
                raise AssertionError(f"no {text!r} after {timeout} s")
            time.sleep(0.05)

    def kill_after(self, delay: float, sig=signal.SIGKILL) -> int:
        """Send ``sig`` after ``delay`` seconds (the process must still be running); return its exit code."""
        time.sleep(delay)
        assert self.proc.poll() is None, f"finished before the signal:\n{self.stdout}"
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=300)

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout=timeout)


def run_train(ctx, name: str, *args: str, check: bool = True) -> Train:
    t = Train(ctx, name, *args)
    rc = t.wait()
    if check and rc != 0:
        raise AssertionError(f"train.py {args} failed ({rc}):\n{t.stderr[-3000:]}")
    return t


def train_args(ctx, workdir: str, *extra: str) -> list[str]:
    return [
        "--config", "configs/tiny.py", "--workdir", workdir, f"--config.data.root={ctx['data']}",
        f"--config.niter={EPOCHS}", f"--config.train.epoch_size={EPOCH_SIZE}", *extra,  # niter: the lab's name
    ]


def saved_steps(workdir: str) -> list[int]:
    """The steps saved in ``workdir/checkpoints/<step>/`` (the last two and the best)."""
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def best_step(workdir: str) -> int:
    """The saved step with the highest val_psnr metric (read from orbax's metrics files)."""
    scores = {}
    for step in saved_steps(workdir):
        path = os.path.join(workdir, "checkpoints", str(step), "metrics", "metrics")
        if os.path.exists(path):
            scores[step] = json.load(open(path))["val_psnr"]
    return max(scores, key=scores.get)


def checkpoint_arrays(workdir: str, step: int | None = None) -> dict:
    """The saved TrainState of a checkpoint as a flat {path: numpy array} (read by orbax, no model code)."""
    import jax
    import orbax.checkpoint as ocp

    step = saved_steps(workdir)[-1] if step is None else step
    tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def checkpoint_meta(workdir: str, step: int) -> dict:
    with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
        return json.load(f)


def metrics(workdir: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(workdir, "metrics.csv"))


def assert_same_run(workdir: str, reference: str) -> None:
    """metrics.csv (all columns but wall clock and memory), the final checkpoint's every array
    (params, BatchNorm statistics, optimiser state, step), the saved steps and the best: bit-identical."""
    pd.testing.assert_frame_equal(metrics(workdir).drop(columns=IGNORED), metrics(reference).drop(columns=IGNORED),
                                  check_exact=True)
    assert saved_steps(workdir)[-1] == saved_steps(reference)[-1] == EPOCHS * EPOCH_SIZE
    ours, theirs = checkpoint_arrays(workdir), checkpoint_arrays(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
        assert ours[key].tobytes() == theirs[key].tobytes(), f"{key} differs"
    assert saved_steps(workdir) == saved_steps(reference) and best_step(workdir) == best_step(reference)
    for step in saved_steps(reference):
        assert checkpoint_meta(workdir, step)["state_sha256"] == checkpoint_meta(reference, step)["state_sha256"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    seed = int(os.environ.get("VP_TEST_SEED", "6"))  # where the signals land; set it to explore others
    return dict(base=str(base), data=str(base / "data"), cache=str(base / "jax_cache"), rng=np.random.default_rng(seed))


@pytest.fixture(scope="module")
def reference(ctx):
    """An uninterrupted run (it also generates the data and fills the compilation cache)."""
    workdir = os.path.join(ctx["base"], "reference")
    run_train(ctx, "reference", *train_args(ctx, workdir))
    assert metrics(workdir)["step"].tolist() == [EPOCH_SIZE * (e + 1) for e in range(EPOCHS)]
    return workdir


@pytest.fixture(scope="module")
def interrupted(ctx, reference):
    """The same run, (1) stopped with Ctrl-C mid-epoch while a second train.py tries the workdir,
    (2) resumed and killed with SIGKILL at a random moment, (3) resumed to the
    end."""
    rng = ctx["rng"]
    workdir = os.path.join(ctx["base"], "interrupted")
    lock = os.path.join(workdir, ".lock")
    first = Train(ctx, "interrupted-1", *train_args(ctx, workdir))
    deadline = time.time() + 120
    while not (os.path.exists(lock + ".pid") and open(lock + ".pid").read() == str(first.proc.pid)):
        assert time.time() < deadline and first.proc.poll() is None, first.stderr
        time.sleep(0.05)
    second = run_train(ctx, "second-writer", *train_args(ctx, workdir), check=False)
    first.wait_for("epoch 2:")
    # Right after an epoch's line the next epoch's steps start: Ctrl-C lands in its first steps.
    ctrl_c = first.kill_after(rng.uniform(0.0, 0.05), signal.SIGINT)
    killed = Train(ctx, "interrupted-2", *train_args(ctx, workdir))
    # Somewhere in a random later epoch: its steps, validation, GIF and plot writing or saving.
    killed.wait_for(f"epoch {int(rng.integers(3, EPOCHS - 1))}:")
    sigkill = killed.kill_after(rng.uniform(0.0, 0.6))
    stale = open(lock + ".pid").read()
    last = run_train(ctx, "interrupted-3", *train_args(ctx, workdir))
    return dict(workdir=workdir, first=first, second=second, killed=killed, last=last, ctrl_c=ctrl_c,
                sigkill=sigkill, stale_pid=stale)


# ----------------------------------------------------------------------------- Ctrl-C / kill / lock


def test_second_writer_is_refused(interrupted):
    proc = interrupted["second"]
    assert proc.proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ".lock" in lines[0] and "another train.py" in lines[0] and str(interrupted["first"].proc.pid) in lines[0]


def test_ctrl_c_mid_epoch_saves_and_exits(interrupted):
    first = interrupted["first"]
    assert interrupted["ctrl_c"] == 130 and first.stderr.strip().splitlines()[-1] == "interrupted"
    saved = [ln for ln in first.stdout.splitlines() if ln.startswith("interrupted: saved step")]
    assert len(saved) == 1, first.stdout
    step = int(saved[0].split()[3])
    assert step % EPOCH_SIZE != 0, f"Ctrl-C landed at an epoch end ({saved[0]}), not mid-epoch"
    resumed = interrupted["killed"].stdout
    assert f"at step {step} (epoch {step // EPOCH_SIZE + 1}, iteration {step % EPOCH_SIZE})" in resumed, resumed


def test_sigkill_leaves_a_stale_lock_that_does_not_block(interrupted):
    assert interrupted["sigkill"] == -signal.SIGKILL
    assert interrupted["stale_pid"] == str(interrupted["killed"].proc.pid)  # its lock file is still there
    assert "resuming" in interrupted["last"].stdout


def test_interrupted_run_is_bit_identical_to_an_uninterrupted_one(interrupted, reference):
    assert_same_run(interrupted["workdir"], reference)
    # No temporary folders of interrupted saves are left in the checkpoint folder.
    assert all(d.isdigit() for d in os.listdir(os.path.join(interrupted["workdir"], "checkpoints")))


# ----------------------------------------------------------------------------- damaged checkpoints


def _truncate_largest_array_file(step_dir: str) -> None:
    path = largest_array_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_resume_falls_back_from_a_damaged_latest_checkpoint(ctx, reference):
    workdir = os.path.join(ctx["base"], "damaged")
    shutil.copytree(reference, workdir)
    last = EPOCHS * EPOCH_SIZE
    _truncate_largest_array_file(os.path.join(workdir, "checkpoints", str(last)))
    run = run_train(ctx, "damaged", *train_args(ctx, workdir))
    warnings = [ln for ln in run.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1, run.stderr
    assert f"checkpoints/{last}: damaged checkpoint" in warnings[0] and "trying the previous one" in warnings[0]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged", str(last)))
    assert f"resuming {workdir} at step {last - EPOCH_SIZE}" in run.stdout
    assert_same_run(workdir, reference)  # the redone epoch is the same epoch


DAMAGE = {
    "truncated array file": _truncate_largest_array_file,
    "deleted array files": lambda d: shutil.rmtree(os.path.join(d, "state", "ocdbt.process_0")),
    "deleted state": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "truncated meta": lambda d: open(os.path.join(d, "meta", "metadata"), "r+b").truncate(40),
    "flipped byte": flip_a_byte,  # orbax's read or the checksum fails, depending on the save
    "changed value": rewrite_state_with_one_value_changed,
    # Without the file checksums (a checkpoint of an older version): orbax reads it, the state
    # checksum notices.
    "changed value, no file checksums": lambda d: (os.remove(os.path.join(d, "files.sha256.json")),
                                                   rewrite_state_with_one_value_changed(d)),
}


# A damaged checkpoint is refused before orbax reads it: no abandoned reads report themselves.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damage_is_detected_and_skipped(ctx, reference, tmp_path, how, logged):
    """CheckpointStore in-process: restore() refuses the damaged step (one line naming it);
    restore_for_resume() warns once, moves it aside and returns the previous one intact."""
    import jax
    import orbax.checkpoint as ocp

    from vp_jax.config import load_config_json, model_config
    from vp_jax.store.checkpoints import CheckpointStore, DamagedCheckpointError
    from vp_jax.store.state import TrainState, make_optimizer

    workdir = str(tmp_path / "wd")
    shutil.copytree(reference, workdir)
    config = load_config_json(os.path.join(workdir, "config.json"))
    last, previous = saved_steps(workdir)[-2:][::-1]
    # A TrainState target built from the saved arrays (no model initialisation needed).
    tree = ocp.StandardCheckpointer().restore(os.path.join(reference, "checkpoints", str(last), "state"))
    tx = make_optimizer(run_config(config).train)
    target = TrainState(step=tree["step"], params=tree["params"], batch_stats=tree["batch_stats"],
                        opt_state=tx.init(tree["params"]), tx=tx)
    step_dir = os.path.join(workdir, "checkpoints", str(last))
    DAMAGE[how](step_dir)

    store = CheckpointStore(workdir, keep=2)
    with pytest.raises(DamagedCheckpointError) as err:
        store.restore("latest", target, model_config(config))
    assert "\n" not in str(err.value) and f"checkpoints/{last}: damaged checkpoint" in str(err.value)
    if how == "changed value, no file checksums":
        assert "state contents differ from the checksum saved with it" in str(err.value)
    else:
        assert "differ from the checksums saved with them" in str(err.value) or "missing" in str(err.value)
    state, meta = store.restore_for_resume(target, model_config(config))
    assert len(logged) == 1 and f"warning: {step_dir}: damaged checkpoint" in logged[0], logged
    assert int(state.step) == previous and meta["epoch"] == previous // EPOCH_SIZE
    assert store.steps() == [s for s in saved_steps(reference) if s != last] and not os.path.exists(step_dir)
    expected = checkpoint_arrays(reference, previous)
    got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state)}
    assert len(got) == len(expected)
    assert sorted(a.tobytes() for a in got.values()) == sorted(a.tobytes() for a in expected.values())


# ----------------------------------------------------------------------------- non-finite losses


@pytest.mark.slow  # ~40 s on a 2-core CPU (VP_JAX_SLOW=1); test_step.py checks the skipped updates in process
def test_nonfinite_losses_stop_the_run_and_keep_the_last_good_checkpoint(ctx, reference):
    """lr = 1e30 from the last checkpoint on: the first update is finite (and absurd), every later
    loss is non-finite. Those updates are skipped -- across an epoch end -- until max_nonfinite (5)
    in a row, then the run stops, naming the step, before optax would apply one."""
    workdir = os.path.join(ctx["base"], "nonfinite")
    shutil.copytree(reference, workdir)
    path = os.path.join(workdir, "config.json")
    config = json.load(open(path))
    config["train"].update(lr=1e30, epochs=EPOCHS + 10, epoch_size=3)  # not resumable changes: edited by hand
    json.dump(config, open(path, "w"))
    before = metrics(workdir)
    good = saved_steps(workdir)[-1]
    # Also as if killed between the last checkpoint and its metrics.csv row: the row comes back
    # from the checkpoint.
    before.iloc[:-1].to_csv(os.path.join(workdir, "metrics.csv"), index=False)

    run = run_train(ctx, "nonfinite", "--workdir", workdir, check=False)
    assert run.proc.returncode == 2
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    # Step `good` applied a finite update, the next 5 were non-finite (an epoch end after 2 of them).
    assert errors[0].startswith(f"error: step {good + 5}: loss was non-finite for 5 steps in a row"), errors[0]
    assert f"last good checkpoint (step {good})" in errors[0]
    assert saved_steps(workdir) == saved_steps(reference)  # nothing saved during the skipped updates
    ours, theirs = checkpoint_arrays(workdir), checkpoint_arrays(reference)
    assert all(ours[k].tobytes() == theirs[k].tobytes() for k in ours)
    assert all(np.isfinite(v).all() for k, v in ours.items() if v.dtype.kind == "f")
    after = metrics(workdir)
    pd.testing.assert_frame_equal(after.iloc[: len(before)], before)  # the good epochs' rows are kept
    assert after["epoch"].tolist() == list(range(1, EPOCHS + 2))  # + the epoch that ended mid-streak


_LEFTOVER_PROBE = """
import os, sys
from vp_jax.store.checkpoints import CheckpointStore
store = CheckpointStore(sys.argv[1])
print(os.path.exists(sys.argv[2]))
"""  # and exits without close(), as a refused resume or an error does


def test_leftover_temporary_checkpoint_is_removed_before_the_store_is_used(tmp_path):
    """A save that a kill interrupted leaves an orbax temporary folder. It is gone when the store
    has been opened, and a process that exits straight after opening it (an error path) prints no
    traceback from orbax's cleanup thread (a CI failure once, when close() did not wait for it)."""
    workdir = str(tmp_path / "wd")
    leftover = os.path.join(workdir, "checkpoints", "5.orbax-checkpoint-tmp-1234567")
    for _ in range(3):  # the race this guards against does not show every time
        os.makedirs(os.path.join(leftover, "state"), exist_ok=True)
        proc = subprocess.run([sys.executable, "-c", _LEFTOVER_PROBE, workdir, leftover], cwd=ROOT,
                              env=_env(str(tmp_path / "cache")), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout.split() == ["False"], proc.stdout
