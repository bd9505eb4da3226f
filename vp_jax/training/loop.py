"""The training loop behind ``train.py``: epochs of jitted steps, validation, outputs, resume.

A workdir after training::

    DIR/config.json            the config of the run (resuming checks the new one against it)
    DIR/metrics.csv            one row per epoch (step, epoch, loss, mse, kl, beta, tfr, lr,
                               val_psnr, val_psnr_moving, val_action_sensitivity_db,
                               val_posterior_psnr, val_copy_psnr, seconds, rss_mb)
    DIR/plots/*.png            loss/MSE/KL, schedules, validation PSNR (refreshed every epoch)
    DIR/gifs/epoch_XXX.gif     validation predictions beside ground truth
    DIR/checkpoints/{latest,best}/<step>/   orbax checkpoints (see checkpoints.py)

Determinism: the key of step ``s`` is ``fold_in(key(seed), s)`` and the data order is a
function of (seed, data epoch), so a resumed run computes exactly what an uninterrupted run
would have.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import resource
import shutil
import signal
import sys
import time

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vp_jax import parallel, visualize
from vp_jax.config import ModelConfig, load_config_json, model_config, save_config_json, validate
from vp_jax.data.pipeline import BatchIterator, condition_stats, open_split
from vp_jax.errors import ConfigError, VPError
from vp_jax.evaluation import derangement, make_eval_fns, moving_threshold, predict_and_score, summarize
from vp_jax.training.checkpoints import CheckpointStore, has_checkpoints
from vp_jax.training.state import create_train_state
from vp_jax.training.step import make_train_step

VAL_COLUMNS = ["val_psnr", "val_psnr_moving", "val_action_sensitivity_db", "val_posterior_psnr", "val_copy_psnr"]
METRIC_COLUMNS = ["step", "epoch", "loss", "mse", "kl", "beta", "tfr", "lr", *VAL_COLUMNS, "seconds", "rss_mb"]
STEP_METRICS = ("loss", "mse", "kl", "beta", "tfr", "lr")
# Fields a resumed run may change: how long to train and how to evaluate, not what is trained.
RESUMABLE_CHANGES = ("train.niter", "eval.", "checkpoint.keep", "parallel.")
# Training fields that configs gained later, with the value a workdir without them was trained with.
ADDED_FIELDS = {"train.kl.free_bits": 0.0}


class TrainingStopped(VPError):
    """The run stopped on purpose (non-finite losses); the last good checkpoint is kept."""


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def check_same_run(saved, config) -> None:
    """Refuse to resume a workdir with a config that would train something else."""
    old, new = _flatten(saved.to_dict()), _flatten(config.to_dict())
    # Fields added after the workdir was written: it was trained with their defaults.
    defaults = {f"model.{f.name}": f.default for f in dataclasses.fields(ModelConfig)}
    defaults.update(ADDED_FIELDS)
    old.update({k: defaults[k] for k in new if k not in old and k in defaults})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_CHANGES):
            raise ConfigError(
                f"config.{key} = {new.get(key)!r} but the workdir was trained with "
                f"{old.get(key)!r}: use a new --workdir, or the same config to resume"
            )


class WorkdirLock:
    """An exclusive ``flock`` on ``DIR/.lock``: one writer per workdir.

    The kernel drops the lock when its process dies, so a killed run never blocks the next
    (the stale ``.lock`` file left behind is harmless: only the ``flock`` counts).
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._fd = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = f" (pid {int(os.read(self._fd, 32).decode().strip())})"
            except (OSError, ValueError):
                holder = ""
            os.close(self._fd)
            raise VPError(
                f"{self.path}: another train.py{holder} is training this workdir; one writer per workdir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _read_metrics(path: str, upto_epoch: int) -> pd.DataFrame:
    """Rows of an existing metrics.csv for epochs < ``upto_epoch`` (later ones are redone)."""
    if not os.path.exists(path):
        return pd.DataFrame(columns=METRIC_COLUMNS)
    try:
        frame = pd.read_csv(path)
        frame = frame[frame["epoch"] < upto_epoch].reset_index(drop=True)
    except Exception as err:  # noqa: BLE001 - edited or damaged by hand
        raise VPError(f"{path}: unreadable ({type(err).__name__}); move it away to resume (it is rewritten from "
                      f"epoch {upto_epoch + 1} on)") from None
    return frame


def _write_csv(frame: pd.DataFrame, path: str) -> None:
    tmp = path + ".tmp"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def prepare_workdir(config, workdir: str):
    """Check that ``config`` may train in ``workdir``: one that holds checkpoints must be continued
    with the config it was trained with (``RESUMABLE_CHANGES`` aside). Writes nothing."""
    validate(config)
    saved_path = os.path.join(workdir, "config.json")
    if os.path.exists(saved_path) and has_checkpoints(workdir):
        check_same_run(load_config_json(saved_path), config)


def validate_model(config, state, source, fns, key, *, keep: int = 0, cond_stats=None, mesh=None) -> tuple[dict, dict]:
    """The evaluation measures on (part of) the validation split: ``(row values, scores)``.

    Row values (``VAL_COLUMNS``): the lab metric, its moving-pixel PSNR, the action sensitivity
    (PSNR with the true minus shuffled conditions), the teacher-forced posterior PSNR and the
    copy-last-frame PSNR of the same sequences.
    """
    n = len(source) if not config.eval.num_val_batches else min(len(source), config.eval.num_val_batches * config.eval.batch_size)
    scores = predict_and_score(
        config,
        state.params,
        state.batch_stats,
        source,
        key=key,
        batch_size=config.eval.batch_size,
        max_batches=config.eval.num_val_batches,
        shuffled_permutation=derangement(n, config.seed) if config.model.cond_dim and n > 1 else None,
        posterior=True,
        keep_predictions=keep > 0,
        fns=fns,
        cond_stats=cond_stats,
        mesh=mesh,
        moving_threshold=moving_threshold(config),
    )
    summary = summarize(scores, moving_threshold(config))
    nan = float("nan")

    def value(v):
        return nan if v is None else float(v)

    row = {
        "val_psnr": value(summary["psnr"]),
        "val_psnr_moving": value(summary["psnr_moving"]),
        "val_action_sensitivity_db": value(summary.get("action_sensitivity_db")),
        "val_posterior_psnr": value(summary["posterior"]["psnr"]),
        "val_copy_psnr": value(summary["baseline_copy_last"]["psnr"]),
    }
    return row, scores


def train_and_evaluate(config, workdir: str) -> dict:
    """Train ``config`` in ``workdir`` (resuming what is there); return the last epoch's row.

    A run that fails (bad input, non-finite losses) or is interrupted before its first checkpoint
    in a new or empty ``workdir`` leaves no workdir behind.
    """
    validate(config)
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
            prepare_workdir(config, workdir)
            return _train(config, workdir)
        except (VPError, KeyboardInterrupt):
            if empty and not has_checkpoints(workdir):  # nothing trained: leave nothing behind
                for name in os.listdir(workdir):
                    path = os.path.join(workdir, name)
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
                if new:
                    shutil.rmtree(created, ignore_errors=True)
            raise


def _train(config, workdir: str) -> dict:
    model_cfg = model_config(config)
    mesh = parallel.auto_mesh(config)  # None on one device; else the batch is split over all
    main = parallel.is_main_process()
    seq_len = config.n_past + config.n_future
    train_src = open_split(config.data, "train")
    val_src = open_split(config.data, "validate")
    cond_stats = condition_stats(train_src) if config.data.normalize_condition else None
    batches = BatchIterator(
        train_src,
        batch_size=config.train.batch_size,
        seq_len=seq_len,
        seed=config.seed,
        random_offset=config.data.random_offset,
        cond_stats=cond_stats,
    )

    base_key = jax.random.key(config.seed)
    init_key, val_key = jax.random.split(jax.random.fold_in(base_key, -1 % 2**31))
    state = create_train_state(config, init_key)
    # Closed however the run ends (a refused resume, a non-finite stop, Ctrl-C, an error).
    with CheckpointStore(workdir, keep=config.checkpoint.keep) as store:
        start_epoch, start_iter, sums, last_row = 0, 0, None, None
        # The newest intact checkpoint; damaged ones are moved aside with a one-line warning.
        restored = store.restore_for_resume(state, model_cfg, warn=lambda msg: tqdm.write(msg, file=sys.stderr))
        if restored is not None:
            state, meta = restored
            batches.set_state(meta["iterator"])
            start_epoch, start_iter = meta["epoch"], meta["iteration"]
            sums = meta.get("epoch_sums")
            last_row = meta.get("row")
            tqdm.write(f"resuming {workdir} at step {int(state.step)} (epoch {start_epoch}, iteration {start_iter})")
        state = parallel.put_replicated(state, mesh)
        if mesh is not None:
            tqdm.write(f"data parallel over {parallel.num_shards(mesh)} devices "
                       f"({config.train.batch_size // parallel.num_shards(mesh)} sequences each)")

        metrics_path = os.path.join(workdir, "metrics.csv")
        history = _read_metrics(metrics_path, start_epoch)
        if main and last_row is not None and not (history["epoch"] == last_row["epoch"]).any():
            # Killed between the checkpoint and the CSV: the row saved with the checkpoint.
            last_row = {k: (float("nan") if last_row.get(k) is None else last_row[k]) for k in METRIC_COLUMNS}
            history = pd.concat([history, pd.DataFrame([last_row])[METRIC_COLUMNS]], ignore_index=True)
            _write_csv(history, metrics_path)
        if main:
            save_config_json(config, os.path.join(workdir, "config.json"))
        plots_dir = os.path.join(workdir, "plots")
        gifs_dir = os.path.join(workdir, "gifs")
        os.makedirs(plots_dir, exist_ok=True)
        os.makedirs(gifs_dir, exist_ok=True)

        train_step = make_train_step(config)
        eval_fns = make_eval_fns(config, num_samples=1, bn_mode=config.eval.bn_mode)
        epoch_size, max_bad = config.train.epoch_size, config.train.max_nonfinite
        row = history.iloc[-1].to_dict() if len(history) else {}
        bad_in_a_row = 0  # consecutive skipped (non-finite) updates; carried across epochs

        # Ctrl-C anywhere in the epoch loop (steps, validation, saving) stops at the next safe point.
        stop = _StopFlag()
        with stop:
            for epoch in range(start_epoch, config.train.niter):
                t0 = time.time()
                sums = sums or {k: 0.0 for k in STEP_METRICS}
                sums.setdefault("count", 0)
                bar = tqdm(
                    range(start_iter, epoch_size),
                    initial=start_iter,
                    total=epoch_size,
                    desc=f"epoch {epoch + 1}/{config.train.niter}",
                    dynamic_ncols=True,
                    mininterval=1.0,
                )
                for it in bar:
                    step = int(state.step)
                    batch = parallel.put_batch(next(batches), mesh)
                    state, m = train_step(state, batch, jax.random.fold_in(base_key, step))
                    m = jax.device_get(m)
                    if float(m["finite"]) < 1.0:
                        # optax.apply_if_finite skipped the update; its own counter survives epochs and
                        # checkpoints. Stop at max_nonfinite, before optax would apply the next one.
                        bad_in_a_row = int(m.get("nonfinite_count", bad_in_a_row + 1))
                        if bad_in_a_row >= max_bad:
                            bar.close()
                            good = store.latest_step()
                            kept = (f"the last good checkpoint (step {good}) in {store.root} is kept" if good is not None
                                    else "no checkpoint had been saved")
                            raise TrainingStopped(
                                f"step {step}: loss was non-finite for {bad_in_a_row} steps in a row "
                                f"(train.max_nonfinite={max_bad}); those updates were skipped, the run stopped and "
                                f"{kept}: lower train.lr or check the data"
                            )
                    else:
                        bad_in_a_row = 0
                        if math.isfinite(float(m["loss"])):
                            for k in STEP_METRICS:
                                sums[k] += float(m[k])
                            sums["count"] += 1
                    if it % 10 == 0 or it == epoch_size - 1:
                        bar.set_postfix(
                            loss=f"{m['loss']:.4f}", mse=f"{m['mse']:.5f}", kl=f"{m['kl']:.3f}",
                            beta=f"{m['beta']:.3g}", tfr=f"{m['tfr']:.2f}", refresh=False,
                        )
                    if stop.requested and it < epoch_size - 1:
                        bar.close()
                        if bad_in_a_row:  # never save a state whose last update was skipped
                            tqdm.write(f"interrupted: not saved (the last {bad_in_a_row} steps were non-finite); "
                                       f"run the same command to resume from step {store.latest_step()}")
                        else:
                            store.save(int(state.step), state, _meta(model_cfg, epoch, it + 1, batches, sums, config))
                            tqdm.write(f"interrupted: saved step {int(state.step)} in {store.root}; run the same command to resume")
                        raise KeyboardInterrupt
                bar.close()

                count = sums["count"]
                row = {k: (sums[k] / count if count else float("nan")) for k in STEP_METRICS}
                row.update(step=int(state.step), epoch=epoch, **{k: float("nan") for k in VAL_COLUMNS})
                last = epoch == config.train.niter - 1
                if (epoch + 1) % config.eval.every_epochs == 0 or last:
                    val_row, scores = validate_model(
                        config, state, val_src, eval_fns, val_key, keep=config.eval.num_gifs, cond_stats=cond_stats,
                        mesh=mesh,
                    )
                    row.update(val_row)
                    for j in range(min(config.eval.num_gifs, len(scores["pred"])) if main else 0):
                        frames_true = np.concatenate([scores["context"][j], scores["target"][j]])
                        frames_pred = np.concatenate([scores["context"][j], scores["pred"][j]])
                        visualize.write_gif(
                            frames_pred, frames_true, config.n_past,
                            os.path.join(gifs_dir, f"epoch_{epoch + 1:03d}" + (f"_{j}" if j else "") + ".gif"),
                        )
                row["seconds"] = time.time() - t0
                row["rss_mb"] = rss_mb()
                history = pd.concat([history, pd.DataFrame([row])[METRIC_COLUMNS]], ignore_index=True)
                # Checkpoint first, then the CSV: the checkpoint holds the row too, so a crash in between
                # loses nothing. No checkpoint while updates are being skipped (non-finite losses): the
                # latest checkpoint stays the last good one, and a resumed run redoes this epoch.
                if not bad_in_a_row:
                    meta = _meta(model_cfg, epoch + 1, 0, batches, None, config, row["val_psnr"], row=row)
                    store.save(int(state.step), state, meta, val_psnr=row["val_psnr"])
                if main:
                    _write_csv(history, metrics_path)
                    visualize.plot_training_curves(metrics_path, plots_dir)
                val = "" if math.isnan(row["val_psnr"]) else (
                    f"  val_psnr {row['val_psnr']:.2f} dB (moving {row['val_psnr_moving']:.2f}, copy-last "
                    f"{row['val_copy_psnr']:.2f}, posterior {row['val_posterior_psnr']:.2f}, action sensitivity "
                    f"{row['val_action_sensitivity_db']:+.2f})"
                )
                tqdm.write(
                    f"epoch {epoch + 1}: loss {row['loss']:.4f}  mse {row['mse']:.5f}  kl {row['kl']:.3f}  "
                    f"beta {row['beta']:.3g}  tfr {row['tfr']:.2f}{val}  ({row['seconds']:.0f} s)"
                )
                start_iter, sums = 0, None
                if stop.requested and not last:
                    tqdm.write(f"interrupted: saved step {store.latest_step()} in {store.root}; run the same command to resume")
                    raise KeyboardInterrupt
    return row


class _StopFlag:
    """Turn Ctrl-C (SIGINT) into a flag the loop checks between steps and at the epoch end.

    Stopping between steps keeps the state, its step counter and the data iterator's position
    in agreement, so the checkpoint written on the way out resumes exactly; a Ctrl-C during
    validation or saving lets them finish.
    """

    def __init__(self):
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def _meta(model_cfg, epoch, iteration, batches, sums, config, val_psnr=float("nan"), row=None) -> dict:
    import dataclasses

    return {
        "epoch": int(epoch),
        "iteration": int(iteration),
        "iterator": batches.get_state(),
        "epoch_sums": sums,
        "seed": int(config.seed),
        "val_psnr": None if val_psnr != val_psnr else float(val_psnr),
        # This epoch's metrics.csv row (NaN as null), restored if the CSV missed it.
        "row": None if row is None else {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()},
        "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(model_cfg).items()},
    }
