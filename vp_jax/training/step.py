"""The training objective (one ``lax.scan`` over frames) and the jitted train step.

Per iteration, over t = 1 .. T-1 (spec §3)::

    h_{t-1}, skip = enc(x_{t-1} if teacher forced else x̂_{t-1})
    h_t           = enc(x_t)                                   # ground truth
    z_t ~ q(z | h_t);  p = prior(h_{t-1}) or N(0, I)
    x̂_t           = dec(predictor([h_{t-1}, z_t, c_t]), skip)
    loss          = sum_t mean((x̂_t - x_t)^2) + beta * sum_t KL_t,   KL_t = sum_{batch,dims} KL(q||p) / B

Structure (for speed, with the original's numbers): all ground-truth frames are encoded **once**,
in one call whose BatchNorm statistics are per time step (what the original's per-frame calls
compute); the scan re-encodes only at steps where some sample is not teacher forced, on the
mixed batch the encoder actually sees (``lax.cond``), so its BatchNorm statistics are those of
that batch, as in the original.  An iteration whose encoder inputs are all ground truth (the lab's
tfr = 1) runs :func:`rollout_teacher_forced` instead: only the LSTMs in the scan, the decoder once
on all steps after it, and the skip half of its convolutions once per skip frame -- the same
numbers up to float summation order (``tests/test_speed.py``), about 2x faster on a CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vp_jax.config import TFR_MODES, ModelConfig, model_config
from vp_jax.errors import ConfigError, DataError
from vp_jax.models.cvae import ConditionalVAE, check_cond, check_n_past, initial_state
from vp_jax.schedules import kl_beta_schedule, learning_rate_schedule, teacher_forcing_schedule
from vp_jax.training.state import TrainState


def default_unroll():
    """``lax.scan`` unroll of the rollout: fully unrolled on CPU, a rolled loop elsewhere.

    XLA:CPU runs convolution *gradients* inside a while loop 10-30x slower than the same
    convolutions outside one (jax-ml/jax#12868; measured here: 10.4 s vs 0.7 s per step of a
    model with widths (16, 32, 64, 64)); unrolling the T-1 steps costs compile time only.
    """
    return True if jax.default_backend() == "cpu" else 1


def frames_to_float(frames: jax.Array) -> jax.Array:
    """uint8 frames in [0, 255] -> float32 in [0, 1] (on device); float input is cast to float32."""
    if frames.dtype == jnp.uint8:
        return frames.astype(jnp.float32) / 255.0
    return frames.astype(jnp.float32)


def _checked_inputs(cfg: ModelConfig, frames, cond, n_past: int):
    """Frames as float in [0, 1] and the checked condition; one-line errors for bad shapes."""
    x = frames_to_float(frames)
    batch, num_frames = x.shape[:2]
    if num_frames < 2 or not 1 <= n_past < num_frames:
        raise DataError(f"frames of shape {tuple(frames.shape)}: need T >= 2 and 1 <= n_past ({n_past}) < T")
    check_n_past(cfg, n_past)
    return x, check_cond(cfg, cond, batch, num_frames)


def kl_diagonal_gaussians(mu_q, logvar_q, mu_p, logvar_p) -> jax.Array:
    """Elementwise KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) =
    log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2."""
    return (
        0.5 * (logvar_p - logvar_q)
        + (jnp.exp(logvar_q) + jnp.square(mu_q - mu_p)) / (2.0 * jnp.exp(logvar_p))
        - 0.5
    )


def kl_standard_normal(mu, logvar) -> jax.Array:
    """Elementwise KL(N(mu, e^lv) || N(0, 1)) = -1/2 (1 + lv - mu^2 - e^lv)."""
    return -0.5 * (1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))


def kl_terms(cfg: ModelConfig, mu_q, lv_q, mu_p, lv_p) -> dict:
    """The KL of one step from ``[B, z_dim]`` Gaussians: ``kl`` (summed over dimensions, averaged
    over the batch), ``kl_per_sample`` ``[B]``, and two ``[z_dim]`` batch means of equal value that
    free bits need apart: ``kl_per_dim`` with the prior held fixed (``stop_gradient``: the
    posterior's part) and ``kl_prior_per_dim`` with the posterior held fixed (the learned prior's
    part; zeros for the fixed prior)."""
    sg = jax.lax.stop_gradient
    if cfg.learned_prior:
        kl = kl_diagonal_gaussians(mu_q, lv_q, mu_p, lv_p)
        kl_posterior = kl_diagonal_gaussians(mu_q, lv_q, sg(mu_p), sg(lv_p))
        kl_prior = kl_diagonal_gaussians(sg(mu_q), sg(lv_q), mu_p, lv_p)
    else:
        kl = kl_posterior = kl_standard_normal(mu_q, lv_q)
        kl_prior = jnp.zeros_like(kl)
    kl_per_sample = jnp.sum(kl, axis=-1)
    return {
        "kl": jnp.sum(kl_per_sample) / kl.shape[0],
        "kl_per_sample": kl_per_sample,
        "kl_per_dim": jnp.mean(kl_posterior, axis=0),
        "kl_prior_per_dim": jnp.mean(kl_prior, axis=0),
    }


def teacher_forcing_mask(key: jax.Array, tfr, batch_size: int, num_frames: int, n_past: int, mode: str) -> jax.Array:
    """Bool ``[B, T]``: True where the encoder input at step t is the ground truth x_{t-1}.

    ``mode`` 'iteration': one coin for the whole batch (the lab's ``random() < tfr``);
    'sample': one coin per sequence; 'frame': one coin per sequence and frame.  Entries
    t < n_past are always True (context frames are always ground truth).  ``tfr`` may be traced.
    """
    shapes = {"iteration": (1, 1), "sample": (batch_size, 1), "frame": (batch_size, num_frames)}
    if mode not in shapes:
        raise ConfigError(f"config.train.tfr.mode = {mode!r}: expected one of {TFR_MODES}")
    coins = jax.random.uniform(key, shapes[mode]) < tfr
    mask = jnp.broadcast_to(coins, (batch_size, num_frames))
    return mask | (jnp.arange(num_frames) < n_past)[None, :]


def rollout(
    params, batch_stats, frames, cond, tf_mask, key, *, model_cfg: ModelConfig, n_past: int, train: bool = True,
    unroll=None,
):
    """Run the model over a batch of sequences with the posterior (the training pass).

    Args:
      params, batch_stats: the model's variables.
      frames: ``[B, T, 64, 64, C]`` uint8 or float in [0, 1].
      cond: ``[B, T, cond_dim]`` (ignored, may be None, when ``cond_dim`` is 0).
      tf_mask: bool ``[B, T]``, True = the encoder input at step t is the ground truth x_{t-1};
        entries t < n_past are treated as True.
      key: PRNG key; split into one key per step for the posterior sample.
      train: BatchNorm in training mode (batch statistics, running statistics updated).
      unroll: ``lax.scan`` unroll (None = :func:`default_unroll`); the result does not depend on it.

    Returns:
      ``(outputs, new_batch_stats)``; ``outputs`` holds time-major per-step arrays for
      t = 1 .. T-1: ``x_hat`` ``[T-1, B, 64, 64, C]`` (predictions), ``g`` ``[T-1, B, g_dim]``
      (predictor outputs), ``encoder_input`` ``[T-1, B, 64, 64, C]`` (the frames whose encoding
      fed step t), ``reencoded`` bool ``[T-1]`` (the encoder ran inside the scan), ``mse``
      ``[T-1]`` and ``kl`` ``[T-1]`` (per-step loss terms), ``kl_per_sample`` ``[T-1, B]`` (KL
      summed over the latent dimensions), ``kl_per_dim`` and ``kl_prior_per_dim``
      ``[T-1, z_dim]`` (KL averaged over the batch, its sum over dimensions is ``kl``; see
      :func:`kl_terms`).  Unused outputs cost nothing under jit.
    """
    cfg = model_cfg
    model = ConditionalVAE(cfg)
    x, cond = _checked_inputs(cfg, frames, cond, n_past)
    batch, num_frames = x.shape[:2]

    def apply(bs, method, *args):
        variables = {"params": params, "batch_stats": bs}
        if train:
            out, updated = model.apply(variables, *args, method=method, mutable=["batch_stats"])
            return out, updated["batch_stats"]
        return model.apply(variables, *args, method=method), bs

    x_tm = jnp.swapaxes(x, 0, 1)  # [T, B, H, W, C]: the scan walks the leading axis
    # Every ground-truth frame encoded once; time axis 0 -> per-step BatchNorm statistics.
    (h_gt, skips_gt), bs = apply(batch_stats, ConditionalVAE.encode, x_tm, train, 0)
    teach = jnp.swapaxes(tf_mask.astype(bool), 0, 1) | (jnp.arange(num_frames) < n_past)[:, None]  # [T, B]

    # Skip used from step n_past on (before that: the skips of the step's own input frame).
    if cfg.skip_frame == "original":
        # The original keeps the skips of its last context-step encoder pass, made at step
        # n_past-1 on x_{n_past-2} (an off-by-one relative to the paper).
        fixed_skips = tuple(s[n_past - 2] for s in skips_gt)
    elif cfg.skip_frame == "last_context":
        fixed_skips = tuple(s[n_past - 1] for s in skips_gt)  # the paper: last context frame
    else:
        fixed_skips = None  # 'every_step': the skips of each step's input frame

    xs = {
        "t": jnp.arange(1, num_frames),
        "key": jax.random.split(key, num_frames - 1),
        "teach": teach[1:],
        "x_prev": x_tm[:-1],
        "x_target": x_tm[1:],
        "h_prev": h_gt[:-1],
        "h_target": h_gt[1:],
        "skips_prev": tuple(s[:-1] for s in skips_gt),
        "cond": None if cond is None else jnp.swapaxes(cond, 0, 1)[1:],  # c_t for step t
    }

    def step(carry, xs):
        states, x_hat_prev, bs = carry
        teach_t = xs["teach"]

        def ground_truth_encoding(bs):
            return xs["h_prev"], xs["skips_prev"], xs["x_prev"], bs

        def encode_mixed_batch(bs):
            x_in = jnp.where(teach_t[:, None, None, None], xs["x_prev"], x_hat_prev)
            (h, skips), bs = apply(bs, ConditionalVAE.encode, x_in, train, None)
            return h, skips, x_in, bs

        all_teacher_forced = jnp.all(teach_t)
        h_in, skips_in, x_in, bs = jax.lax.cond(all_teacher_forced, ground_truth_encoding, encode_mixed_batch, bs)
        if fixed_skips is None:
            skips = skips_in
        else:
            skips = tuple(jnp.where(xs["t"] < n_past, a, b) for a, b in zip(skips_in, fixed_skips))

        (post_state, z, mu_q, lv_q), bs = apply(
            bs, ConditionalVAE.infer_posterior, states["posterior"], xs["h_target"], xs["key"]
        )
        (prior_state, _, mu_p, lv_p), bs = apply(bs, ConditionalVAE.infer_prior, states["prior"], h_in, None)
        (pred_state, g), bs = apply(bs, ConditionalVAE.predict, states["predictor"], h_in, z, xs["cond"], train)
        x_hat, bs = apply(bs, ConditionalVAE.decode, g, skips, train, xs["cond"])

        mse = jnp.mean(jnp.square(x_hat - xs["x_target"]))
        new_states = {"predictor": pred_state, "posterior": post_state, "prior": prior_state}
        out = {
            "x_hat": x_hat,
            "g": g,
            "encoder_input": x_in,
            "reencoded": jnp.logical_not(all_teacher_forced),
            "mse": mse,
            **kl_terms(cfg, mu_q, lv_q, mu_p, lv_p),
        }
        return (new_states, x_hat, bs), out

    carry = (initial_state(cfg, batch), jnp.zeros_like(x_tm[0]), bs)
    (_, _, bs), outputs = jax.lax.scan(step, carry, xs, unroll=default_unroll() if unroll is None else unroll)
    return outputs, bs


def skip_frame_indices(skip_frame: str, n_past: int, num_frames: int) -> tuple[int, ...]:
    """For steps t = 1 .. T-1, the frame whose encoder skips feed the decoder when every
    encoder input is the ground truth: x_{t-1} during the context (t < n_past), then the
    fixed skip frame ('original': n_past-2, 'last_context': n_past-1) or x_{t-1} ('every_step')."""
    fixed = {"original": n_past - 2, "last_context": n_past - 1}.get(skip_frame)
    return tuple(t - 1 if (t < n_past or fixed is None) else fixed for t in range(1, num_frames))


def rollout_teacher_forced(params, batch_stats, frames, cond, key, *, model_cfg: ModelConfig, n_past: int, train: bool = True):
    """:func:`rollout` when every encoder input is the ground truth (``tf_mask`` all True).

    Same outputs, loss, gradients and BatchNorm statistics (up to float summation order), cheaper:
    no frame depends on a prediction, so only the LSTMs run in the ``lax.scan``; the decoder runs
    **once** on all T-1 steps after it (time-major, per-step BatchNorm statistics, running
    statistics updated in time order), and the skip half of its first convolution at each
    resolution is computed once per distinct skip frame instead of once per step
    (:class:`vp_jax.models.layers.SkipConcatConv`).
    """
    cfg = model_cfg
    model = ConditionalVAE(cfg)
    x, cond = _checked_inputs(cfg, frames, cond, n_past)
    batch, num_frames = x.shape[:2]

    def apply(bs, method, *args):
        variables = {"params": params, "batch_stats": bs}
        if train:
            out, updated = model.apply(variables, *args, method=method, mutable=["batch_stats"])
            return out, updated["batch_stats"]
        return model.apply(variables, *args, method=method), bs

    x_tm = jnp.swapaxes(x, 0, 1)  # [T, B, H, W, C]
    (h_gt, skips_gt), bs = apply(batch_stats, ConditionalVAE.encode, x_tm, train, 0)
    xs = {
        "key": jax.random.split(key, num_frames - 1),
        "h_prev": h_gt[:-1],
        "h_target": h_gt[1:],
        "cond": None if cond is None else jnp.swapaxes(cond, 0, 1)[1:],
    }

    def step(carry, xs):
        states, bs = carry
        (post_state, z, mu_q, lv_q), bs = apply(
            bs, ConditionalVAE.infer_posterior, states["posterior"], xs["h_target"], xs["key"]
        )
        (prior_state, _, mu_p, lv_p), bs = apply(bs, ConditionalVAE.infer_prior, states["prior"], xs["h_prev"], None)
        (pred_state, g), bs = apply(bs, ConditionalVAE.predict, states["predictor"], xs["h_prev"], z, xs["cond"], train)
        new_states = {"predictor": pred_state, "posterior": post_state, "prior": prior_state}
        return (new_states, bs), (g, kl_terms(cfg, mu_q, lv_q, mu_p, lv_p))

    (_, bs), (g, kls) = jax.lax.scan(step, (initial_state(cfg, batch), bs), xs)

    index = skip_frame_indices(cfg.skip_frame, n_past, num_frames)
    frames_used = sorted(set(index))
    lo, hi = frames_used[0], frames_used[-1] + 1
    if frames_used == list(range(lo, hi)):
        skips = tuple(s[lo:hi] for s in skips_gt)
    else:
        skips = tuple(jnp.stack([s[i] for i in frames_used]) for s in skips_gt)
    local = tuple(frames_used.index(i) for i in index)
    x_hat, bs = apply(bs, ConditionalVAE.decode_steps, g, skips, local, train, xs["cond"])
    mse = jnp.mean(jnp.square(x_hat - x_tm[1:]), axis=(1, 2, 3, 4))
    outputs = {
        "x_hat": x_hat,
        "g": g,
        "encoder_input": x_tm[:-1],
        "reencoded": jnp.zeros((num_frames - 1,), bool),
        "mse": mse,
        **kls,
    }
    return outputs, bs


def rollout_loss(
    params, batch_stats, frames, cond, tf_mask, key, beta, *, model_cfg: ModelConfig, n_past: int, unroll=None,
    free_bits: float = 0.0,
):
    """The optimised objective: ``sum_t mse_t + beta * sum_t KL_t`` over t = 1 .. T-1.

    With ``free_bits`` = lambda > 0 the KL term is ``sum_t sum_d max(KL_{t,d}, lambda)``, where
    ``KL_{t,d}`` is the KL of latent dimension d at step t averaged over the batch (Kingma et al.
    2016): the first lambda nats of every dimension are free, so the posterior is not pushed all
    the way onto the prior and the latent keeps carrying information (a remedy for KL collapse).
    The clamp holds back the posterior only: a learned prior gets the plain KL's gradient at every
    value, so that it keeps learning where the posterior puts z (otherwise, below lambda, nothing
    would train it and samples at test time would come from an untrained prior).

    Returns ``(loss, (metrics, new_batch_stats))``; metrics: ``loss`` (the sum above), ``mse`` and
    ``kl`` (means over the T-1 steps; ``kl`` is the true KL, free bits or not).  Arguments as
    :func:`rollout`; ``beta`` may be traced.  ``tf_mask=None`` means all True and runs
    :func:`rollout_teacher_forced` (same numbers, faster).
    """
    if tf_mask is None:  # every encoder input is the ground truth: the cheaper, equivalent rollout
        outputs, new_batch_stats = rollout_teacher_forced(
            params, batch_stats, frames, cond, key, model_cfg=model_cfg, n_past=n_past, train=True
        )
    else:
        outputs, new_batch_stats = rollout(
            params, batch_stats, frames, cond, tf_mask, key, model_cfg=model_cfg, n_past=n_past, train=True, unroll=unroll
        )
    if free_bits > 0:
        # Only the posterior's part is clamped at lambda nats a dimension: a learned prior keeps
        # following the posterior below lambda too (its gradient is the plain KL's; the added
        # term is 0 in value, so the loss is still sum max(KL, lambda)).
        kl_prior = outputs["kl_prior_per_dim"]
        kl_term = jnp.sum(jnp.maximum(outputs["kl_per_dim"], free_bits)) + jnp.sum(kl_prior - jax.lax.stop_gradient(kl_prior))
    else:
        kl_term = jnp.sum(outputs["kl"])
    loss = jnp.sum(outputs["mse"]) + beta * kl_term
    metrics = {"loss": loss, "mse": jnp.mean(outputs["mse"]), "kl": jnp.mean(outputs["kl"])}
    return loss, (metrics, new_batch_stats)


def always_teacher_forced(config: ml_collections.ConfigDict) -> bool:
    """True when the teacher-forcing ratio is 1 at every step (the lab's default: start 1, no
    decay): every encoder input is then the ground truth and no mask needs to be drawn."""
    tfr = config.train.tfr
    return float(tfr.start) >= 1.0 and (float(tfr.decay_step) == 0.0 or float(tfr.lower_bound) >= 1.0)


def make_train_step(config: ml_collections.ConfigDict, unroll=None):
    """Jitted ``step(state, batch, key) -> (state, metrics)``; ``state`` is donated.

    ``batch``: ``{'frames': [B, T, 64, 64, C] uint8 or float, 'cond': [B, T, cond_dim]}``; the
    first ``n_past + n_future`` frames are used.  The teacher-forcing mask is drawn from ``key``
    with the tfr schedule's value at ``state.step`` (mode ``train.tfr.mode``); beta and the
    learning rate are the schedules' values at ``state.step`` -- all traced, so the step compiles
    once per batch shape.

    metrics: ``loss``, ``mse``, ``kl`` (see :func:`rollout_loss`), ``beta``, ``tfr``, ``lr``
    (schedule value at this step), ``finite`` (1.0 when the gradients were finite and the update
    was applied; 0.0 when they were not and the update was skipped -- unless
    ``nonfinite_count`` exceeds ``train.max_nonfinite``, when optax applies it anyway) and
    ``nonfinite_count`` (consecutive non-finite updates; the loop should stop at
    ``max_nonfinite``).  BatchNorm running statistics are only kept from finite steps.
    ``unroll``: the rollout scan's unroll (None = :func:`default_unroll`).
    """
    cfg = model_config(config)
    n_past = int(config.n_past)
    num_frames = n_past + int(config.n_future)
    mode = config.train.tfr.mode
    lr_fn = learning_rate_schedule(config)
    beta_fn = kl_beta_schedule(config)
    tfr_fn = teacher_forcing_schedule(config)
    teacher_forced_only = always_teacher_forced(config)
    free_bits = float(config.train.kl.get("free_bits", 0.0))
    loss_and_grad = jax.value_and_grad(
        functools.partial(rollout_loss, model_cfg=cfg, n_past=n_past, unroll=unroll, free_bits=free_bits), has_aux=True
    )

    def step(state: TrainState, batch: dict, key: jax.Array):
        frames = batch["frames"]
        if frames.ndim != 5 or frames.shape[1] < num_frames:
            raise DataError(
                f"batch['frames'] of shape {tuple(frames.shape)}: "
                f"expected [B, T >= n_past + n_future = {num_frames}, H, W, C]"
            )
        frames = frames[:, :num_frames]
        cond = batch.get("cond")
        cond = None if (cond is None or not cfg.cond_dim) else cond[:, :num_frames]
        mask_key, loss_key = jax.random.split(key)
        tfr, beta, lr = tfr_fn(state.step), beta_fn(state.step), lr_fn(state.step)
        tf_mask = teacher_forcing_mask(mask_key, tfr, frames.shape[0], num_frames, n_past, mode)
        args = (state.params, state.batch_stats, frames, cond, tf_mask, loss_key, beta)
        if teacher_forced_only:
            (_, (metrics, new_batch_stats)), grads = loss_and_grad(*args[:4], None, *args[5:])
        else:
            # An iteration whose encoder inputs are all ground truth takes the cheaper rollout (same
            # numbers); the cond wraps the whole loss-and-gradient, so neither branch has to keep
            # the other's intermediate values for the backward pass.
            (_, (metrics, new_batch_stats)), grads = jax.lax.cond(
                jnp.all(tf_mask), lambda *a: loss_and_grad(*a[:4], None, *a[5:]), loss_and_grad, *args
            )
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = opt_state.last_finite  # apply_if_finite skipped the update when False
        batch_stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_batch_stats, state.batch_stats)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        metrics = dict(
            metrics,
            beta=beta,
            tfr=tfr,
            lr=jnp.asarray(lr, jnp.float32),
            finite=finite.astype(jnp.float32),
            nonfinite_count=opt_state.notfinite_count,
        )
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)
