"""Autoregressive prediction and teacher-forced reconstruction, jitted for evaluation.

Prediction (:func:`make_generate_fn`) is :func:`vp_jax.models.rollout.generate`: as the
original's ``generate`` / the lab's ``pred`` (docs/model.md), n_past context frames in, T - n_past
predicted frames out, z from the prior, the encoder fed the model's own predictions.
Reconstruction (:func:`make_reconstruct_fn`) is the training rollout's posterior pass.

BatchNorm (``bn_mode``): 'inference' uses the running statistics (what the lab evaluates);
'batch_stats' uses the statistics of each batch the networks see, without keeping any update
(what SVG's generation script did by leaving the networks in training mode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vp_jax.config import BN_MODES, ModelConfig
from vp_jax.errors import ConfigError
from vp_jax.models.cvae import check_n_past
from vp_jax.models.losses import kl_terms
from vp_jax.models.rollout import Pass, rollout
from vp_jax.models.rollout import generate as generate_frames


def evaluation_key(seed: int) -> jax.Array:
    """The key eval.py draws its samples from for a run of ``config.seed`` = ``seed`` (generation
    call i uses ``fold_in(key, i)``)."""
    return jax.random.fold_in(jax.random.key(seed), 7919)


def make_generate_fn(model_cfg: ModelConfig, n_past: int, num_samples: int = 1, bn_mode: str = "inference"):
    """Jitted ``generate(params, batch_stats, frames, cond, key) -> pred`` of the model
    ``model_cfg`` from ``n_past`` context frames.

    Args of ``generate``:
      frames: ``[B, T, 64, 64, C]`` uint8 or float in [0, 1]; only the first ``n_past`` frames
        are read, ``T`` sets how many frames are predicted.
      cond: ``[B, T, cond_dim]`` (ignored, may be None, when ``cond_dim`` is 0).
      key: PRNG key; sample i uses ``fold_in(key, i)``, so sample i is the same whatever
        ``num_samples`` is (best-of-N includes the one-sample lab prediction).

    Returns float32 ``pred`` ``[num_samples, B, T - n_past, 64, 64, C]``: predictions of frames
    n_past .. T-1, one independent sample per key (``vmap`` over the sample keys).
    """
    if bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode = {bn_mode!r}: expected one of {BN_MODES}")
    if num_samples < 1:
        raise ConfigError(f"num_samples = {num_samples!r}: expected an integer >= 1")
    check_n_past(model_cfg, n_past)
    train = bn_mode == "batch_stats"  # batch statistics: BatchNorm in training mode, updates dropped

    def generate(params, batch_stats, frames, cond, key):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_samples))
        return generate_frames(params, batch_stats, frames, cond, keys, model_cfg=model_cfg, n_past=n_past, train=train)

    return jax.jit(generate)


def make_reconstruct_fn(model_cfg: ModelConfig, n_past: int, bn_mode: str = "inference"):
    """Jitted ``reconstruct(params, batch_stats, frames, cond, key) -> (x_hat, kl, kl_dim)``: the
    posterior pass, teacher forced (the training rollout with every encoder input the ground
    truth and z_t drawn from q(z_t | x_{<=t})), without updating anything.

    ``frames`` ``[B, T, 64, 64, C]``, ``cond`` ``[B, T, cond_dim]``.  Returns float32 ``x_hat``
    ``[B, T - n_past, 64, 64, C]`` (frames n_past .. T-1 as the decoder reconstructs them when
    the latent sees the target), ``kl`` ``[B, T - n_past]`` (KL(q || p) of those frames,
    summed over the latent dimensions) and ``kl_dim`` ``[B, z_dim]`` (per dimension, averaged over
    those frames).  Beside the prior rollout of :func:`make_generate_fn`
    it tells which part is weak: a poor reconstruction is the decoder's (or the data's), a
    good reconstruction with a poor rollout is the prior's, the conditions' or exposure bias.
    """
    if bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode = {bn_mode!r}: expected one of {BN_MODES}")
    check_n_past(model_cfg, n_past)

    def reconstruct(params, batch_stats, frames, cond, key):
        outputs, _ = rollout(params, batch_stats, frames, cond, key,
                             Pass(model_cfg, n_past, train=bn_mode == "batch_stats"))
        x_hat = jnp.swapaxes(outputs["x_hat"][n_past - 1 :], 0, 1)
        terms = kl_terms(model_cfg, outputs["q"], outputs["p"])
        kl = jnp.swapaxes(terms["kl_per_sample"][n_past - 1 :], 0, 1)
        return x_hat, kl, jnp.mean(terms["kl_elementwise"][n_past - 1 :], axis=0)

    return jax.jit(reconstruct)
