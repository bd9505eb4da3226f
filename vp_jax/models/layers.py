"""Building blocks shared by the networks: initialisers, BatchNorm over a time axis, vgg_layer.

Shapes are channels-last: images ``[B, H, W, C]`` or, with a time axis, ``[B, T, H, W, C]``
(or time-major ``[T, B, H, W, C]``; the BatchNorm is told which axis is time).

Initialisation follows the original SVG code (docs/model.md): conv / transposed conv / linear weights
N(0, 0.02) and zero bias; BatchNorm scale N(1, 0.02) and zero shift.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vp_jax.models.kernels import conv, gather_steps

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
    frame.  Normalising all ``B*T`` frames with one set of statistics would not (docs/model.md).

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


SAME_3X3 = ((1, 1), (1, 1))


class Conv(nn.Module):
    """Stride-1 convolution with ``nn.Conv``'s parameters (``kernel [kh, kw, C, F]`` N(0, 0.02),
    ``bias [F]`` zero; same names, same initial values), computed by :func:`conv_nhwc`.

    A stride-1 ``nn.ConvTranspose`` (``transpose_kernel=False``) is this convolution with padding
    ``k - 1`` ('VALID') or ``(k - 1) // 2``, ``k // 2`` ('SAME'), same kernel.
    """

    features: int
    kernel_size: tuple = (3, 3)
    padding: tuple = SAME_3X3
    dtype: Dtype | None = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", weight_init, (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        dtype = self.dtype or x.dtype
        return conv(x.astype(dtype), kernel.astype(dtype), self.padding) + bias.astype(dtype)


class SkipConcatConv(nn.Module):
    """3x3 conv (stride 1, pad 1) of ``concat([x, skip], -1)``, without building the concatenation.

    Computed as ``conv(x, K[:, :, :C]) + conv(skip, K[:, :, C:]) + b``. The parameters are those of
    ``nn.Conv`` on the concatenation (``kernel [3, 3, C + S, F]``, ``bias [F]``, same names, same
    initialisation), and so is the function, up to float summation order. The point is the
    decoder (docs/model.md): one skip tensor serves many time steps (the original's fixed skip frame),
    so its half of the convolution -- a third of the decoder's FLOPs -- runs once per distinct
    skip frame instead of once per step.

    ``x``: ``[T, B, H, W, C]`` (time-major) or ``[B, H, W, C]``. ``skip``: either the same leading
    shape as ``x`` (``skip_index=None``), or ``[U, B, H, W, S]`` with ``skip_index`` a static tuple
    of T entries in ``range(U)``: step t uses ``skip[skip_index[t]]``.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array, skip_index=None) -> jax.Array:
        c, s = x.shape[-1], skip.shape[-1]
        kernel = self.param("kernel", weight_init, (3, 3, c + s, self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        dtype = self.dtype or x.dtype
        kernel = kernel.astype(dtype)
        y = conv(x.astype(dtype), kernel[:, :, :c], SAME_3X3)
        y_skip = conv(skip.astype(dtype), kernel[:, :, c:], SAME_3X3) + bias.astype(dtype)
        if skip_index is not None:
            skip_index = tuple(int(i) for i in skip_index)
            if len(skip_index) != x.shape[0]:
                raise ValueError(f"skip_index has {len(skip_index)} entries for {x.shape[0]} time steps")
            if skip_index != tuple(range(y_skip.shape[0])):
                y_skip = gather_steps(y_skip, skip_index)
        return y + y_skip


class VGGLayer(nn.Module):
    """``vgg_layer(c)`` of the original: 3x3 conv (stride 1, pad 1) -> BatchNorm -> LeakyReLU(0.2).

    Input ``[..., H, W, C_in]`` (any leading batch/time axes), output ``[..., H, W, features]``.
    With ``skip`` the input is ``concat([x, skip], -1)`` (see :class:`SkipConcatConv`).
    """

    features: int
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, time_axis: int | None = None, skip=None, skip_index=None
    ) -> jax.Array:
        if skip is not None:
            x = SkipConcatConv(self.features, self.dtype, name="conv")(x, skip, skip_index)
        else:
            x = Conv(self.features, (3, 3), SAME_3X3, self.dtype, name="conv")(x)
        x = BatchNorm(self.bn_momentum, self.bn_eps, self.dtype, name="bn")(
            x, train=train, time_axis=time_axis
        )
        return nn.leaky_relu(x, negative_slope=0.2)
