"""VGG-64 encoder and decoder with skip connections (docs/model.md, the original ``models/vgg_64.py``).

Stage widths come from ``ModelConfig.enc_widths`` ``(w1, w2, w3, w4)``, default
``(64, 128, 256, 512)``; the decoder mirrors them.  Both networks accept an optional time axis:
frames ``[B, T, 64, 64, C]`` are encoded with per-time-step BatchNorm statistics (as if the
original had called the encoder once per frame).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from vp_jax.models.condition import ConditionField
from vp_jax.models.kernels import pool_2x2, upsample_2x
from vp_jax.models.layers import (
    SAME_3X3,
    BatchNorm,
    Conv,
    Dtype,
    VGGLayer,
    gather_steps,
    weight_init,
)

#: number of vgg_layers per encoder stage (64, 32, 16, 8 pixels).
ENCODER_STAGE_DEPTHS = (2, 2, 3, 3)
#: the condition field feeds the decoder stages up to this size (8, 16, 32): at 64 pixels it
#: would cost as much as the three smaller stages together, and the 32-pixel stage already
#: places things to within two pixels.
FIELD_MAX_SIZE = 32


def _default_time_axis(x: jax.Array, base_ndim: int, time_axis):
    """``'auto'``: axis 1 when ``x`` has one more axis than an un-timed input, else none."""
    if time_axis == "auto":
        return 1 if x.ndim == base_ndim + 1 else None
    return time_axis


class Encoder(nn.Module):
    """Frame ``[..., 64, 64, C]`` -> (h ``[..., g_dim]`` in (-1, 1), 4 skip tensors).

    Skips (pre-pool stage outputs): ``[..., 64, 64, w1]``, ``[..., 32, 32, w2]``,
    ``[..., 16, 16, w3]``, ``[..., 8, 8, w4]``.  The last stage is a 4x4 VALID conv to
    ``g_dim`` -> BatchNorm -> tanh.  With ``return_input`` the input frame itself (float32) comes
    first in the skip tuple: the pixels a compositing decoder copies (:class:`Decoder`).
    """

    widths: Sequence[int] = (64, 128, 256, 512)
    g_dim: int = 128
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    return_input: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, time_axis="auto"):
        """``x``: ``[B, H, W, C]`` or ``[B, T, H, W, C]`` (``time_axis`` 'auto' -> 1, or an int, or None)."""
        time_axis = _default_time_axis(x, 4, time_axis)
        bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
        skips = [x.astype(jnp.float32)] if self.return_input else []
        for stage, (width, depth) in enumerate(zip(self.widths, ENCODER_STAGE_DEPTHS)):
            if stage > 0:
                x = pool_2x2(x)
            for i in range(depth):
                x = VGGLayer(width, **bn, name=f"c{stage + 1}_{i}")(x, train=train, time_axis=time_axis)
            skips.append(x)
        x = pool_2x2(x)  # 4 x 4
        x = Conv(self.g_dim, (4, 4), ((0, 0), (0, 0)), self.dtype, name="c5")(x)  # 1 x 1
        x = BatchNorm(self.bn_momentum, self.bn_eps, self.dtype, name="c5_bn")(
            x, train=train, time_axis=time_axis
        )
        h = jnp.tanh(x).reshape(x.shape[:-3] + (self.g_dim,))
        return h, tuple(skips)


class Decoder(nn.Module):
    """(g ``[..., g_dim]``, skips as returned by :class:`Encoder`) -> frame ``[..., 64, 64, C]`` in (0, 1).

    4x4 transposed conv g_dim -> w4 (1x1 -> 4x4) -> BN -> LeakyReLU; then at 8, 16, 32 and 64
    pixels: nearest x2 upsample, concat ``[upsampled, skip]`` on channels, vgg_layers
    ``(w4, w4, w3)``, ``(w3, w3, w2)``, ``(w2, w1)``, ``(w1,)``; last a 3x3 transposed conv
    (stride 1, pad 1) to ``channels`` and a sigmoid.

    Two optional pathways (both off in the SVG/lab model):

    * ``cond_channels > 0``: a :class:`~vp_jax.models.condition.ConditionField` of the frame's
      condition ``cond`` is concatenated to the upsampled input of the stages at 8, 16 and 32 pixels.
    * ``composite``: ``skips[0]`` is the skip frame's pixels (``Encoder(return_input=True)``); the
      last conv gives one more channel, a mask logit m, and the output is
      ``sigmoid(m) * rgb + (1 - sigmoid(m)) * skips[0]``: the decoder paints only what changes
      and copies the rest from the frame whose skips it has (as CDNA/SAVP's compositing).
      With ``field_g`` the field reads ``[cond, g]``: what the predictor (and through it the
      latent) says reaches every pixel too, so it can place what the condition does not.
    * ``transforms`` = K > 0 (with ``composite``): K normalised separable ``kernel_size``² kernels,
      a linear function of ``g``, and mask features: the :class:`Compositor` makes the frame from them and
      the previous frame.
    """

    widths: Sequence[int] = (64, 128, 256, 512)
    channels: int = 3
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    cond_channels: int = 0
    cond_hidden: int = 32
    composite: bool = False
    transforms: int = 0
    kernel_size: int = 7
    field_g: bool = False

    @nn.compact
    def __call__(
        self, g: jax.Array, skips: Sequence[jax.Array], *, train: bool, time_axis="auto", skip_index=None, cond=None
    ):
        """``g``: ``[B, g_dim]`` or ``[B, T, g_dim]``; returns float32 ``[B, (T,) 64, 64, channels]``.
        ``cond``: ``g``'s leading shape + ``[cond_dim]`` (only with ``cond_channels``). With
        ``transforms`` the parts for the :class:`Compositor`: ``painted``, ``reference`` (the skip
        frame), ``features`` (``[..., 64, 64, MASK_FEATURES]``), ``rows`` and ``cols`` (``[..., K, k]``:
        separable kernels, :func:`transform_frames`).

        Time-major steps with shared skips: ``g`` ``[T, B, g_dim]`` with ``time_axis=0``, skips
        ``[U, B, H, W, C]`` and ``skip_index`` a static tuple of T entries (step t uses skip
        frame ``skip_index[t]``); the skip half of each stage's first convolution is computed
        once per skip frame (:class:`~vp_jax.models.layers.SkipConcatConv`).
        """
        if skip_index is not None and time_axis != 0:
            raise ValueError("Decoder: skip_index needs time-major input (time_axis=0)")
        time_axis = _default_time_axis(g, 2, time_axis)
        skips = tuple(skips)
        if self.composite:
            reference, skips = skips[0], skips[1:]
            if skip_index is not None and tuple(skip_index) != tuple(range(reference.shape[0])):
                reference = gather_steps(reference, tuple(int(i) for i in skip_index))
        field = None
        if self.cond_channels:
            if cond is None:
                raise ValueError("Decoder: cond_channels > 0 needs the condition (cond)")
            field = ConditionField(self.cond_channels, self.cond_hidden, name="cond_field")
            field_input = jnp.concatenate([cond, g.astype(jnp.float32)], axis=-1) if self.field_g else cond
        w1, w2, w3, w4 = self.widths
        bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
        x = g.reshape(g.shape[:-1] + (1, 1, g.shape[-1]))
        # A stride-1 'VALID' transposed conv = a conv padded by k - 1 (same kernel, same parameters).
        x = Conv(w4, (4, 4), ((3, 3), (3, 3)), self.dtype, name="upc1")(x)  # 4 x 4
        x = BatchNorm(self.bn_momentum, self.bn_eps, self.dtype, name="upc1_bn")(
            x, train=train, time_axis=time_axis
        )
        x = nn.leaky_relu(x, negative_slope=0.2)
        # Stages at 8, 16, 32, 64 pixels: each consumes the encoder skip of the same size.
        stage_widths = ((w4, w4, w3), (w3, w3, w2), (w2, w1), (w1,))
        for stage, (skip, outs) in enumerate(zip(reversed(skips), stage_widths)):
            x = upsample_2x(x)
            if field is not None and x.shape[-2] <= FIELD_MAX_SIZE:
                x = jnp.concatenate([x, field(field_input, x.shape[-2]).astype(x.dtype)], axis=-1)
            # concat([x, skip]) feeds the first vgg_layer; SkipConcatConv never builds it.
            for i, width in enumerate(outs):
                x = VGGLayer(width, **bn, name=f"upc{stage + 2}_{i}")(
                    x,
                    train=train,
                    time_axis=time_axis,
                    skip=skip if i == 0 else None,
                    skip_index=skip_index if i == 0 else None,
                )
        extra = MASK_FEATURES if self.transforms else 1 if self.composite else 0
        x = Conv(self.channels + extra, (3, 3), SAME_3X3, self.dtype, name="upc5_out")(x).astype(jnp.float32)  # = ConvTranspose SAME
        rgb = nn.sigmoid(x[..., : self.channels])
        if not self.composite:
            return rgb
        if not self.transforms:
            mask = nn.sigmoid(x[..., self.channels :])
            return mask * rgb + (1.0 - mask) * reference
        k = self.kernel_size
        logits = nn.Dense(self.transforms * 2 * k, kernel_init=weight_init, bias_init=_identity_bias(2 * self.transforms, k),
                          name="kernels")(g.astype(jnp.float32))
        kernels = nn.softmax(logits.reshape(g.shape[:-1] + (self.transforms, 2, k)), axis=-1)
        return {"painted": rgb, "reference": reference, "features": x[..., self.channels :],
                "rows": kernels[..., 0, :], "cols": kernels[..., 1, :]}


#: Channels of the decoder's last convolution that feed the :class:`Compositor`'s mask.
MASK_FEATURES = 8


class Compositor(nn.Module):
    """The frame from the decoder's parts and the previous frame ``prev`` (with ``transforms``).

    ``prev`` is moved by each of the K kernels (:func:`transform_frames`); a small convolutional
    head on ``[decoder features, prev]`` gives a softmax mask over [painted, skip frame, K moved
    copies of prev], and the frame is their mix. The head sees ``prev`` itself, so it finds the
    things to move where they are now; the kernels come from ``g``, so the latent can say how
    they move (CDNA, Finn et al. 2016). ``prev`` is the model's own previous prediction after the
    context, in training as in generation (:func:`vp_jax.models.rollout.previous_frame`): moved
    pixels keep their look because the model learns to move what it drew.
    """

    transforms: int = 4
    hidden: int = 16

    @nn.compact
    def __call__(self, parts: dict, prev: jax.Array) -> jax.Array:
        prev = prev.astype(jnp.float32)
        x = jnp.concatenate([parts["features"], prev], axis=-1)
        x = nn.relu(Conv(self.hidden, (3, 3), SAME_3X3, jnp.float32, name="mask_hidden")(x))
        mask = nn.softmax(Conv(2 + self.transforms, (3, 3), SAME_3X3, jnp.float32, name="mask")(x), axis=-1)
        moved = transform_frames(prev, parts["rows"], parts["cols"])  # [..., K, H, W, C]
        images = jnp.concatenate([parts["painted"][..., None, :, :, :], parts["reference"][..., None, :, :, :], moved],
                                 axis=-4)
        return jnp.einsum("...mhwc,...hwm->...hwc", images, mask)


def _identity_bias(num: int, size: int):
    """Logits of ``num`` 1-D kernels that start near the identity (the centre tap ~e^3 times the others)."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.tile(jnp.zeros((size,), dtype).at[size // 2].set(3.0), num)

    return init


def transform_frames(frames: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """``frames [..., H, W, C]`` moved by K separable kernels ``rows[..., K, :] (x) cols[..., K, :]``
    (each of odd size k) -> ``[..., K, H, W, C]``.

    ``out[k, h, w] = sum_{i,j} rows[k, i] cols[k, j] frames[h + i - k//2, w + j - k//2]`` (edge pixels
    repeated outside the frame): weight at offset (i, j) from the centre moves the picture by
    (-i, -j) pixels. A one-hot pair is a pure translation, a spread one a blur; separable, the
    kernel costs 2k shifted copies of the frame instead of k².
    """
    size = rows.shape[-1]
    r = size // 2
    h, w = frames.shape[-3:-1]
    lead = [(0, 0)] * (frames.ndim - 3)
    padded = jnp.pad(frames, lead + [(0, 0), (r, r), (0, 0)], mode="edge")
    across = jnp.stack([padded[..., :, j : j + w, :] for j in range(size)], axis=-4)  # [..., k, H, W, C]
    moved = jnp.einsum("...jhwc,...kj->...khwc", across, cols)  # [..., K, H, W, C]
    padded = jnp.pad(moved, lead + [(0, 0), (r, r), (0, 0), (0, 0)], mode="edge")
    down = jnp.stack([padded[..., i : i + h, :, :] for i in range(size)], axis=-4)  # [..., K, k, H, W, C]
    return jnp.einsum("...kihwc,...ki->...khwc", down, rows)
