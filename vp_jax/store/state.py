"""TrainState and its creation: parameters, BatchNorm running statistics, optimiser state.

The optimiser is one Adam over all parameters (docs/model.md) wrapped in ``optax.apply_if_finite``:
an update whose gradients hold a NaN/Inf is skipped (parameters and Adam moments unchanged);
after ``train.max_nonfinite`` consecutive skips optax gives up and applies it -- the training
loop is expected to stop the run before that (``metrics['nonfinite_count']``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from vp_jax.config import RunConfig, TrainConfig
from vp_jax.models.cvae import init_variables
from vp_jax.models.schedules import learning_rate_schedule


class TrainState(struct.PyTreeNode):
    """Everything a train step reads and writes; a pytree (``tx`` is static).

    Attributes:
      step: int32 scalar, iterations done so far (drives the lr, beta and tfr schedules).
      params: ``{'encoder', 'decoder', 'frame_predictor', 'posterior'[, 'prior']}`` parameter trees.
      batch_stats: BatchNorm running statistics (``{'mean', 'var'}`` leaves), same layout.
      opt_state: state of :attr:`tx` (``optax.ApplyIfFiniteState`` around Adam's).
      tx: the optimiser (static: not a pytree leaf).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """``apply_if_finite(adam(lr_schedule, beta1, beta2), max_nonfinite)``."""
    adam = optax.adam(learning_rate_schedule(train), b1=train.beta1, b2=train.beta2)
    return optax.apply_if_finite(adam, train.max_nonfinite)


def create_train_state(run: RunConfig, key: jax.Array) -> TrainState:
    """A freshly initialised :class:`TrainState` of ``run.model`` and ``run.train``'s optimiser
    (parameters drawn from ``key``, step 0)."""
    variables = init_variables(run.model, key)
    tx = make_optimizer(run.train)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        tx=tx,
    )
