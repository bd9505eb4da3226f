"""The model run over frames: the one rollout that training, reconstruction and generation share.

One frame step t (docs/model.md)::

    h_{t-1}, skip = encode(x_{t-1}, or x̂_{t-1} when not teacher forced)
    z_t           ~ q(z | h_t)  (posterior, h_t = encode(x_t))   or   p(z | h_{t-1})  (prior)
    g_t           = predict([h_{t-1}, z_t, c_t])
    x̂_t           = decode(g_t, skip)

* :func:`rollout` -- the posterior pass of training (and of the teacher-forced reconstruction):
  z_t from q, every ground-truth frame encoded once; with a teacher-forcing mask the encoder
  re-encodes, inside the ``lax.scan``, only the steps where some sample gets its own prediction;
  without a mask (every input the ground truth) only the LSTMs run in the scan and the decoder
  runs once on all steps after it (same numbers, about 2x faster on a CPU).
* :func:`generate` -- prediction: the context frames warm up the LSTMs (posterior on the ground
  truth), then z_t from the prior and the encoder fed the model's own predictions.

Both return the Gaussians of q and p per step; the losses (:mod:`vp_jax.models.losses`) turn them into
the KL. Which frame's encoder skips the decoder gets is :func:`skip_source`, one rule for all.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vp_jax.config import ModelConfig
from vp_jax.errors import DataError
from vp_jax.models.cvae import ConditionalVAE, check_cond, check_n_past, initial_state
from vp_jax.runtime.backend import scan_unroll


def default_unroll():
    """``lax.scan`` unroll of the rollout: fully unrolled on CPU, a rolled loop elsewhere
    (:func:`vp_jax.runtime.backend.scan_unroll`).

    XLA:CPU runs convolution *gradients* inside a while loop 10-30x slower than the same
    convolutions outside one (jax-ml/jax#12868; measured here: 10.4 s vs 0.7 s per step of a
    model with widths (16, 32, 64, 64)); unrolling the T-1 steps costs compile time only.
    """
    return scan_unroll()


def frames_to_float(frames: jax.Array) -> jax.Array:
    """uint8 frames in [0, 255] -> float32 in [0, 1] (on device); float input is cast to float32."""
    if frames.dtype == jnp.uint8:
        return frames.astype(jnp.float32) / 255.0
    return frames.astype(jnp.float32)


def skip_source(skip_frame: str, n_past: int) -> int | None:
    """The context frame whose encoder skips feed the decoder from step ``n_past`` on, or None
    for 'every_step' (the skips of each step's own input frame).

    'last_context' (the paper): x_{n_past-1}. 'original': x_{n_past-2} -- the original code
    keeps the skips of its last context-step encoder pass, made at step n_past-1 on x_{n_past-2}
    (an off-by-one relative to the paper). Before step n_past every rule uses the step's input.
    """
    return {"original": n_past - 2, "last_context": n_past - 1}.get(skip_frame)


def skip_frame_indices(skip_frame: str, n_past: int, num_frames: int) -> tuple[int, ...]:
    """For steps t = 1 .. T-1 the frame whose skips feed the decoder when every encoder input is
    the ground truth: x_{t-1} during the context, then :func:`skip_source`."""
    fixed = skip_source(skip_frame, n_past)
    return tuple(t - 1 if (t < n_past or fixed is None) else fixed for t in range(1, num_frames))


#: The networks :func:`rollout` recomputes in the backward pass with ``remat=True``: the VGG
#: encoder and decoder, which hold nearly all of the activations (the LSTMs' are small).
REMAT_METHODS = ("encode", "decode", "decode_steps")


def _is_data(arg) -> bool:
    """An argument made of arrays only (traced through ``jax.checkpoint``); the others (train
    flags, time axes, static step indices) are static."""
    return all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree_util.tree_leaves(arg))


def _bind(cfg: ModelConfig, params, train: bool, remat: bool = False):
    """``apply(batch_stats, method, *args) -> (out, batch_stats)``: one call of a model method;
    in training mode BatchNorm uses batch statistics and the updated running statistics come back.
    With ``remat`` the :data:`REMAT_METHODS` run under ``jax.checkpoint``: their intermediate
    activations are not kept for the backward pass but computed again there."""
    model = ConditionalVAE(cfg)

    def call(params, batch_stats, method, *args):
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            out, updated = model.apply(variables, *args, method=method, mutable=["batch_stats"])
            return out, updated["batch_stats"]
        return model.apply(variables, *args, method=method), batch_stats

    def apply(batch_stats, method, *args):
        if not (remat and method.__name__ in REMAT_METHODS):
            return call(params, batch_stats, method, *args)
        static = tuple(i + 2 for i, a in enumerate(args) if not _is_data(a))
        checkpointed = jax.checkpoint(lambda p, bs, *a: call(p, bs, method, *a), static_argnums=static)
        return checkpointed(params, batch_stats, *args)

    return apply


def _inputs(cfg: ModelConfig, frames, cond, n_past: int):
    """Frames as float in [0, 1] and the checked condition; one-line errors for bad shapes."""
    x = frames_to_float(frames)
    batch, num_frames = x.shape[:2]
    if num_frames < 2 or not 1 <= n_past < num_frames:
        raise DataError(f"frames of shape {tuple(frames.shape)}: need T >= 2 and 1 <= n_past ({n_past}) < T")
    check_n_past(cfg, n_past)
    return x, check_cond(cfg, cond, batch, num_frames)


@dataclasses.dataclass(frozen=True)
class Pass:
    """How :func:`rollout` runs (static: part of what a jitted caller compiles for).

    ``train``: BatchNorm in training mode (batch statistics, running statistics updated).
    ``unroll``: ``lax.scan`` unroll of the masked path (None = :func:`default_unroll`); the result
    does not depend on it. ``remat``: recompute the encoder's and decoder's activations in the
    backward pass instead of keeping them (``jax.checkpoint``; less memory, about one more forward
    pass of them); the result does not depend on it.
    """

    model: ModelConfig
    n_past: int
    train: bool = True
    unroll: int | None = None
    remat: bool = False


def rollout(params, batch_stats, frames, cond, key, how: Pass, tf_mask=None):
    """The posterior pass over a batch of sequences (training; teacher-forced reconstruction).

    Args:
      params, batch_stats: the model's variables.
      frames: ``[B, T, 64, 64, C]`` uint8 or float in [0, 1].
      cond: ``[B, T, cond_dim]`` (ignored, may be None, when ``cond_dim`` is 0).
      key: PRNG key; split into one key per step for the posterior sample.
      how: the model, the context length and the static switches (:class:`Pass`).
      tf_mask: bool ``[B, T]``, True = the encoder input at step t is the ground truth x_{t-1}
        (entries t < n_past are treated as True); None = all True, the cheaper equivalent path.

    Returns ``(outputs, new_batch_stats)``; ``outputs`` holds time-major arrays for steps
    t = 1 .. T-1: ``x_hat`` ``[T-1, B, 64, 64, C]`` (predictions), ``target`` (the frames they
    predict), ``g`` ``[T-1, B, g_dim]`` (predictor outputs), ``encoder_input`` (the frames whose
    encoding fed step t), ``reencoded`` bool ``[T-1]`` (the encoder ran inside the scan), and
    ``q`` / ``p``: (mean, log-variance) pairs ``[T-1, B, z_dim]`` of the posterior and the prior
    (zeros for the fixed N(0, I) prior).
    """
    x, cond = _inputs(how.model, frames, cond, how.n_past)
    x_tm = jnp.swapaxes(x, 0, 1)  # [T, B, H, W, C]: the scan walks the leading axis
    apply = _bind(how.model, params, how.train, how.remat)
    # Every ground-truth frame encoded once; time axis 0 -> per-step BatchNorm statistics.
    (h_gt, skips_gt), bs = apply(batch_stats, ConditionalVAE.encode, x_tm, how.train, 0)
    h_post, bs = apply(bs, ConditionalVAE.posterior_input, h_gt[1:], x_tm[:-1], x_tm[1:])
    seq = {
        "x": x_tm, "h": h_gt, "h_post": h_post, "skips": skips_gt,
        "cond": None if cond is None else jnp.swapaxes(cond, 0, 1)[1:],  # c_t for step t
        "keys": jax.random.split(key, x.shape[1] - 1),
    }
    if tf_mask is None:
        outputs, bs = _teacher_forced(apply, bs, seq, how)
    else:
        outputs, bs = _masked(apply, bs, seq, how, tf_mask)
    return dict(outputs, target=x_tm[1:]), bs


def _posterior_step(apply, bs, states, h_in, h_target, z_key, c_t, train):
    """Posterior, prior and predictor of one step: -> (states, g_t, q, p, bs)."""
    (post_state, z, mu_q, lv_q), bs = apply(bs, ConditionalVAE.infer_posterior, states["posterior"], h_target, z_key)
    (prior_state, _, mu_p, lv_p), bs = apply(bs, ConditionalVAE.infer_prior, states["prior"], h_in, None, c_t)
    (pred_state, g), bs = apply(bs, ConditionalVAE.predict, states["predictor"], h_in, z, c_t, train)
    states = {"predictor": pred_state, "posterior": post_state, "prior": prior_state}
    return states, g, (mu_q, lv_q), (mu_p, lv_p), bs


def _teacher_forced(apply, bs, seq, how: Pass):
    """Every encoder input the ground truth: only the LSTMs in the scan; the decoder **once** on
    all T-1 steps after it (time-major, per-step BatchNorm statistics, running statistics updated
    in time order), the skip half of its first convolution at each resolution once per distinct
    skip frame (:class:`vp_jax.models.layers.SkipConcatConv`)."""
    cfg, n_past, train = how.model, how.n_past, how.train
    x_tm, skips_gt = seq["x"], seq["skips"]
    batch, num_frames = x_tm.shape[1], x_tm.shape[0]
    xs = {"key": seq["keys"], "h_prev": seq["h"][:-1], "h_target": seq["h_post"], "cond": seq["cond"]}

    def step(carry, xs):
        states, bs = carry
        states, g, q, p, bs = _posterior_step(apply, bs, states, xs["h_prev"], xs["h_target"], xs["key"], xs["cond"], train)
        return (states, bs), (g, q, p)

    (_, bs), (g, q, p) = jax.lax.scan(step, (initial_state(cfg, batch), bs), xs)

    index = skip_frame_indices(cfg.skip_frame, n_past, num_frames)
    frames_used = sorted(set(index))
    lo, hi = frames_used[0], frames_used[-1] + 1
    if frames_used == list(range(lo, hi)):
        skips = tuple(s[lo:hi] for s in skips_gt)
    else:
        skips = tuple(jnp.stack([s[i] for i in frames_used]) for s in skips_gt)
    local = tuple(frames_used.index(i) for i in index)
    x_hat, bs = apply(bs, ConditionalVAE.decode_steps, g, skips, local, train, seq["cond"])
    if cfg.transforms:
        x_hat = _compose_steps(apply, bs, x_hat, x_tm, n_past)
    outputs = {
        "x_hat": x_hat, "g": g, "q": q, "p": p, "encoder_input": x_tm[:-1],
        "reencoded": jnp.zeros((num_frames - 1,), bool),
    }
    return outputs, bs


def previous_frame(t, n_past: int, frames_prev, x_hat_prev):
    """The frame the compositor moves at step t: the true x_{t-1} during the context, the model's
    own x̂_{t-1} after it -- in training as in generation."""
    return jnp.where(t - 1 < n_past, frames_prev, x_hat_prev)


def _compose_steps(apply, bs, parts, x_tm, n_past):
    """The compositor over the steps in order, each moving the frame before it (:func:`previous_frame`)."""
    xs = {"t": jnp.arange(1, x_tm.shape[0]), "parts": parts, "x_prev": x_tm[:-1]}

    def step(x_hat_prev, xs):
        x_hat, _ = apply(bs, ConditionalVAE.compose, xs["parts"], previous_frame(xs["t"], n_past, xs["x_prev"], x_hat_prev))
        return x_hat, x_hat

    _, x_hat = jax.lax.scan(step, jnp.zeros_like(x_tm[0]), xs, unroll=default_unroll())
    return x_hat


def _masked(apply, bs, seq, how: Pass, tf_mask):
    """Teacher forcing by mask: every step encodes, inside the scan, the mixed batch the encoder
    actually sees, so its BatchNorm statistics are those of that batch, as in the original; a step
    whose samples are all teacher forced keeps the ground truth's encoding and running statistics
    instead (selected, not branched: a ``lax.cond`` here made a step 1.7x slower on a CPU)."""
    n_past, train, x_tm, skips_gt = how.n_past, how.train, seq["x"], seq["skips"]
    num_frames, batch = x_tm.shape[:2]
    teach = jnp.swapaxes(tf_mask.astype(bool), 0, 1) | (jnp.arange(num_frames) < n_past)[:, None]  # [T, B]
    fixed = skip_source(how.model.skip_frame, n_past)
    fixed_skips = None if fixed is None else tuple(s[fixed] for s in skips_gt)
    xs = {
        "t": jnp.arange(1, num_frames), "key": seq["keys"], "teach": teach[1:], "cond": seq["cond"],
        "x_prev": x_tm[:-1], "h_prev": seq["h"][:-1], "h_target": seq["h_post"],
        "skips_prev": tuple(s[:-1] for s in skips_gt),
    }

    def step(carry, xs):
        states, x_hat_prev, bs = carry
        teach_t = xs["teach"]

        x_in = jnp.where(teach_t[:, None, None, None], xs["x_prev"], x_hat_prev)
        (h, skips), mixed_bs = apply(bs, ConditionalVAE.encode, x_in, train, None)
        all_teacher_forced = jnp.all(teach_t)
        h_in, skips_in, bs = jax.tree.map(lambda gt, mixed: jnp.where(all_teacher_forced, gt, mixed),
                                          (xs["h_prev"], xs["skips_prev"], bs), (h, skips, mixed_bs))
        if fixed_skips is not None:
            skips_in = tuple(jnp.where(xs["t"] < n_past, a, b) for a, b in zip(skips_in, fixed_skips))
        states, g, q, p, bs = _posterior_step(apply, bs, states, h_in, xs["h_target"], xs["key"], xs["cond"], train)
        prev = previous_frame(xs["t"], n_past, xs["x_prev"], x_hat_prev)
        x_hat, bs = apply(bs, ConditionalVAE.decode, g, skips_in, train, xs["cond"], prev)
        out = {"x_hat": x_hat, "g": g, "q": q, "p": p, "encoder_input": x_in, "reencoded": jnp.logical_not(all_teacher_forced)}
        return (states, x_hat, bs), out

    carry = (initial_state(how.model, batch), jnp.zeros_like(x_tm[0]), bs)
    unroll = default_unroll() if how.unroll is None else how.unroll
    (_, _, bs), outputs = jax.lax.scan(step, carry, xs, unroll=unroll)
    return outputs, bs


def generate(params, batch_stats, frames, cond, keys, *, model_cfg: ModelConfig, n_past: int, train: bool = False):
    """Predict frames n_past .. T-1 from the first ``n_past`` of ``frames``, once per key.

    ``frames`` ``[B, T, 64, 64, C]`` (only the context is read; T sets the horizon), ``cond``
    ``[B, T, cond_dim]``, ``keys`` ``[N]`` PRNG keys, one per sample. Context steps
    t = 1 .. n_past-1 warm up the LSTMs (the posterior on the ground truth feeds the predictor;
    the learned prior runs on h_{t-1}); no frame is decoded there. Prediction steps: the encoder
    sees x_{n_past-1} then the model's own predictions, z_t comes from the prior. ``train``:
    BatchNorm on batch statistics, their updates dropped. Returns float32 ``[N, B, T - n_past, 64, 64, C]``.
    """
    cfg = model_cfg
    batch, num_frames = frames.shape[:2]
    if num_frames <= n_past:
        raise DataError(f"frames of shape {tuple(frames.shape)}: need more than n_past = {n_past} frames")
    check_n_past(cfg, n_past)
    cond = check_cond(cfg, cond, batch, num_frames)
    cond_tm = None if cond is None else jnp.swapaxes(cond, 0, 1)  # [T, B, C]
    bound = _bind(cfg, params, train)

    def apply(method, *args):  # every call on the given statistics: nothing is updated
        return bound(batch_stats, method, *args)[0]

    context = jnp.swapaxes(frames_to_float(frames[:, :n_past]), 0, 1)  # [n_past, B, H, W, C]
    # The context is encoded once (per-step BatchNorm statistics in training mode): the encoding
    # does not depend on the sample, so it stays outside the vmap over samples.
    h_ctx, skips_ctx = apply(ConditionalVAE.encode, context, train, 0)
    fixed = skip_source(cfg.skip_frame, n_past)
    fixed_skips = None if fixed is None else tuple(s[fixed] for s in skips_ctx)

    def cond_at(t):
        return None if cond_tm is None else cond_tm[t]

    def one_sample(sample_key):
        keys = jax.random.split(sample_key, num_frames - 1)  # keys[t-1] for step t
        states = initial_state(cfg, batch)
        for t in range(1, n_past):  # context: warm up the LSTMs on the ground truth
            h_in = h_ctx[t - 1]
            h_post = apply(ConditionalVAE.posterior_input, h_ctx[t], context[t - 1], context[t])
            states["posterior"], z, _, _ = apply(ConditionalVAE.infer_posterior, states["posterior"], h_post, keys[t - 1])
            states["prior"], _, _, _ = apply(ConditionalVAE.infer_prior, states["prior"], h_in, None, cond_at(t))
            states["predictor"], _ = apply(ConditionalVAE.predict, states["predictor"], h_in, z, cond_at(t), train)

        def step(carry, xs):
            states, x_prev = carry
            key_t, c_t = xs
            h_in, skips_in = apply(ConditionalVAE.encode, x_prev, train, None)
            prior_state, z, _, _ = apply(ConditionalVAE.infer_prior, states["prior"], h_in, key_t, c_t)
            pred_state, g = apply(ConditionalVAE.predict, states["predictor"], h_in, z, c_t, train)
            x_hat = apply(ConditionalVAE.decode, g, skips_in if fixed_skips is None else fixed_skips, train, c_t, x_prev)
            return (dict(states, predictor=pred_state, prior=prior_state), x_hat), x_hat

        xs = (keys[n_past - 1 :], None if cond_tm is None else cond_tm[n_past:])
        _, preds = jax.lax.scan(step, (states, context[n_past - 1]), xs)
        return jnp.swapaxes(preds, 0, 1)  # [B, T - n_past, H, W, C]

    return jax.vmap(one_sample)(keys)
