"""Gradient accumulation: the gradient of a batch computed over k micro-batches, one at a time.

Only one micro-batch's activations are alive at a time, so a batch of B takes about the memory
of a batch of B / k (plus a second copy of the gradients). Micro-batch ``i`` holds the rows
``i, i + k, i + 2k, ...`` of the batch: with the batch split over devices (each device holding a
contiguous block of rows) every device then holds its own share of every micro-batch, and no
rows move between devices.

For a loss that is a mean over the batch's rows, the mean of the k micro-batches' gradients (and
losses) is the big batch's, up to float summation order (``tests/test_memory_options.py``). The
model's train step (``train.grad_accum``) is such a mean except for what couples the rows of a
batch -- see :func:`vp_jax.training.step.make_train_step`: BatchNorm normalises each micro-batch
with its own statistics, and free bits clamp the KL averaged over a micro-batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vp_jax.errors import ConfigError


def check_accumulation(batch_size: int, steps: int, field: str = "train.grad_accum") -> int:
    """``steps`` as an int, or a one-line :class:`ConfigError` naming ``field``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"config.{field} = {steps!r}: expected an integer >= 1")
    if batch_size % steps:
        raise ConfigError(
            f"config.{field} = {steps}: expected a divisor of train.batch_size ({batch_size}): "
            "every micro-batch has the same size"
        )
    return int(steps)


def split_microbatches(batch, steps: int):
    """``[B, ...]`` leaves -> ``[steps, B / steps, ...]``; micro-batch ``i`` = rows ``i::steps``."""

    def split(x):
        b = x.shape[0]
        return jnp.swapaxes(x.reshape((b // steps, steps) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulate_gradients(fn, carry, batch, steps: int, unroll=1):
    """Run ``fn(carry, micro_batch, i) -> (carry, grads, metrics)`` over ``steps`` micro-batches
    of ``batch`` in order (:func:`split_microbatches`), threading ``carry`` (e.g. BatchNorm running
    statistics); return ``(carry, mean of grads, mean of metrics)``.

    A rolled ``lax.scan`` (``unroll`` 1): the loop body's buffers serve every micro-batch, so
    one micro-batch's activations are alive at a time. Unrolled, XLA:CPU keeps them all (measured:
    a batch of 32 of a small model plans 875 MB of temporaries in one piece, 829 MB in 4
    unrolled micro-batches, 222 MB in a rolled loop of 4, which ran 2.3x slower than the one
    piece: XLA:CPU's convolution gradients are slow inside a loop).
    """
    micro = split_microbatches(batch, steps)
    first = jax.tree.map(lambda x: x[0], micro)
    _, grads_shape, metrics_shape = jax.eval_shape(fn, carry, first, jnp.int32(0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, metrics_shape))

    def body(acc, xs):
        carry, sums = acc
        i, mb = xs
        carry, grads, metrics = fn(carry, mb, i)
        return (carry, jax.tree.map(jnp.add, sums, (grads, metrics))), None

    (carry, (grads, metrics)), _ = jax.lax.scan(
        body, (carry, zeros), (jnp.arange(steps, dtype=jnp.int32), micro),
        unroll=unroll,
    )
    return carry, jax.tree.map(lambda g: g / steps, grads), jax.tree.map(lambda m: m / steps, metrics)
