"""LSTMs of the SVG model (docs/model.md, the original ``models/lstm.py``), with explicit state.

Every network is ``Linear embed (no activation) -> N LSTM cells -> head``.  The recurrent state
is an explicit pytree passed in and returned (never module state): a tuple with one ``(c, h)``
pair of float32 ``[B, hidden]`` arrays per layer, zeros at the start of every sequence
(:func:`zero_lstm_state`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vp_jax.models.layers import (
    BatchNorm,
    Dtype,
    bias_init,
    torch_uniform_init,
    weight_init,
)

LSTMState = tuple  # ((c, h), ...) one pair per layer, each [B, hidden]


def zero_lstm_state(batch_size: int, hidden: int, layers: int) -> LSTMState:
    """All-zero state of an ``layers``-deep stack: ``((c, h), ...)`` with ``[B, hidden]`` float32."""
    zeros = jnp.zeros((batch_size, hidden), jnp.float32)
    return tuple((zeros, zeros) for _ in range(layers))


def reparameterize(key: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from ``key``; shapes ``[B, z_dim]``."""
    eps = jax.random.normal(key, mu.shape, jnp.float32)
    return mu + jnp.exp(0.5 * logvar) * eps


class TorchLSTMCell(nn.Module):
    """``torch.nn.LSTMCell``: gates in PyTorch's order (i, f, g, o), weights U(±1/sqrt(hidden)).

    Parameters ``ih/kernel [in, 4H]``, ``ih/bias [4H]``, ``hh/kernel [H, 4H]`` and, when
    ``torch_biases`` (PyTorch's layout: input *and* hidden bias vectors), ``hh/bias [4H]`` --
    the redundant second bias makes the parameter count match PyTorch's exactly; without it
    the cell computes the same function class with 4H fewer parameters.
    """

    features: int
    torch_biases: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry, x: jax.Array):
        """``carry`` = (c, h) ``[B, H]``, ``x`` ``[B, in]`` -> ((c', h'), h')."""
        c, h = carry
        init = torch_uniform_init(self.features)
        dense = dict(features=4 * self.features, kernel_init=init, bias_init=init, dtype=self.dtype)
        gates = nn.Dense(use_bias=True, name="ih", **dense)(x) + nn.Dense(
            use_bias=self.torch_biases, name="hh", **dense
        )(h)
        gates = gates.astype(jnp.float32)  # cell state stays float32 under mixed precision
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h


class _Recurrent(nn.Module):
    """Shared trunk: embed -> ``layers`` cells; returns (new state, top hidden ``[B, hidden]``)."""

    hidden: int
    layers: int
    torch_biases: bool = True
    dtype: Dtype = jnp.float32

    def trunk(self, state: LSTMState, x: jax.Array):
        x = nn.Dense(self.hidden, kernel_init=weight_init, bias_init=bias_init, dtype=self.dtype, name="embed")(x)
        new_state = []
        for i in range(self.layers):
            carry, x = TorchLSTMCell(self.hidden, self.torch_biases, self.dtype, name=f"lstm_{i}")(state[i], x)
            new_state.append(carry)
        return tuple(new_state), x


class LSTMStack(_Recurrent):
    """Frame predictor: embed -> cells -> ``Linear(hidden -> out)`` -> [BatchNorm1d] -> tanh.

    ``bn_head`` adds the lab's BatchNorm1d before the tanh (SVG has none).
    """

    out_features: int = 128
    bn_head: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, state: LSTMState, x: jax.Array, *, train: bool):
        """``x`` ``[B, in]`` -> (new state, g ``[B, out_features]`` in (-1, 1))."""
        state, top = self.trunk(state, x)
        head = nn.Dense(self.out_features, kernel_init=weight_init, bias_init=bias_init, dtype=self.dtype, name="head")
        y = head(top)
        if self.bn_head:
            y = BatchNorm(self.bn_momentum, self.bn_eps, self.dtype, name="head_bn")(y, train=train)
        return state, jnp.tanh(y.astype(jnp.float32))


class GaussianLSTM(_Recurrent):
    """Posterior / learned prior: embed -> cells -> ``Linear`` heads for mu and log sigma^2."""

    z_dim: int = 64
    logvar_init: float = 0.0  # bias of the log-variance head at initialisation (0: the original's)

    @nn.compact
    def __call__(self, state: LSTMState, x: jax.Array, key: jax.Array | None = None):
        """``x`` ``[B, in]`` -> (new state, z, mu, logvar), each ``[B, z_dim]`` float32.

        ``z`` is the reparameterised sample drawn with ``key`` (None when no key is given,
        e.g. the prior during training, whose sample the loss never uses).
        """
        state, top = self.trunk(state, x)
        head = dict(kernel_init=weight_init, bias_init=bias_init, dtype=self.dtype)
        mu = nn.Dense(self.z_dim, name="mu", **head)(top).astype(jnp.float32)
        lv_head = dict(head, bias_init=nn.initializers.constant(self.logvar_init))
        logvar = nn.Dense(self.z_dim, name="logvar", **lv_head)(top).astype(jnp.float32)
        z = None if key is None else reparameterize(key, mu, logvar)
        return state, z, mu, logvar
