"""What a training run keeps in its workdir, and the rules for reopening one.

A workdir after training::

    DIR/config.json            the config of the run (resuming checks the new one against it)
    DIR/metrics.csv            one row per epoch (step, epoch, loss, mse, kl, beta, tfr, lr,
                               val_psnr, val_psnr_moving, val_action_sensitivity_db,
                               val_posterior_psnr, val_copy_psnr, seconds, rss_mb)
    DIR/plots/*.png            loss/MSE/KL, schedules, validation PSNR (refreshed every epoch)
    DIR/gifs/epoch_XXX.gif     validation predictions beside ground truth
    DIR/checkpoints/<step>/    orbax checkpoints: the last checkpoint.keep and the best (see
                               checkpoints.py); damaged ones moved to DIR/checkpoints/damaged/
    DIR/.lock, .lock.pid       held while a train.py writes here (and by which process)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil

import filelock
import pandas as pd
import psutil

from vp_jax.config import RunConfig, flat_fields, load_config_json
from vp_jax.errors import ConfigError, VPError
from vp_jax.fileio import atomic_path, write_text
from vp_jax.runtime import parallel
from vp_jax.store.checkpoints import has_checkpoints

VAL_COLUMNS = ["val_psnr", "val_psnr_moving", "val_action_sensitivity_db", "val_posterior_psnr", "val_copy_psnr"]
METRIC_COLUMNS = ["step", "epoch", "loss", "mse", "kl", "beta", "tfr", "lr", *VAL_COLUMNS, "seconds", "rss_mb"]
STEP_METRICS = ("loss", "mse", "kl", "beta", "tfr", "lr")
# Fields a resumed run may change: how long to train and how to evaluate, not what is trained.
RESUMABLE_CHANGES = ("train.epochs", "eval.", "checkpoint.keep", "parallel.", "train.remat")


class TrainingStopped(VPError):
    """The run stopped on purpose (non-finite losses); the last good checkpoint is kept."""


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def check_same_run(saved, config) -> None:
    """Refuse to resume a workdir with a config that would train something else."""
    old, new = flat_fields(saved.to_dict()), flat_fields(config.to_dict())
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_CHANGES):
            raise ConfigError(
                f"config.{key} = {new.get(key)!r} but the workdir was trained with "
                f"{old.get(key)!r}: use a new --workdir, or the same config to resume"
            )


class WorkdirLock:
    """An exclusive lock on ``DIR/.lock`` (``filelock``): one writer per workdir; the holder's
    pid in ``DIR/.lock.pid`` for the message a second writer gets.

    The kernel drops the lock when its process dies, so a killed run never blocks the next
    (the files left behind are harmless: only the lock counts).
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._lock = filelock.FileLock(self.path, timeout=0)

    def __enter__(self):
        try:
            self._lock.acquire()
        except filelock.Timeout:
            try:
                with open(self.path + ".pid") as f:
                    holder = f" (pid {int(f.read().strip())})"
            except (OSError, ValueError):
                holder = ""
            raise VPError(
                f"{self.path}: another train.py{holder} is training this workdir; one writer per workdir"
            ) from None
        write_text(self.path + ".pid", str(os.getpid()))
        return self

    def __exit__(self, *exc):
        self._lock.release()


def read_metrics(path: str, upto_epoch: int) -> pd.DataFrame:
    """Rows of an existing metrics.csv for epochs 1 .. ``upto_epoch`` (later ones are redone)."""
    if not os.path.exists(path):
        return pd.DataFrame(columns=METRIC_COLUMNS)
    try:
        frame = pd.read_csv(path)
        frame = frame[frame["epoch"] <= upto_epoch].reset_index(drop=True)
    except Exception as err:  # noqa: BLE001 - edited or damaged by hand
        raise VPError(f"{path}: unreadable ({type(err).__name__}); move it away to resume (it is rewritten from "
                      f"epoch {upto_epoch + 1} on)") from None
    return frame


def write_csv(frame: pd.DataFrame, path: str) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def prepare_workdir(run: RunConfig, workdir: str):
    """Check that ``run`` may train in ``workdir``: one that holds checkpoints must be continued
    with the config it was trained with (``RESUMABLE_CHANGES`` aside). Writes nothing."""
    saved_path = os.path.join(workdir, "config.json")
    if os.path.exists(saved_path) and has_checkpoints(workdir):
        check_same_run(load_config_json(saved_path), run.config)


@contextlib.contextmanager
def open_workdir(run: RunConfig, workdir: str):
    """Create or reopen ``workdir`` for one writer (:class:`WorkdirLock`), check that ``run`` may
    train there (:func:`prepare_workdir`), and yield. A run that fails (bad input, non-finite
    losses) or is interrupted before its first checkpoint in a new or empty ``workdir`` leaves
    no workdir behind."""
    if not parallel.is_main_process():  # a multi-process run: process 0 creates, locks and cleans up
        prepare_workdir(run, workdir)
        parallel.sync_processes("workdir open")
        yield
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise VPError(f"--workdir {workdir}: exists and is not a folder")
    new = not os.path.exists(workdir)
    empty = new or not os.listdir(workdir)
    created = os.path.abspath(workdir)  # the outermost folder this call creates
    while new and not os.path.exists(os.path.dirname(created)):
        created = os.path.dirname(created)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise VPError(f"--workdir {workdir}: cannot create it ({err.strerror})") from None
    with WorkdirLock(workdir):
        try:
            prepare_workdir(run, workdir)
            parallel.sync_processes("workdir open")
            yield
        except (VPError, KeyboardInterrupt):
            if empty and not has_checkpoints(workdir):  # nothing trained: leave nothing behind
                for name in os.listdir(workdir):
                    path = os.path.join(workdir, name)
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
                if new:
                    shutil.rmtree(created, ignore_errors=True)
            raise


def checkpoint_meta(run, epoch, iteration, batches, sums, val_psnr=float("nan"), row=None) -> dict:
    """What a checkpoint stores beside the state: where the run is (epoch, iteration, the data
    iterator, the epoch's running sums), the model config, and the epoch's metrics row."""
    return {
        "epoch": int(epoch),
        "iteration": int(iteration),
        "iterator": batches.get_state(),
        "epoch_sums": sums,
        "seed": run.seed,
        "val_psnr": None if val_psnr != val_psnr else float(val_psnr),
        # This epoch's metrics.csv row (NaN as null), restored if the CSV missed it.
        "row": None if row is None else {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()},
        "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(run.model).items()},
    }
