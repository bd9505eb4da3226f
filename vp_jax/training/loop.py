"""The training loop behind ``train.py``: epochs of jitted steps, validation, outputs, resume.

The workdir (its files, the lock, the resume rules) is :mod:`vp_jax.training.workdir`.
Determinism: the key of step ``s`` is ``fold_in(key(seed), s)`` (folded inside the jitted step)
and the data order is a function of (seed, data epoch), so a resumed run computes exactly what
an uninterrupted run would have.

The steps run without waiting for each other: the host reads the metrics back every
``LOG_EVERY`` steps (progress bar, non-finite check) and at the epoch's end; the epoch's sums
are kept on the device.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vp_jax.config import RunConfig, run_config, save_config_json
from vp_jax.data.pipeline import BatchIterator, Sampling, condition_stats, open_split
from vp_jax.report import visualize
from vp_jax.runtime import parallel
from vp_jax.store.checkpoints import CheckpointStore
from vp_jax.store.state import create_train_state
from vp_jax.training.step import make_train_step
from vp_jax.training.workdir import (
    METRIC_COLUMNS,
    STEP_METRICS,
    VAL_COLUMNS,
    TrainingStopped,
    checkpoint_meta,
    open_workdir,
    read_metrics,
    rss_mb,
    write_csv,
)

LOG_EVERY = 10  # steps between reads of the metrics by the host
log = logging.getLogger(__name__)


def train(config, workdir: str, validator) -> dict:
    """Train ``config`` (an ``ml_collections.ConfigDict`` or its :class:`~vp_jax.config.RunConfig`)
    in ``workdir`` (resuming what is there); return the last epoch's row.

    ``validator(run, source, key, cond_stats=, mesh=)`` builds the per-epoch validation: a callable
    ``state -> (row values, scores)`` (:class:`vp_jax.evaluation.scoring.Validator`, which
    :func:`vp_jax.train_and_evaluate` hands in).

    Progress lines (one per epoch, resuming, interruptions) and warnings go to the ``vp_jax``
    logger; train.py shows them (:func:`vp_jax.tools.cli.show_messages`), a program can do the same.

    A run that fails (bad input, non-finite losses) or is interrupted before its first checkpoint
    in a new or empty ``workdir`` leaves no workdir behind.
    """
    run = run_config(config)  # checked and typed once; passed down from here
    with open_workdir(run, workdir):
        return _train(run, workdir, validator)


@dataclasses.dataclass
class _Run:
    """What stays fixed while a run trains."""

    config: RunConfig
    workdir: str
    store: CheckpointStore
    batches: BatchIterator
    mesh: object
    main: bool
    base_key: jax.Array
    train_step: object
    validator: object


def _train(config: RunConfig, workdir: str, make_validator) -> dict:
    mesh = parallel.auto_mesh(config.config)
    # Process 0 first: it generates or packs the data if missing; the others then open it.
    train_src, val_src = parallel.main_process_first(
        lambda: (open_split(config.data, "train"), open_split(config.data, "validate")))
    cond_stats = condition_stats(train_src) if config.data.normalize_condition else None
    # Each process reads only its rows of every global batch (all of them on a single process).
    sampling = Sampling(random_offset=config.data.random_offset, rows=parallel.process_batch_slice(config.train.batch_size))
    batches = BatchIterator(train_src, config.train.batch_size, config.num_frames, config.seed, sampling, cond_stats)
    base_key = jax.random.key(config.seed)
    init_key, val_key = jax.random.split(jax.random.fold_in(base_key, -1 % 2**31))
    state = create_train_state(config, init_key)
    # Closed however the run ends (a refused resume, a non-finite stop, Ctrl-C, an error).
    with CheckpointStore(workdir, keep=config.checkpoint_keep) as store:
        main = parallel.is_main_process()
        state, start_epoch, start_iter, sums, history = _resume(config, workdir, store, state, batches, main)
        validator = make_validator(config, val_src, val_key, cond_stats=cond_stats, mesh=mesh)
        run = _Run(config, workdir, store, batches, mesh, main, base_key, make_train_step(config), validator)
        state = parallel.put_replicated(state, mesh)
        if mesh is not None:
            log.info("data parallel over %d devices (%d sequences each)", parallel.num_shards(mesh),
                     config.train.batch_size // parallel.num_shards(mesh))
        with _StopFlag() as stop:  # Ctrl-C from here on stops at the next safe point
            return _epochs(run, stop, state, start_epoch, start_iter, sums, history)


def _epochs(run: _Run, stop, state, start_epoch: int, start_iter: int, sums, history: pd.DataFrame) -> dict:
    """The epoch loop: train, validate, checkpoint, metrics.csv and plots, one line per epoch."""
    config, store = run.config, run.store
    row = history.iloc[-1].to_dict() if len(history) else {}
    for epoch in range(start_epoch, config.train.epochs):
        t0, last = time.time(), epoch == config.train.epochs - 1
        state, sums, bad = _train_epoch(run, stop, state, sums, epoch, start_iter)
        row = {k: (sums[k] / sums["count"] if sums["count"] else float("nan")) for k in STEP_METRICS}
        row.update(step=int(state.step), epoch=epoch + 1, **{k: float("nan") for k in VAL_COLUMNS})  # 1-based
        if (epoch + 1) % config.eval.every_epochs == 0 or last:
            row.update(_validate_and_show(run, state, epoch))
        row.update(seconds=time.time() - t0, rss_mb=rss_mb())
        history = pd.concat([history, pd.DataFrame([row])[METRIC_COLUMNS]], ignore_index=True)
        # Checkpoint first, then the CSV: the checkpoint holds the row too, so a crash in between
        # loses nothing. No checkpoint while updates are being skipped (non-finite losses): the
        # latest checkpoint stays the last good one, and a resumed run redoes this epoch.
        if not bad:
            meta = checkpoint_meta(config, epoch + 1, 0, run.batches, None, row["val_psnr"], row=row)
            store.save(int(state.step), state, meta, val_psnr=row["val_psnr"])
        if run.main:
            write_csv(history, os.path.join(run.workdir, "metrics.csv"))
            visualize.plot_training_curves(os.path.join(run.workdir, "metrics.csv"), os.path.join(run.workdir, "plots"))
        log.info(_epoch_line(epoch, row))
        start_iter, sums = 0, None
        if stop.requested and not last:
            log.info("interrupted: saved step %s in %s; run the same command to resume", store.latest_step(), store.root)
            raise KeyboardInterrupt
    return row


def _resume(config, workdir, store, state, batches, main):
    """The newest intact checkpoint (damaged ones are moved aside with a one-line warning), the
    metrics.csv rows before it, the run's config.json and output folders:
    ``(state, epoch, iteration, epoch sums, history)``."""
    start_epoch, start_iter, sums, last_row = 0, 0, None, None
    restored = store.restore_for_resume(state, config.model)
    if restored is not None:
        state, meta = restored
        batches.set_state(meta["iterator"])
        start_epoch, start_iter, sums, last_row = meta["epoch"], meta["iteration"], meta.get("epoch_sums"), meta.get("row")
        log.info("resuming %s at step %d (epoch %d, iteration %d)", workdir, int(state.step), start_epoch + 1, start_iter)
    metrics_path = os.path.join(workdir, "metrics.csv")
    history = read_metrics(metrics_path, start_epoch)
    if main and last_row is not None and not (history["epoch"] == last_row["epoch"]).any():
        # Killed between the checkpoint and the CSV: the row saved with the checkpoint.
        last_row = {k: (float("nan") if last_row.get(k) is None else last_row[k]) for k in METRIC_COLUMNS}
        history = pd.concat([history, pd.DataFrame([last_row])[METRIC_COLUMNS]], ignore_index=True)
        write_csv(history, metrics_path)
    if main:
        save_config_json(config.config, os.path.join(workdir, "config.json"))
    for name in ("plots", "gifs") if main else ():
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
    return state, start_epoch, start_iter, sums, history


@jax.jit
def _accumulate(acc: dict, metrics: dict, step) -> dict:
    """Add a step's metrics to the epoch's sums (steps whose update was applied and whose loss is
    finite), and note the first step at which the non-finite streak reached its limit."""
    use = (metrics["finite"] > 0) & jnp.isfinite(metrics["loss"])
    out = {k: acc[k] + jnp.where(use, metrics[k], 0.0) for k in STEP_METRICS}
    out["count"] = acc["count"] + use.astype(jnp.float32)
    limit = (acc["stop_at"] < 0) & (metrics["nonfinite_count"] >= acc["max_bad"])
    out["stop_at"] = jnp.where(limit, step - 1, acc["stop_at"])
    out["max_bad"] = acc["max_bad"]
    return out


def _device_sums(sums, max_bad: int) -> dict:
    """The epoch's sums so far (None: a new epoch) on the device."""
    sums = sums or {}
    acc = {k: np.float32(sums.get(k, 0.0)) for k in (*STEP_METRICS, "count")}
    return jax.device_put(dict(acc, stop_at=np.int32(-1), max_bad=np.int32(max_bad)))


def _host_sums(acc) -> dict:
    acc = jax.device_get(acc)
    return {k: float(acc[k]) for k in (*STEP_METRICS, "count")}


def _train_epoch(run: _Run, stop, state, sums, epoch: int, start: int):
    """Steps ``start`` .. epoch_size-1 of one epoch: ``(state, host sums, non-finite streak)``.

    Stops the run (:class:`TrainingStopped`) once ``train.max_nonfinite`` updates in a row were
    skipped, and on Ctrl-C saves (unless the last update was skipped) and stops."""
    config, store, train_step = run.config, run.store, run.train_step
    epoch_size, max_bad = config.train.epoch_size, config.train.max_nonfinite
    acc = _device_sums(sums, max_bad)
    bar = tqdm(range(start, epoch_size), initial=start, total=epoch_size, dynamic_ncols=True, mininterval=1.0,
               desc=f"epoch {epoch + 1}/{config.train.epochs}")
    bad = 0
    for it in bar:
        state, m = train_step(state, parallel.put_process_batch(next(run.batches), run.mesh), run.base_key)
        acc = _accumulate(acc, m, state.step)
        interrupted = stop.requested and it < epoch_size - 1
        if it % LOG_EVERY == 0 or it == epoch_size - 1 or interrupted:
            m, stop_at = jax.device_get((m, acc["stop_at"]))
            bad = int(m["nonfinite_count"])
            if stop_at >= 0:  # optax's apply_if_finite would apply the next non-finite update
                bar.close()
                good = store.latest_step()
                kept = (f"the last good checkpoint (step {good}) in {store.root} is kept" if good is not None
                        else "no checkpoint had been saved")
                raise TrainingStopped(
                    f"step {int(stop_at)}: loss was non-finite for {max_bad} steps in a row "
                    f"(train.max_nonfinite={max_bad}); those updates were skipped, the run stopped and "
                    f"{kept}: lower train.lr or check the data"
                )
            bar.set_postfix(loss=f"{m['loss']:.4f}", mse=f"{m['mse']:.5f}", kl=f"{m['kl']:.3f}",
                            beta=f"{m['beta']:.3g}", tfr=f"{m['tfr']:.2f}", refresh=False)
        if interrupted:
            bar.close()
            if bad:  # never save a state whose last update was skipped
                log.info("interrupted: not saved (the last %d steps were non-finite); run the same command to "
                         "resume from step %s", bad, store.latest_step())
            else:
                meta = checkpoint_meta(config, epoch, it + 1, run.batches, _host_sums(acc))
                store.save(int(state.step), state, meta)
                log.info("interrupted: saved step %d in %s; run the same command to resume", int(state.step), store.root)
            raise KeyboardInterrupt
    bar.close()
    return state, _host_sums(acc), bad


def _validate_and_show(run: _Run, state, epoch: int) -> dict:
    """The validation row values; GIFs of the first ``eval.num_gifs`` sequences."""
    config = run.config
    val_row, scores = run.validator(state)
    for j in range(min(config.eval.num_gifs, len(scores["pred"])) if run.main else 0):
        frames_true = np.concatenate([scores["context"][j], scores["target"][j]])
        frames_pred = np.concatenate([scores["context"][j], scores["pred"][j]])
        name = f"epoch_{epoch + 1:03d}" + (f"_{j}" if j else "") + ".gif"
        visualize.write_gif(frames_pred, frames_true, config.n_past, os.path.join(run.workdir, "gifs", name))
    return val_row


def _epoch_line(epoch: int, row: dict) -> str:
    val = "" if math.isnan(row["val_psnr"]) else (
        f"  val_psnr {row['val_psnr']:.2f} dB (moving {row['val_psnr_moving']:.2f}, copy-last "
        f"{row['val_copy_psnr']:.2f}, posterior {row['val_posterior_psnr']:.2f}, action sensitivity "
        f"{row['val_action_sensitivity_db']:+.2f}, {row['val_active_units']:.0f} active latent dims"
        + (f", latent gain {row['val_best_minus_mean_moving_db']:+.2f} dB" if "val_best_minus_mean_moving_db" in row else "")
        + (f" = {100 * row['val_latent_share']:.0f} % of the bound" if math.isfinite(row.get("val_latent_share", math.nan)) else "")
        + ")"
    )
    return (f"epoch {epoch + 1}: loss {row['loss']:.4f}  mse {row['mse']:.5f}  kl {row['kl']:.3f}  "
            f"beta {row['beta']:.3g}  tfr {row['tfr']:.2f}{val}  ({row['seconds']:.0f} s)")


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
        log.info("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        # Several processes cannot stop at the same step on their own: there Ctrl-C stops every
        # process at once (parallel.stop_together) and the run resumes from its last epoch end.
        self._installed = not parallel.is_multiprocess()
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


