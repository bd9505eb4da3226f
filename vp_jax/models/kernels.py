"""The CPU kernels of the model's layers: stride-1 convolution, 2x2 max-pool, x2 upsampling and a
gather over time steps, each with a hand-written gradient that XLA:CPU runs faster than the one
autodiff derives (docs/performance.md), plus the fusion boundary ``materialized``.

Measured gain (lab model, batch 12, 2-core AMD EPYC, jaxlib 0.10.2, median of 5 steps,
``python benchmarks/train_step.py --config configs/lab_bair.py --batch 12 --steps 5`` against the same with ``VP_JAX_NO_CPU_KERNELS=1``):
13.0 s against 14.8 s a step, 12 % (process CPU time 25.4 s against 28.2 s); at batch 4 within
the noise (4.9 s against 4.8 s).

Each has the same values and gradients as the plain ``jax.lax`` / ``flax`` operation, which the
tests check. The layers call the switches ``conv``, ``gather_steps``, ``pool_2x2`` and
``upsample_2x``: these kernels on a CPU, the plain operations elsewhere
(:func:`vp_jax.runtime.backend.cpu_kernels`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from vp_jax.runtime.backend import cpu_kernels

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    lead = x.shape[:-3]
    y = jax.lax.conv_general_dilated(x.reshape((-1,) + x.shape[-3:]), kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS)
    return y.reshape(lead + y.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_nhwc(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    """Stride-1 cross-correlation, channels last: ``x`` ``[..., H, W, C]`` (any leading axes),
    ``kernel`` ``[kh, kw, C, F]``, ``padding`` ``((top, bottom), (left, right))``.

    The same values and gradients as ``lax.conv_general_dilated`` (what ``nn.Conv`` computes).
    Only the kernel gradient is written out by hand -- a convolution of the input, transposed to
    ``[C, H, W, N]``, with the output gradient as a ``[H', W', N, F]`` kernel -- because inside a
    ``lax.scan`` (the rollout over frames) XLA's CPU backend otherwise gives that convolution a
    layout its fast convolution kernels do not take and runs it 30-60x slower.
    """
    return _conv(x, kernel, padding)


def _conv_nhwc_fwd(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def materialized(a: jax.Array, witness: jax.Array) -> jax.Array:
    """``a``, computed into a buffer of its own before its consumer runs (CPU backend only).

    XLA fuses the elementwise ops that produce ``a`` (BatchNorm, LeakyReLU, their gradients) into
    a consumer that transposes it and then runs them in the transposed, strided order: 4x slower
    than computing ``a`` and transposing the result (262 vs 60 + 30 ms for a
    ``[132, 64, 64, 64]`` activation). A conditional is a fusion boundary XLA keeps, so ``a``
    passes through one: ``witness == witness`` (True unless ``witness`` is NaN, when every result
    is NaN anyway) selects ``a``, the other branch NaNs. ``optimization_barrier`` does not help:
    XLA removes it before fusing.
    """
    if not cpu_kernels():
        return a
    w = witness.reshape(-1)[0]
    return jax.lax.cond(w == w, lambda v: v, lambda v: jnp.full_like(v, jnp.nan), a)


def _conv_nhwc_bwd(padding, residuals, g):
    x, kernel = residuals
    dx = jax.vjp(lambda x: _conv(x, kernel, padding), x)[1](g)[0]
    x4 = materialized(x.reshape((-1,) + x.shape[-3:]), kernel)
    g4 = materialized(g.reshape((-1,) + g.shape[-3:]), kernel)
    # dK[i, j, c, f] = sum_{n, h, w} x_pad[n, h + i, w + j, c] * g[n, h, w, f]
    dk = jax.lax.conv_general_dilated(
        jnp.transpose(x4, (3, 1, 2, 0)), jnp.transpose(g4, (1, 2, 0, 3)), (1, 1), padding, dimension_numbers=_DIMENSIONS
    )
    return dx, jnp.transpose(dk, (1, 2, 0, 3)).astype(kernel.dtype)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    """The model's stride-1 convolution: :func:`conv_nhwc` (hand-written kernel gradient) with the
    CPU paths (:func:`vp_jax.runtime.backend.cpu_kernels`), ``lax.conv_general_dilated`` and its autodiff
    gradient on other backends."""
    return conv_nhwc(x, kernel, padding) if cpu_kernels() else _conv(x, kernel, padding)

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def take_steps(x: jax.Array, index: tuple[int, ...]) -> jax.Array:
    """``x[index]`` along the leading axis for a static ``index``: ``[U, ...] -> [len(index), ...]``.

    Its gradient sums the steps that share an entry of ``x`` as a chain of additions: XLA's CPU
    ``reduce`` over a leading axis (what autodiff of a broadcast or gather gives) runs ~40x slower
    than the same sum written as adds (114 ms vs 3 ms for ``[11, 4, 64, 64, 64]``).
    """
    return jnp.stack([x[i] for i in index])


def _take_steps_fwd(x, index):
    return take_steps(x, index), x.shape[0]


def _take_steps_bwd(index, size, g):
    zero = jnp.zeros(g.shape[1:], g.dtype)
    sums = [functools.reduce(jnp.add, [g[t] for t, i in enumerate(index) if i == u], zero) for u in range(size)]
    return (jnp.stack(sums),)


take_steps.defvjp(_take_steps_fwd, _take_steps_bwd)


def gather_steps(x: jax.Array, index: tuple[int, ...]) -> jax.Array:
    """``x[index]`` along the leading axis: :func:`take_steps` with the CPU paths, a plain stack
    (autodiff gradient) on other backends."""
    return take_steps(x, index) if cpu_kernels() else jnp.stack([x[i] for i in index])


def _pool_max_and_argmax(x: jax.Array):
    """Each 2x2 window's maximum and the row-major position (0..3) of its first maximum, both
    from the same four values (so the position always holds the maximum)."""
    a, b, c, d = (x[..., i::2, j::2, :] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    top, bottom = jnp.maximum(a, b), jnp.maximum(c, d)
    top_pos = jnp.where(b > a, jnp.int8(1), jnp.int8(0))  # a tie keeps the earlier position
    bottom_pos = jnp.where(d > c, jnp.int8(3), jnp.int8(2))
    return jnp.maximum(top, bottom), jnp.where(bottom > top, bottom_pos, top_pos)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2: ``[..., H, W, C] -> [..., H/2, W/2, C]``.

    Same values and gradients as ``nn.max_pool(x, (2, 2), strides=(2, 2))`` and PyTorch's
    ``MaxPool2d(2)``: each window's gradient goes to its first maximum in row-major order (ties
    are common where a frame is flat). Written out with its own backward pass because XLA's CPU
    ``select_and_scatter`` (the gradient of ``reduce_window``) is slow; the backward pass keeps
    only the int8 position of each maximum.
    """
    return _pool_max_and_argmax(x)[0]


def _max_pool_fwd(x):
    y, position = _pool_max_and_argmax(x)
    return y, position


def _max_pool_bwd(position, g):
    parts = [jnp.where(position == k, g, jnp.zeros((), g.dtype)) for k in range(4)]  # a, b, c, d
    rows = [jnp.stack(parts[2 * i : 2 * i + 2], axis=-2) for i in range(2)]  # [..., h, w, 2, c]
    dx = jnp.stack(rows, axis=-4)  # [..., h, 2, w, 2, c]
    *lead, h, _, w, _, c = dx.shape
    return (dx.reshape(*lead, 2 * h, 2 * w, c),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2: :func:`max_pool_2x2` with the CPU paths, ``nn.max_pool`` (the same
    values and gradients) on other backends."""
    if cpu_kernels():
        return max_pool_2x2(x)
    lead = x.shape[:-3]
    y = nn.max_pool(x.reshape((-1,) + x.shape[-3:]), (2, 2), strides=(2, 2))
    return y.reshape(lead + y.shape[1:])


@jax.custom_vjp
def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling (``nn.UpsamplingNearest2d(2)``): ``[..., H, W, C] -> [..., 2H, 2W, C]``.

    Its gradient (the sum of each 2x2 block) is written as four strided slices added, which XLA
    fuses into one elementwise loop; autodiff's ``reduce`` runs slower on the CPU backend.
    """
    return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


def _upsample_fwd(x):
    return upsample_nearest_2x(x), None


def _upsample_bwd(_, g):
    return (g[..., 0::2, 0::2, :] + g[..., 0::2, 1::2, :] + g[..., 1::2, 0::2, :] + g[..., 1::2, 1::2, :],)


upsample_nearest_2x.defvjp(_upsample_fwd, _upsample_bwd)


def upsample_2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling: :func:`upsample_nearest_2x` with the CPU paths, plain
    ``jnp.repeat`` (autodiff gradient) on other backends."""
    return upsample_nearest_2x(x) if cpu_kernels() else jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
