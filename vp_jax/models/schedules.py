"""Schedules as optax-style functions of the integer iteration ``step`` (usable under ``jit``).

Each ``*_schedule(train)`` takes the run's :class:`~vp_jax.config.TrainConfig` (``config.train``)
and returns ``fn(step) -> float32 scalar``; ``step`` may be a Python int or a traced int32, so the
train step compiles once however the values change.  Epoch-based schedules use
``epoch = step // train.epoch_size`` (the lab updates beta and tfr once per
epoch, docs/model.md).
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
import optax

from vp_jax.config import TrainConfig
from vp_jax.errors import ConfigError

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def learning_rate_schedule(t: TrainConfig) -> Schedule:
    """``train.lr_schedule``: 'constant' lr; 'cosine' decay to 0 over ``epochs * epoch_size``;
    'warmup_cosine' linear 0 -> lr over ``train.warmup_steps`` then cosine to 0 at the end."""
    total = t.epochs * t.epoch_size
    if t.lr_schedule == "constant":
        return optax.constant_schedule(t.lr)
    if t.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(t.lr, decay_steps=total)
    if t.lr_schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, t.lr, warmup_steps=t.warmup_steps, decay_steps=total)
    raise ConfigError(f"config.train.lr_schedule = {t.lr_schedule!r}: expected constant, cosine or warmup_cosine")


def frange_cycle_linear(n_iter: int, n_cycle: int, ratio: float, stop: float = 1.0) -> Callable:
    """Cyclical linear annealing of Fu et al. (2019), as the lab's ``frange_cycle_linear(n_iter,
    start=0, stop, n_cycle, ratio)``, evaluated at an index ``n`` instead of tabulated.

    The table has ``n_iter`` entries split into ``n_cycle`` periods of length ``P = n_iter /
    n_cycle``; cycle c starts at index ``floor(c * P)`` and rises from 0 by ``stop / (P * ratio)``
    per index until it would exceed ``stop``, then holds ``stop``.  Indices past the table read
    its last entry.
    """
    period = n_iter / n_cycle
    slope = stop / (period * ratio)
    starts = np.floor(np.arange(n_cycle) * period).astype(np.int32)  # static

    def fn(n):
        n = jnp.clip(jnp.asarray(n, jnp.int32), 0, n_iter - 1)
        # The table is written cycle by cycle, later cycles overwriting: index n belongs to the
        # last cycle that starts at or before it.
        cycle = jnp.sum(jnp.asarray(starts) <= n) - 1
        offset = n - jnp.asarray(starts)[cycle]
        return jnp.minimum(offset.astype(jnp.float32) * slope, stop).astype(jnp.float32)

    return fn


def kl_beta_schedule(t: TrainConfig) -> Schedule:
    """KL weight beta(step) from ``train.kl``: 'constant' = beta_max; 'monotonic' = one cycle of
    :func:`frange_cycle_linear`; 'cyclical' = ``cycles`` cycles.  ``per`` 'epoch': the table has
    ``epochs`` entries indexed by ``step // epoch_size`` (the lab); 'step': ``epochs * epoch_size``
    entries indexed by the step."""
    kl = t.kl
    if kl.schedule == "constant":
        return optax.constant_schedule(kl.beta_max)
    if kl.schedule not in ("monotonic", "cyclical"):
        raise ConfigError(f"config.train.kl.schedule = {kl.schedule!r}: expected cyclical, monotonic or constant")
    n_cycle = 1 if kl.schedule == "monotonic" else kl.cycles
    if kl.per == "epoch":
        table = frange_cycle_linear(t.epochs, n_cycle, kl.ratio, kl.beta_max)
        return lambda step: table(jnp.asarray(step) // t.epoch_size)
    if kl.per == "step":
        return frange_cycle_linear(t.epochs * t.epoch_size, n_cycle, kl.ratio, kl.beta_max)
    raise ConfigError(f"config.train.kl.per = {kl.per!r}: expected 'epoch' or 'step'")


def teacher_forcing_schedule(t: TrainConfig) -> Schedule:
    """Teacher-forcing ratio of the lab: ``start`` during epoch 0; at the end of every epoch
    e >= ``start_decay_epoch`` it becomes ``max(tfr - decay_step, lower_bound)``.

    In closed form, during epoch E with ``k = max(0, E - start_decay_epoch)`` decays done:
    ``start`` if k == 0 else ``max(start - k * decay_step, lower_bound)``.
    """
    tfr = t.tfr
    epoch_size = t.epoch_size
    start, step_down, floor, first = tfr.start, tfr.decay_step, tfr.lower_bound, tfr.start_decay_epoch

    def fn(step):
        epoch = jnp.asarray(step, jnp.int32) // epoch_size
        decays = jnp.maximum(epoch - first, 0)
        decayed = jnp.maximum(start - decays.astype(jnp.float32) * step_down, floor)
        return jnp.where(decays > 0, decayed, start).astype(jnp.float32)

    return fn
