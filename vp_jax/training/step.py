"""The jitted train step: schedules, the teacher-forcing mask, the loss and its gradient, the update.

The model's pass over the frames is :func:`vp_jax.models.rollout.rollout` and the loss terms are
:mod:`vp_jax.models.losses`; this module draws the teacher-forcing mask, picks the rollout's path and
applies the optimiser. An iteration whose encoder inputs are all ground truth (the lab's tfr = 1)
takes the rollout's teacher-forced path (decoder outside the scan): the same numbers up to float
summation order (``tests/test_speed.py``), about 2x faster on a CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from vp_jax.config import TFR_MODES, RunConfig, TrainConfig
from vp_jax.errors import ConfigError, DataError
from vp_jax.models.losses import objective, step_terms
from vp_jax.models.rollout import Pass, rollout
from vp_jax.models.schedules import (
    kl_beta_schedule,
    learning_rate_schedule,
    teacher_forcing_schedule,
)
from vp_jax.store.state import TrainState
from vp_jax.training.accumulate import accumulate_gradients, check_accumulation


def teacher_forcing_mask(key: jax.Array, tfr, batch_size: int, num_frames: int, n_past: int, mode: str) -> jax.Array:
    """Bool ``[B, T]``: True where the encoder input at step t is the ground truth x_{t-1}.

    ``mode`` 'iteration': one coin for the whole batch (the lab's ``random() < tfr``);
    'sample': one coin per sequence; 'frame': one coin per sequence and frame.  Entries
    t < n_past are always True (context frames are always ground truth).  ``tfr`` may be traced.
    """
    shapes = {"iteration": (1, 1), "sample": (batch_size, 1), "frame": (batch_size, num_frames)}
    if mode not in shapes:
        raise ConfigError(f"config.train.tfr.mode = {mode!r}: expected one of {TFR_MODES}")
    coins = jax.random.uniform(key, shapes[mode]) < tfr
    mask = jnp.broadcast_to(coins, (batch_size, num_frames))
    return mask | (jnp.arange(num_frames) < n_past)[None, :]


def rollout_loss(params, batch_stats, batch: dict, key, beta, how: Pass, free_bits: float = 0.0):
    """The optimised objective of one batch (:func:`vp_jax.models.losses.objective` of the posterior
    :func:`~vp_jax.models.rollout.rollout`).

    ``batch``: ``frames``, ``cond`` and ``mask`` (the teacher-forcing mask; absent or None means
    every encoder input is the ground truth: the rollout's faster, equivalent path); ``beta`` may
    be traced. Returns ``(loss, (metrics, new_batch_stats))``.
    """
    outputs, new_batch_stats = rollout(params, batch_stats, batch["frames"], batch["cond"], key, how, batch.get("mask"))
    loss, metrics = objective(step_terms(how.model, outputs), beta, free_bits)
    return loss, (metrics, new_batch_stats)


def always_teacher_forced(train: TrainConfig) -> bool:
    """True when the teacher-forcing ratio is 1 at every step (the lab's default: start 1, no
    decay): every encoder input is then the ground truth and no mask needs to be drawn."""
    tfr = train.tfr
    return tfr.start >= 1.0 and (tfr.decay_step == 0.0 or tfr.lower_bound >= 1.0)


def make_train_step(run: RunConfig, unroll=None):
    """Jitted ``step(state, batch, key) -> (state, metrics)``; ``state`` is donated.

    ``key`` is the run's key: the step uses ``fold_in(key, state.step)``, so the loop passes the
    same key every step and never reads the step counter back.

    ``batch``: ``{'frames': [B, T, 64, 64, C] uint8 or float, 'cond': [B, T, cond_dim]}``; the
    first ``n_past + n_future`` frames are used.  The teacher-forcing mask is drawn from ``key``
    with the tfr schedule's value at ``state.step`` (mode ``train.tfr.mode``); beta and the
    learning rate are the schedules' values at ``state.step`` -- all traced, so the step compiles
    once per batch shape.

    metrics: ``loss``, ``mse``, ``kl`` (see :func:`vp_jax.models.losses.objective`), ``beta``, ``tfr``, ``lr``
    (schedule value at this step), ``finite`` (1.0 when the gradients were finite and the update
    was applied; 0.0 when they were not and the update was skipped -- unless
    ``nonfinite_count`` exceeds ``train.max_nonfinite``, when optax applies it anyway) and
    ``nonfinite_count`` (consecutive non-finite updates; the loop should stop at
    ``max_nonfinite``).  BatchNorm running statistics are only kept from finite steps.
    ``unroll``: the rollout scan's unroll (None = :func:`vp_jax.models.rollout.default_unroll`).

    Memory options (the same model and schedules; ``docs/performance.md`` has the figures):

    * ``train.remat`` (default False): the encoder's and decoder's activations are recomputed
      in the backward pass instead of kept (``jax.checkpoint``); same numbers up to float
      rounding.
    * ``train.grad_accum`` = k (default 1): the gradient of the batch is the mean of the gradients
      of k micro-batches of B / k rows (rows ``i::k``), computed one after the other
      (:mod:`vp_jax.training.accumulate`); the metrics are the micro-batches' means; one update
      per batch. What differs from one batch of B: BatchNorm normalises each micro-batch with
      its own mean and variance (over B / k rows, as a run at batch B / k would) and its running
      statistics take k updates a step, one per micro-batch; with ``train.kl.free_bits`` the
      clamp applies to the KL averaged over a micro-batch; the posterior's noise is drawn per
      micro-batch. The teacher-forcing mask is drawn for the whole batch. Without BatchNorm and
      free bits the result is that of the big batch, up to float summation order.
    """
    train, num_frames = run.train, run.num_frames
    how = Pass(run.model, run.n_past, unroll=unroll, remat=train.remat)
    schedules = {"lr": learning_rate_schedule(train), "beta": kl_beta_schedule(train), "tfr": teacher_forcing_schedule(train)}
    teacher_forced_only = always_teacher_forced(train)
    accum = check_accumulation(train.batch_size, train.grad_accum)

    def batch_grads(params, batch_stats, batch, key, beta):
        # The masked rollout gives the teacher-forced path's numbers when every input is the
        # ground truth; branching to that path (lax.cond) cost more on a CPU than it saved.
        batch = dict(batch, mask=None) if teacher_forced_only else batch
        loss = functools.partial(rollout_loss, batch_stats=batch_stats, batch=batch, key=key, beta=beta, how=how,
                                 free_bits=train.kl.free_bits)
        (_, (metrics, new_batch_stats)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return new_batch_stats, grads, metrics

    def step(state: TrainState, batch: dict, key: jax.Array):
        batch = _model_batch(batch, run)
        mask_key, loss_key = jax.random.split(jax.random.fold_in(key, state.step))
        values = {name: fn(state.step) for name, fn in schedules.items()}
        batch["mask"] = teacher_forcing_mask(mask_key, values["tfr"], batch["frames"].shape[0], num_frames, run.n_past,
                                             train.tfr.mode)
        if accum == 1:
            new_batch_stats, grads, metrics = batch_grads(state.params, state.batch_stats, batch, loss_key, values["beta"])
        else:
            def micro_step(batch_stats, micro, i):
                return batch_grads(state.params, batch_stats, micro, jax.random.fold_in(loss_key, i), values["beta"])

            new_batch_stats, grads, metrics = accumulate_gradients(micro_step, state.batch_stats, batch, accum)
        new_state, finite = _apply_update(state, grads, new_batch_stats)
        metrics = dict(metrics, beta=values["beta"], tfr=values["tfr"], lr=jnp.asarray(values["lr"], jnp.float32),
                       finite=finite.astype(jnp.float32), nonfinite_count=new_state.opt_state.notfinite_count)
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)


def _model_batch(batch: dict, run: RunConfig) -> dict:
    """The first ``n_past + n_future`` frames and conditions the model reads (cond None without one)."""
    frames, num_frames = batch["frames"], run.num_frames
    if frames.ndim != 5 or frames.shape[1] < num_frames:
        raise DataError(
            f"batch['frames'] of shape {tuple(frames.shape)}: "
            f"expected [B, T >= n_past + n_future = {num_frames}, H, W, C]"
        )
    cond = batch.get("cond")
    cond = None if (cond is None or not run.model.cond_dim) else cond[:, :num_frames]
    return {"frames": frames[:, :num_frames], "cond": cond}


def _apply_update(state: TrainState, grads, new_batch_stats):
    """The optimiser's update; BatchNorm's running statistics kept only from a finite step
    (``apply_if_finite`` skipped the update otherwise). -> (new state, finite)."""
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    finite = opt_state.last_finite
    batch_stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_batch_stats, state.batch_stats)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, finite
