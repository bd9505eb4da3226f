"""Building blocks shared by the networks: initialisers, BatchNorm over a time axis, vgg_layer.

Shapes are channels-last: images ``[B, H, W, C]`` or, with a time axis, ``[B, T, H, W, C]``
(or time-major ``[T, B, H, W, C]``; the BatchNorm is told which axis is time).

Initialisation follows the original SVG code (spec §2): conv / transposed conv / linear weights
N(0, 0.02) and zero bias; BatchNorm scale N(1, 0.02) and zero shift.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any

#: conv, transposed conv and linear weights: N(0, 0.02) (the original's ``init_weights``).
weight_init = nn.initializers.normal(stddev=0.02)
#: every bias of a conv/linear layer and the BatchNorm shift start at zero.
bias_init = nn.initializers.zeros


def bn_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """BatchNorm scale N(1, 0.02), as the original's ``init_weights``."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def torch_uniform_init(fan: int):
    """PyTorch's default for LSTM weights and biases: U(-1/sqrt(fan), 1/sqrt(fan))."""
    bound = 1.0 / float(fan) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """BatchNorm with optional **per-time-step** statistics and PyTorch's running-stat update.

    Without a time axis this is plain BatchNorm: in training mode the input is normalised with
    the (biased) mean/variance over every axis but the last (features), and the running
    statistics move by ``r <- momentum * r + (1 - momentum) * stat`` where the variance fed to
    the running average is the *unbiased* one (n / (n - 1)), as ``torch.nn.BatchNorm*d`` does.

    With ``time_axis`` set (the index of the time axis of ``x``, e.g. 1 for ``[B, T, H, W, C]``,
    0 for time-major ``[T, B, H, W, C]``), the statistics are computed separately for every time
    step (over batch and space) and the running statistics are updated once per time step in
    time order -- exactly what PyTorch produces when the original calls the layer once per
    frame.  Normalising all ``B*T`` frames with one set of statistics would not (spec §3).

    The running statistics are not touched while the module is being initialised (like Flax's
    ``nn.BatchNorm`` and like PyTorch, where constructing a layer updates nothing).

    Attributes:
      momentum: Flax convention (0.9 = PyTorch momentum 0.1).
      epsilon: added to the variance (PyTorch default 1e-5).
      dtype: output dtype (statistics are always computed in float32); None = input dtype.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, time_axis: int | None = None) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", bn_scale_init, (features,), jnp.float32)
        shift = self.param("bias", bias_init, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        out_dtype = self.dtype or x.dtype
        xf = x.astype(jnp.float32)

        if not train:
            mean, var = ra_mean.value, ra_var.value
        else:
            if time_axis is not None:
                time_axis = time_axis % x.ndim
                if time_axis == x.ndim - 1:
                    raise ValueError("BatchNorm: the time axis cannot be the feature axis")
            axes = tuple(a for a in range(x.ndim - 1) if a != time_axis)
            mean = jnp.mean(xf, axis=axes, keepdims=True)
            # Two-pass variance (not E[x^2] - E[x]^2): robust when |mean| >> std.
            var = jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)
            n = 1
            for a in axes:
                n *= x.shape[a]
            if not self.is_initializing():
                # Per-step statistics [S, F] with S = 1 (no time axis) or T, in time order.
                step_mean = mean.reshape(-1, features)
                step_var = var.reshape(-1, features) * (n / max(n - 1, 1))
                new_mean, new_var = ra_mean.value, ra_var.value
                # One EMA update per time step, in order (T is static and small): bit-for-bit
                # the arithmetic of T successive PyTorch calls.
                for s in range(step_mean.shape[0]):
                    new_mean = self.momentum * new_mean + (1.0 - self.momentum) * step_mean[s]
                    new_var = self.momentum * new_var + (1.0 - self.momentum) * step_var[s]
                ra_mean.value, ra_var.value = new_mean, new_var

        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + shift
        return y.astype(out_dtype)


class VGGLayer(nn.Module):
    """``vgg_layer(c)`` of the original: 3x3 conv (stride 1, pad 1) -> BatchNorm -> LeakyReLU(0.2).

    Input ``[..., H, W, C_in]`` (any leading batch/time axes), output ``[..., H, W, features]``.
    """

    features: int
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, time_axis: int | None = None) -> jax.Array:
        x = nn.Conv(
            self.features,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=weight_init,
            bias_init=bias_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = BatchNorm(self.bn_momentum, self.bn_eps, self.dtype, name="bn")(
            x, train=train, time_axis=time_axis
        )
        return nn.leaky_relu(x, negative_slope=0.2)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2: ``[..., H, W, C] -> [..., H/2, W/2, C]``."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling (``nn.UpsamplingNearest2d(2)``): ``[..., H, W, C] -> [..., 2H, 2W, C]``."""
    return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
