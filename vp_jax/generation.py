"""Autoregressive prediction: n_past context frames in, T - n_past predicted frames out.

As the original's ``generate`` / the lab's ``pred`` (spec §4), with teacher forcing off:

* context steps t = 1 .. n_past-1: the posterior runs on the ground-truth encoding h_t to warm
  up the LSTMs (its sample feeds the predictor), the learned prior runs on h_{t-1} to warm up its
  own LSTM; no frame is decoded (the next input is the ground truth);
* prediction steps t = n_past .. T-1: the encoder sees x_{n_past-1} then the model's own
  predictions, z_t comes from the learned prior (or N(0, I)), x̂_t = dec(g_t, skip).

BatchNorm (``bn_mode``): 'inference' uses the running statistics (what the lab evaluates);
'batch_stats' uses the statistics of each batch the networks see, without keeping any update
(what SVG's generation script did by leaving the networks in training mode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vp_jax.config import BN_MODES, model_config
from vp_jax.errors import ConfigError, DataError
from vp_jax.models.cvae import ConditionalVAE, check_cond, check_n_past, initial_state
from vp_jax.training.step import frames_to_float


def make_generate_fn(config: ml_collections.ConfigDict, num_samples: int = 1, bn_mode: str = "inference"):
    """Jitted ``generate(params, batch_stats, frames, cond, key) -> pred``.

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
    cfg = model_config(config)
    n_past = int(config.n_past)
    check_n_past(cfg, n_past)
    train = bn_mode == "batch_stats"  # batch statistics: BatchNorm in training mode, updates dropped
    model = ConditionalVAE(cfg)

    def generate(params, batch_stats, frames, cond, key):
        batch, num_frames = frames.shape[:2]
        if num_frames <= n_past:
            raise DataError(f"frames of shape {tuple(frames.shape)}: need more than n_past = {n_past} frames")
        cond = check_cond(cfg, cond, batch, num_frames)
        cond_tm = None if cond is None else jnp.swapaxes(cond, 0, 1)  # [T, B, C]
        variables = {"params": params, "batch_stats": batch_stats}

        def apply(method, *args):
            if train:
                out, _ = model.apply(variables, *args, method=method, mutable=["batch_stats"])
                return out
            return model.apply(variables, *args, method=method)

        context = jnp.swapaxes(frames_to_float(frames[:, :n_past]), 0, 1)  # [n_past, B, H, W, C]
        # Context frames encoded once (per-step BatchNorm statistics in 'batch_stats' mode): the
        # encoding does not depend on the sample, so it stays outside the vmap over samples.
        h_ctx, skips_ctx = apply(ConditionalVAE.encode, context, train, 0)
        if cfg.skip_frame == "original":
            fixed_skips = tuple(s[n_past - 2] for s in skips_ctx)  # the original's x_{n_past-2}
        elif cfg.skip_frame == "last_context":
            fixed_skips = tuple(s[n_past - 1] for s in skips_ctx)
        else:
            fixed_skips = None

        def cond_at(t):
            return None if cond_tm is None else cond_tm[t]

        def one_sample(sample_key):
            keys = jax.random.split(sample_key, num_frames - 1)  # keys[t-1] for step t
            states = initial_state(cfg, batch)
            for t in range(1, n_past):  # context: warm up the LSTMs on the ground truth
                h_in = h_ctx[t - 1]
                states["posterior"], z, _, _ = apply(
                    ConditionalVAE.infer_posterior, states["posterior"], h_ctx[t], keys[t - 1]
                )
                states["prior"], _, _, _ = apply(ConditionalVAE.infer_prior, states["prior"], h_in, None)
                states["predictor"], _ = apply(ConditionalVAE.predict, states["predictor"], h_in, z, cond_at(t), train)

            def step(carry, xs):
                states, x_prev = carry
                key_t, c_t = xs
                h_in, skips_in = apply(ConditionalVAE.encode, x_prev, train, None)
                prior_state, z, _, _ = apply(ConditionalVAE.infer_prior, states["prior"], h_in, key_t)
                pred_state, g = apply(ConditionalVAE.predict, states["predictor"], h_in, z, c_t, train)
                x_hat = apply(ConditionalVAE.decode, g, skips_in if fixed_skips is None else fixed_skips, train, c_t)
                states = dict(states, predictor=pred_state, prior=prior_state)
                return (states, x_hat), x_hat

            xs = (keys[n_past - 1 :], None if cond_tm is None else cond_tm[n_past:])
            _, preds = jax.lax.scan(step, (states, context[n_past - 1]), xs)
            return jnp.swapaxes(preds, 0, 1)  # [B, T - n_past, H, W, C]

        sample_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_samples))
        return jax.vmap(one_sample)(sample_keys)

    return jax.jit(generate)


def make_reconstruct_fn(config: ml_collections.ConfigDict, bn_mode: str = "inference"):
    """Jitted ``reconstruct(params, batch_stats, frames, cond, key) -> (x_hat, kl)``: the
    posterior pass, teacher forced (the training rollout with every encoder input the ground
    truth and z_t drawn from q(z_t | x_{<=t})), without updating anything.

    ``frames`` ``[B, T, 64, 64, C]``, ``cond`` ``[B, T, cond_dim]``.  Returns float32 ``x_hat``
    ``[B, T - n_past, 64, 64, C]`` (frames n_past .. T-1 as the decoder reconstructs them when
    the latent sees the target) and ``kl`` ``[B, T - n_past]`` (KL(q || p) of those frames,
    summed over the latent dimensions).  Beside the prior rollout of :func:`make_generate_fn`
    it tells which part is weak: a poor reconstruction is the decoder's (or the data's), a
    good reconstruction with a poor rollout is the prior's, the conditions' or exposure bias.
    """
    from vp_jax.training.step import rollout_teacher_forced

    if bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode = {bn_mode!r}: expected one of {BN_MODES}")
    cfg = model_config(config)
    n_past = int(config.n_past)
    check_n_past(cfg, n_past)

    def reconstruct(params, batch_stats, frames, cond, key):
        outputs, _ = rollout_teacher_forced(
            params, batch_stats, frames, cond, key, model_cfg=cfg, n_past=n_past, train=bn_mode == "batch_stats"
        )
        x_hat = jnp.swapaxes(outputs["x_hat"][n_past - 1 :], 0, 1)
        kl = jnp.swapaxes(outputs["kl_per_sample"][n_past - 1 :], 0, 1)
        return x_hat, kl

    return jax.jit(reconstruct)
