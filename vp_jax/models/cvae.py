"""ConditionalVAE: the SVG-LP networks (+ action/position condition) behind one Linen module.

The module owns five submodules, whose parameter subtrees carry their names: ``encoder``,
``decoder``, ``frame_predictor``, ``posterior`` and (learned prior only) ``prior``.  It has no
recurrent state of its own: each method maps explicit inputs (and an explicit LSTM state) to
outputs, so the rollout over frames (:mod:`vp_jax.models.rollout`, for training and
``vp_jax.models.generation`` for prediction) is a ``lax.scan`` whose carry holds the LSTM states and the
BatchNorm running statistics.  Call the methods through ``model.apply(variables, ...,
method=ConditionalVAE.encode, mutable=['batch_stats'])``.

One frame step t (docs/model.md)::

    h_{t-1}, skip = encode(x_{t-1} or x̂_{t-1})
    z_t, mu_q, lv_q = infer_posterior(h_t)          # h_t = encode(x_t), ground truth
    mu_p, lv_p      = infer_prior(h_{t-1})          # or N(0, I)
    g_t             = predict([h_{t-1}, z_t, c_t])
    x̂_t             = decode(g_t, skip)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from vp_jax.config import ModelConfig
from vp_jax.errors import ConfigError, DataError
from vp_jax.models.lstm import GaussianLSTM, LSTMStack, zero_lstm_state
from vp_jax.models.vgg64 import Compositor, Decoder, Encoder


def initial_state(cfg: ModelConfig, batch_size: int) -> dict:
    """Zero LSTM states ``{'predictor', 'posterior', 'prior'}`` for a new batch of sequences.

    The fixed-prior model has no prior network: its ``'prior'`` entry is the empty tuple.
    """
    return {
        "predictor": zero_lstm_state(batch_size, cfg.rnn_size, cfg.predictor_layers),
        "posterior": zero_lstm_state(batch_size, cfg.rnn_size, cfg.posterior_layers),
        "prior": zero_lstm_state(batch_size, cfg.rnn_size, cfg.prior_layers) if cfg.learned_prior else (),
    }


class ConditionalVAE(nn.Module):
    """SVG-LP with an optional per-frame condition ``c_t`` (``cfg.cond_dim``; 0 = action-free)."""

    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        bn = dict(bn_momentum=c.bn_momentum, bn_eps=c.bn_eps, dtype=dtype)
        composite = c.output == "composite"
        self.encoder = Encoder(tuple(c.enc_widths), c.g_dim, **bn, return_input=composite)
        self.decoder = Decoder(
            tuple(c.enc_widths), c.channels, **bn, cond_channels=c.decoder_cond, cond_hidden=c.decoder_cond_hidden,
            composite=composite, transforms=c.transforms, kernel_size=c.transform_size, field_g=c.field_g,
        )
        if c.transforms:
            self.compositor = Compositor(c.transforms)
        if c.posterior_frames:
            self.motion_encoder = MotionEncoder(c.g_dim)
        self.frame_predictor = LSTMStack(
            c.rnn_size,
            c.predictor_layers,
            c.torch_lstm_biases,
            dtype,
            out_features=c.g_dim,
            bn_head=c.predictor_bn_head,
            bn_momentum=c.bn_momentum,
            bn_eps=c.bn_eps,
        )
        self.posterior = GaussianLSTM(c.rnn_size, c.posterior_layers, c.torch_lstm_biases, dtype, z_dim=c.z_dim,
                                      logvar_init=c.posterior_logvar_init)
        if c.learned_prior:
            self.prior = GaussianLSTM(c.rnn_size, c.prior_layers, c.torch_lstm_biases, dtype, z_dim=c.z_dim)

    def encode(self, x: jax.Array, train: bool, time_axis="auto"):
        """Frames ``[B, 64, 64, C]`` or ``[B, T, 64, 64, C]`` -> (h ``[..., g_dim]``, 4 skips).

        With a time axis (``'auto'`` = axis 1 of a 5-d input; pass 0 for time-major input) the
        BatchNorm statistics are per time step.
        """
        return self.encoder(x, train=train, time_axis=time_axis)

    def decode(self, g: jax.Array, skips, train: bool, cond: jax.Array | None = None, prev: jax.Array | None = None):
        """``g`` ``[B, g_dim]``, skips of one encoder pass, the frame's condition ``cond``
        ``[B, cond_dim]`` (read only with ``cfg.decoder_cond``) and the frame before ``prev``
        ``[B, 64, 64, C]`` (read only with ``cfg.transforms``) -> frame ``[B, 64, 64, C]`` float32 in (0, 1)."""
        out = self.decoder(g, skips, train=train, cond=self._decoder_cond(cond))
        return self.compose(out, prev) if self.cfg.transforms else out

    def decode_steps(self, g: jax.Array, skips, skip_index, train: bool, cond: jax.Array | None = None):
        """All steps at once: ``g`` ``[T, B, g_dim]`` (time-major), skips ``[U, B, H, W, C]`` of
        the U distinct skip frames, ``skip_index`` (static, T entries), ``cond`` ``[T, B, cond_dim]``
        -> ``[T, B, 64, 64, C]``; with ``cfg.transforms`` the decoder's parts for :meth:`compose`
        instead (which needs each step's previous frame).

        BatchNorm statistics per time step, running statistics updated in time order: the same
        as T calls of :meth:`decode`.
        """
        return self.decoder(g, skips, train=train, time_axis=0, skip_index=tuple(skip_index), cond=self._decoder_cond(cond))

    def compose(self, parts: dict, prev: jax.Array):
        """The frame from the decoder's parts and the previous frame (:class:`~vp_jax.models.vgg64.Compositor`)."""
        return self.compositor(parts, prev)

    def _decoder_cond(self, cond):
        return cond.astype(jnp.float32) if self.cfg.decoder_cond else None

    def predict(self, state, h: jax.Array, z: jax.Array, cond: jax.Array | None, train: bool):
        """Frame predictor on ``[h_{t-1}, z_t, c_t]``: -> (new state, g_t ``[B, g_dim]``).

        ``cond`` ``[B, cond_dim]`` is ignored (may be None) when ``cfg.cond_dim == 0``.
        """
        parts = [h.astype(jnp.float32), z]
        if self.cfg.cond_dim:
            parts.append(cond.astype(jnp.float32))
        return self.frame_predictor(state, jnp.concatenate(parts, axis=-1), train=train)

    def posterior_input(self, h_target: jax.Array, x_prev: jax.Array, x_target: jax.Array) -> jax.Array:
        """What the posterior sees of step t: ``h_t`` (SVG), and with ``cfg.posterior_frames`` beside
        it a code of the frame pair ``(x_{t-1}, x_t)`` [..., 64, 64, C] (:class:`MotionEncoder`)."""
        if not self.cfg.posterior_frames:
            return h_target
        return jnp.concatenate([h_target.astype(jnp.float32), self.motion_encoder(x_prev, x_target)], axis=-1)

    def infer_posterior(self, state, h_target: jax.Array, key: jax.Array | None):
        """q(z_t | x_{<=t}) on the ground-truth encoding ``h_t``: -> (state, z, mu, logvar) ``[B, z_dim]``."""
        return self.posterior(state, h_target.astype(jnp.float32), key)

    def infer_prior(self, state, h_prev: jax.Array, key: jax.Array | None, cond: jax.Array | None = None):
        """p(z_t | x_{<t}) on ``h_{t-1}`` (and ``c_t`` with ``cfg.prior_cond``): -> (state, z, mu, logvar).

        Fixed prior: mu = logvar = 0, z ~ N(0, I) from ``key`` (None without a key), state unchanged.
        """
        if self.cfg.learned_prior:
            h = h_prev.astype(jnp.float32)
            if self.cfg.prior_cond:
                h = jnp.concatenate([h, cond.astype(jnp.float32)], axis=-1)
            return self.prior(state, h, key)
        shape = h_prev.shape[:-1] + (self.cfg.z_dim,)
        zeros = jnp.zeros(shape, jnp.float32)
        z = None if key is None else jax.random.normal(key, shape, jnp.float32)
        return state, z, zeros, zeros

    def __call__(self, x_prev, x_target, cond, key, train: bool = False):
        """One frame step from zero states (touches every submodule; used to initialise).

        ``x_prev``, ``x_target`` ``[B, 64, 64, C]``, ``cond`` ``[B, cond_dim]`` -> x̂ ``[B, 64, 64, C]``.
        """
        state = initial_state(self.cfg, x_prev.shape[0])
        h_prev, skips = self.encode(x_prev, train)
        h_target, _ = self.encode(x_target, train)
        _, z, _, _ = self.infer_posterior(state["posterior"], self.posterior_input(h_target, x_prev, x_target), key)
        self.infer_prior(state["prior"], h_prev, None, cond)
        _, g = self.predict(state["predictor"], h_prev, z, cond, train)
        return self.decode(g, skips, train, cond, x_prev)


class MotionEncoder(nn.Module):
    """A code ``[..., features]`` of what changed from ``x_prev`` to ``x_next`` ``[..., 64, 64, C]``:
    four stride-2 convolutions of the pair and of its difference, then a linear layer (the
    inference network of SAVP, Lee et al. 2018, sees frame pairs the same way)."""

    features: int = 64

    @nn.compact
    def __call__(self, x_prev: jax.Array, x_next: jax.Array) -> jax.Array:
        x_prev, x_next = x_prev.astype(jnp.float32), x_next.astype(jnp.float32)
        x = jnp.concatenate([x_prev, x_next, x_next - x_prev], axis=-1)
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        for i, width in enumerate((16, 32, 64, 64)):
            x = nn.leaky_relu(nn.Conv(width, (4, 4), strides=2, padding=((1, 1), (1, 1)), name=f"conv{i}")(x), 0.2)
        return jnp.tanh(nn.Dense(self.features, name="out")(x.reshape(x.shape[0], -1))).reshape(lead + (self.features,))


def _dummy_inputs(cfg: ModelConfig, batch_size: int = 1):
    x = jnp.zeros((batch_size, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
    cond = jnp.zeros((batch_size, cfg.cond_dim), jnp.float32) if cfg.cond_dim else None
    return x, cond


# Initialisation runs once, and its program is mostly ~100 threefry draws whose LLVM
# optimisation dominates compile time (15 s -> 4 s for the tiny model on a 2-core CPU).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=8)
def _compiled_init(cfg: ModelConfig, key_type: jax.ShapeDtypeStruct):
    """The compiled initialiser of a model config for one kind of key (raw uint32[2] or typed)."""
    model = ConditionalVAE(cfg)
    x, cond = _dummy_inputs(cfg)
    lowered = jax.jit(functools.partial(model.init, train=False)).lower(key_type, x, x, cond, key_type)
    try:
        return lowered.compile(compiler_options=_FAST_COMPILE)
    except Exception:  # a backend that rejects the debug options: compile normally
        return lowered.compile()


def init_variables(cfg: ModelConfig, key: jax.Array) -> dict:
    """``{'params', 'batch_stats'}`` of a freshly initialised model, parameters drawn from ``key``
    (``jax.random.PRNGKey`` or ``jax.random.key``).

    Runs the model once on a batch of one zero frame, compiled without backend optimisation
    (same values, a fraction of the compile time).  Under a transformation (``jax.eval_shape``,
    ``jit``) it is traced like any function.
    """
    x, cond = _dummy_inputs(cfg)
    if isinstance(key, jax.core.Tracer):
        return dict(ConditionalVAE(cfg).init(key, x, x, cond, key, train=False))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    return dict(_compiled_init(cfg, jax.ShapeDtypeStruct(key.shape, key.dtype))(key, x, x, cond, key))


def abstract_variables(cfg: ModelConfig) -> dict:
    """Shapes/dtypes (``jax.ShapeDtypeStruct``) of :func:`init_variables`, without computing anything."""
    model = ConditionalVAE(cfg)
    x, cond = _dummy_inputs(cfg)
    key = jax.random.key(0)
    return dict(jax.eval_shape(functools.partial(model.init, train=False), key, x, x, cond, key))


def check_n_past(cfg: ModelConfig, n_past: int) -> None:
    """The original's skip frame x_{n_past-2} needs two context frames."""
    if cfg.skip_frame == "original" and n_past < 2:
        raise ConfigError(
            f"config.model.skip_frame = 'original' needs n_past >= 2 (got {n_past}): use 'last_context' or 'every_step'"
        )


def check_cond(cfg: ModelConfig, cond, batch_size: int, num_frames: int):
    """Validate ``cond`` ``[B, T, C]`` against ``cfg.cond_dim``; return it float32 (None when cond_dim 0)."""
    if not cfg.cond_dim:
        return None
    if cond is None or cond.ndim != 3 or cond.shape[-1] != cfg.cond_dim:
        got = None if cond is None else tuple(cond.shape)
        raise ConfigError(
            f"config.model.cond_dim = {cfg.cond_dim}: expected cond of shape [B, T, {cfg.cond_dim}], got {got}"
        )
    if cond.shape[0] != batch_size or cond.shape[1] < num_frames:
        raise DataError(
            f"cond of shape {tuple(cond.shape)} does not match frames [B={batch_size}, T={num_frames}, ...]"
        )
    return cond[:, :num_frames].astype(jnp.float32)
