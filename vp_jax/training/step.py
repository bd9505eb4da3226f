"""The jitted train step: schedules, the teacher-forcing mask, the loss and its gradient, the update.

The model's pass over the frames is :func:`vp_jax.models.rollout.rollout` and the loss terms are
:mod:`vp_jax.models.losses`; this module draws the teacher-forcing mask, picks the rollout's path and
applies the optimiser. An iteration whose encoder inputs are all ground truth (the lab's tfr = 1)
takes the rollout's teacher-forced path (decoder outside the scan): the same numbers up to float
summation order (``tests/test_speed.py``), about 2x faster on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vp_jax.config import TFR_MODES, ModelConfig, RunConfig, TrainConfig
from vp_jax.errors import ConfigError, DataError
from vp_jax.models.losses import objective, step_terms
from vp_jax.models.rollout import rollout
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


def rollout_loss(
    params, batch_stats, frames, cond, tf_mask, key, beta, *, model_cfg: ModelConfig, n_past: int, unroll=None,
    free_bits: float = 0.0, remat: bool = False,
):
    """The optimised objective of one batch (:func:`vp_jax.models.losses.objective` of the posterior
    :func:`~vp_jax.models.rollout.rollout`, BatchNorm in training mode).

    Returns ``(loss, (metrics, new_batch_stats))``. ``tf_mask=None`` means every encoder input is
    the ground truth (the rollout's faster, equivalent path); ``beta`` may be traced.
    """
    outputs, new_batch_stats = rollout(
        params, batch_stats, frames, cond, key, model_cfg=model_cfg, n_past=n_past, tf_mask=tf_mask, train=True,
        unroll=unroll, remat=remat,
    )
    loss, metrics = objective(step_terms(model_cfg, outputs), beta, free_bits)
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
    cfg, train, n_past, num_frames = run.model, run.train, run.n_past, run.num_frames
    mode, free_bits, remat = train.tfr.mode, train.kl.free_bits, train.remat
    lr_fn, beta_fn, tfr_fn = learning_rate_schedule(train), kl_beta_schedule(train), teacher_forcing_schedule(train)
    teacher_forced_only = always_teacher_forced(train)
    accum = check_accumulation(train.batch_size, train.grad_accum)

    def step(state: TrainState, batch: dict, key: jax.Array):
        frames = batch["frames"]
        if frames.ndim != 5 or frames.shape[1] < num_frames:
            raise DataError(
                f"batch['frames'] of shape {tuple(frames.shape)}: "
                f"expected [B, T >= n_past + n_future = {num_frames}, H, W, C]"
            )
        frames = frames[:, :num_frames]
        cond = batch.get("cond")
        cond = None if (cond is None or not cfg.cond_dim) else cond[:, :num_frames]
        mask_key, loss_key = jax.random.split(jax.random.fold_in(key, state.step))
        tfr, beta, lr = tfr_fn(state.step), beta_fn(state.step), lr_fn(state.step)
        tf_mask = teacher_forcing_mask(mask_key, tfr, frames.shape[0], num_frames, n_past, mode)

        def loss_and_grad(batch_stats, frames, cond, mask, loss_key):
            def loss(params):
                return rollout_loss(params, batch_stats, frames, cond, mask, loss_key, beta,
                                    model_cfg=cfg, n_past=n_past, unroll=unroll, free_bits=free_bits, remat=remat)

            (_, (metrics, new_batch_stats)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
            return new_batch_stats, grads, metrics

        def batch_grads(batch_stats, frames, cond, mask, loss_key):
            # The masked rollout gives the teacher-forced path's numbers when every input is the
            # ground truth; branching to that path (lax.cond) cost more on a CPU than it saved.
            return loss_and_grad(batch_stats, frames, cond, None if teacher_forced_only else mask, loss_key)

        if accum == 1:
            new_batch_stats, grads, metrics = batch_grads(state.batch_stats, frames, cond, tf_mask, loss_key)
        else:
            def micro_step(batch_stats, micro, i):
                return batch_grads(batch_stats, micro["frames"], micro["cond"], micro["mask"],
                                   jax.random.fold_in(loss_key, i))

            new_batch_stats, grads, metrics = accumulate_gradients(
                micro_step, state.batch_stats, {"frames": frames, "cond": cond, "mask": tf_mask}, accum)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = opt_state.last_finite  # apply_if_finite skipped the update when False
        batch_stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_batch_stats, state.batch_stats)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        metrics = dict(
            metrics,
            beta=beta,
            tfr=tfr,
            lr=jnp.asarray(lr, jnp.float32),
            finite=finite.astype(jnp.float32),
            nonfinite_count=opt_state.notfinite_count,
        )
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)
