"""A spatial pathway for the condition: the decoder sees *where* the condition puts things.

The lab model feeds ``c_t`` (action, end-effector position) only to the frame predictor LSTM,
whose output ``g_t`` is a 1x1 code; the decoder must then learn to turn a few numbers into the
pixel position of the gripper through a 1x1 -> 4x4 transposed convolution -- slow to learn, and
the usual result is a blurred arm.  :class:`ConditionField` gives the decoder that map
directly: a small MLP evaluated at every pixel of a stage on ``[u, v, c_t]`` (pixel coordinates
in [-1, 1] and the condition), whose output channels are concatenated to the stage's input.
Its first layer is linear in ``(u, v, c_t)``, so a hidden unit can respond to "this pixel is
where the end effector projects" for any camera that maps positions to pixels smoothly; nothing
about a particular camera or data set is built in (SPADE/CoordConv-style conditioning).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def pixel_grid(size: int) -> jax.Array:
    """Pixel centres of a ``size x size`` map as ``[size, size, 2]`` (u = column, v = row) in (-1, 1)."""
    c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0
    v, u = jnp.meshgrid(c, c, indexing="ij")
    return jnp.stack([u, v], axis=-1)


class ConditionField(nn.Module):
    """``cond [..., C]`` -> ``[..., size, size, channels]``: an MLP of ``[u, v, cond]`` at every pixel.

    ``relu(W_c c + W_uv (u, v) + b) -> relu(Dense) -> Dense(channels)``.  The condition term is
    computed once per frame and broadcast over the pixels.  Flax's default (LeCun-normal)
    initialisation, not the SVG N(0, 0.02): with inputs of unit scale the field then starts
    varying across the image instead of flat.
    """

    channels: int = 8
    hidden: int = 32

    @nn.compact
    def __call__(self, cond: jax.Array, size: int) -> jax.Array:
        cond = cond.astype(jnp.float32)
        h_cond = nn.Dense(self.hidden, name="cond")(cond)  # [..., hidden]
        h_grid = nn.Dense(self.hidden, use_bias=False, name="coords")(pixel_grid(size))  # [size, size, hidden]
        h = nn.relu(h_cond[..., None, None, :] + h_grid)
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(h))
        return nn.Dense(self.channels, name="out")(h)
