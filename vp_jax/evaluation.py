"""Evaluation: jitted generation over a split, the lab metric, the paper's best-of-N, baselines.

The lab metric (docs/model.md): ``n_past`` context frames, predict frames ``n_past … n_eval-1``, one
sample, the encoder fed its own predictions, PSNR per frame = mean over channels of
10·log10(1/MSE_channel), averaged over frames and sequences.

Predictions are rounded to uint8 before they are scored, so every number in ``metrics.json``
can be recomputed exactly from ``predictions.npz`` (rounding moves PSNR by ~0.01 dB).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vp_jax import fileio
from vp_jax.fileio import json_number, json_numbers
from vp_jax import metrics as M
from vp_jax.generation import evaluation_key, make_generate_fn


@functools.cache
def _make_scorer(moving_threshold: float):
    """One jitted scorer per process and threshold (validation runs every epoch; compile it once)."""

    @jax.jit
    def score(pred, target, reference):
        """pred float [N, B, T, H, W, C] in [0, 1]; target uint8 [B, T, H, W, C]; reference uint8
        [B, H, W, C] (the last context frame) -> pred as uint8, PSNR, SSIM, moving-pixel PSNR [N, B, T]."""
        pred_u8 = M.to_uint8(pred)
        p = pred_u8.astype(jnp.float32) / 255.0
        t = target.astype(jnp.float32) / 255.0
        moving = M.moving_mask(t, reference.astype(jnp.float32) / 255.0, moving_threshold)
        tb = jnp.broadcast_to(t, p.shape)
        return pred_u8, M.psnr_per_frame(p, tb), M.ssim_per_frame(p, tb), M.psnr_masked_per_frame(p, t, moving), moving

    return score


def predict_and_score(
    run,
    params,
    batch_stats,
    source,
    *,
    key,
    num_samples: int = 1,
    bn_mode: str = "inference",
    batch_size: int = 32,
    max_batches: int = 0,
    shuffled_permutation: np.ndarray | None = None,
    posterior: bool = False,
    keep_predictions: bool = False,
    fns: dict | None = None,
    progress: bool = False,
    cond_stats: dict | None = None,
    mesh="auto",
    moving_threshold: float = M.MOVING_THRESHOLD,
    extra_scorers: tuple = (),
) -> dict:
    """Generate ``num_samples`` futures for each sequence of ``source`` with the model of
    ``run`` (a :class:`~vp_jax.config.RunConfig`) from its ``n_past`` context frames, and score them.

    Returns numpy arrays over the predicted frames ``T = n_eval - n_past``:

    * ``psnr``, ``ssim``, ``psnr_moving`` ``[N, S, T]`` (``psnr_moving``: PSNR over the pixels
      that differ from the last context frame by more than ``moving_threshold``; NaN for a
      frame where none do) and ``moving_fraction`` ``[S, T]``;
    * ``copy_psnr``, ``copy_ssim``, ``copy_psnr_moving`` ``[S, T]``: the last context frame repeated;
    * with ``shuffled_permutation`` (sequence i gets the conditions of sequence
      ``shuffled_permutation[i]``): ``shuffled_psnr``, ``shuffled_ssim``, ``shuffled_psnr_moving``
      ``[S, T]``, one sample drawn with sample 0's key, so only the conditions differ;
    * with ``posterior``: ``post_psnr``, ``post_ssim``, ``post_psnr_moving`` and ``post_kl``
      ``[S, T]`` from the teacher-forced posterior pass (:func:`make_reconstruct_fn`);
    * with ``keep_predictions``: ``pred`` (sample 0), ``target`` and ``context`` uint8 ``[S, T, 64, 64, 3]``.

    ``cond_stats`` (mean/std from the training split) standardises the conditions as in training.
    The last batch is padded by repeating its last sequence; padded rows are dropped (with
    ``bn_mode='batch_stats'`` the padding takes part in the batch statistics).  ``fns`` reuses
    the jitted functions of :func:`make_eval_fns` (validation every epoch compiles them once).
    ``mesh``: a :mod:`vp_jax.parallel` mesh to split each batch over, None for one device, or
    ``'auto'`` (all devices when more than one is visible; ``batch_size`` must split evenly).
    ``extra_scorers``: objects with ``update(pred_u8 [N, B, T, H, W, C], frames uint8 [B, n_eval, H, W, C],
    keep)`` called on every (padded) batch and ``result() -> dict`` merged into the output
    (:class:`vp_jax.perceptual.LPIPSScorer`, :class:`vp_jax.fvd.FVDScorer`).
    """
    from vp_jax import parallel
    from vp_jax.data.pipeline import eval_batches, standardize

    n_past, n_eval = run.n_past, run.n_eval
    if isinstance(mesh, str):
        mesh = parallel.auto_mesh()
    if mesh is not None:
        parallel.check_batch_size(batch_size, mesh, "eval.batch_size")
        params, batch_stats = parallel.replicate((params, batch_stats), mesh)
    fns = fns or make_eval_fns(run, num_samples, bn_mode)
    score = _make_scorer(float(moving_threshold))
    out = {}

    def add(prefix, scores, keep):
        """Append the first ``keep`` sequences of each named array (axis -2 is the sequence)."""
        for name, value in scores.items():
            out.setdefault(prefix + name, []).append(parallel.host_array(value)[..., :keep, :])

    cond_dim = run.model.cond_dim
    num_batches = -(-len(source) // batch_size)
    if max_batches:
        num_batches = min(num_batches, max_batches)
    # Every sequence once, in order; the last batch padded by repeating its last sequence.
    batches = eval_batches(source, batch_size, n_eval, cond_stats=cond_stats, pad_last=True)
    for i, batch in zip(tqdm(range(num_batches), desc="generate", disable=not progress, leave=False), batches):
        keep = int(batch["mask"].sum())
        frames = batch["frames"]
        target, reference = frames[:, n_past:], frames[:, n_past - 1]
        batch_key = jax.random.fold_in(key, i)
        frames_in, cond_in = parallel.put_batch((frames, batch["cond"][..., :cond_dim]), mesh)
        pred = fns["generate"](params, batch_stats, frames_in, cond_in, batch_key)
        pred_u8, psnr, ssim, moving_psnr, moving = score(pred, target, reference)
        add("", {"psnr": psnr, "ssim": ssim, "psnr_moving": moving_psnr}, keep)  # [N, B, T]
        for scorer in extra_scorers:
            scorer.update(pred_u8, frames, keep)
        add("moving_", {"fraction": parallel.host_array(moving).mean(axis=(-2, -1))}, keep)
        copy = M.copy_last_baseline(reference, n_eval - n_past).astype(jnp.float32)[None] / 255.0
        _, c_psnr, c_ssim, c_moving, _ = score(copy, target, reference)
        add("copy_", {"psnr": c_psnr[0], "ssim": c_ssim[0], "psnr_moving": c_moving[0]}, keep)
        if shuffled_permutation is not None:
            idx = np.arange(i * batch_size, (i + 1) * batch_size).clip(max=len(source) - 1)  # as padded
            cond_sh = standardize(np.asarray(source.cond[shuffled_permutation[idx], :n_eval], np.float32), cond_stats)
            (cond_sh,) = parallel.put_batch((cond_sh[..., :cond_dim],), mesh)
            pred_sh = fns["generate_one"](params, batch_stats, frames_in, cond_sh, batch_key)
            _, s_psnr, s_ssim, s_moving, _ = score(pred_sh, target, reference)
            add("shuffled_", {"psnr": s_psnr[0], "ssim": s_ssim[0], "psnr_moving": s_moving[0]}, keep)
        if posterior:
            x_hat, kl, kl_dim = fns["reconstruct"](params, batch_stats, frames_in, cond_in, batch_key)
            _, p_psnr, p_ssim, p_moving, _ = score(x_hat[None], target, reference)
            add("post_", {"psnr": p_psnr[0], "ssim": p_ssim[0], "psnr_moving": p_moving[0], "kl": kl, "kl_dim": kl_dim}, keep)
        if keep_predictions:
            out.setdefault("pred", []).append(parallel.host_array(pred_u8)[0, :keep])
            out.setdefault("target", []).append(target[:keep])
            out.setdefault("context", []).append(frames[:keep, :n_past])
    batches.close()
    out = {k: np.concatenate(parts, axis=1 if k in ("psnr", "ssim", "psnr_moving") else 0) for k, parts in out.items()}
    for scorer in extra_scorers:
        out.update(scorer.result())
    return out


#: KL (nats, mean over frames and sequences) above which a latent dimension counts as active.
ACTIVE_UNIT_KL = 0.01


def replay_source(run, split: str):
    """``replays(index, num)`` for :class:`LatentScorer` when the run's data is pushbot (whose
    generator replays its hidden randomness exactly), else None."""
    if run.data.source != "pushbot":
        return None
    from vp_jax.data import pushbot

    spec = pushbot.Spec(**run.data.pushbot)
    return lambda index, num: pushbot.replay_futures(spec, split, index, num, run.n_past, run.n_eval)


class LatentScorer:
    """An ``extra_scorers`` entry of :func:`predict_and_score` that measures what the samples do.

    Per sequence and predicted frame: the per-pixel standard deviation across the N samples
    (mean over channels, pixel values in [0, 1]) averaged inside and outside the *uncertain*
    pixels -- those where some exact replay of the data's hidden randomness differs from the
    truth by more than ``threshold`` in any channel. A latent that models the randomness varies
    there and agrees elsewhere. ``replays(index, num) -> (truth [n_eval, H, W, C], cond, futures
    [num, T, H, W, C])`` (uint8; e.g. :func:`vp_jax.data.pushbot.replay_futures`) gives them; without
    it, or when the stored sequence is not the generator's, every pixel counts as "elsewhere".
    ``result()``: ``spread_uncertain`` / ``spread_elsewhere`` ``[S, T]`` (NaN where there are no
    such pixels) and, with replays, ``replay_mse`` / ``replay_mse_moving`` ``[N, S, T, C]`` (the
    per-channel MSE of each replay, over all and over the moving pixels) for :func:`vp_jax.metrics.replay_gain`.
    """

    def __init__(self, n_past: int, threshold: float, replays=None, keep_samples: int = 0):
        self.n_past, self.threshold, self.replays, self.keep_samples = n_past, threshold, replays, keep_samples
        self.parts, self.count = {}, 0

    def update(self, pred_u8, frames, keep: int) -> None:
        from vp_jax import parallel

        pred_u8 = parallel.host_array(pred_u8)
        if self.count < self.keep_samples:  # ``samples`` [N, k, T, H, W, C]: the first k sequences
            self.parts.setdefault("samples", []).append(pred_u8[:, : min(keep, self.keep_samples - self.count)])
        pred = pred_u8[:, :keep].astype(np.float32) / 255.0  # [N, B, T, H, W, C]
        target = np.asarray(frames[:keep, self.n_past :], np.float32) / 255.0
        spread = pred.std(axis=0).mean(axis=-1)  # [B, T, H, W]
        uncertain = np.zeros(spread.shape, bool)
        for r in range(keep if self.replays else 0):
            truth, _, futures = self.replays(self.count + r, pred.shape[0])
            if not np.array_equal(truth, np.asarray(frames[r, : truth.shape[0]])):
                self.replays = None  # not the generator's sequences: no replays at all
                self.parts.pop("replay_mse", None), self.parts.pop("replay_mse_moving", None)
                uncertain[:] = False
                break
            futures = futures.astype(np.float32) / 255.0
            uncertain[r] = np.any(np.abs(futures - target[r]) > self.threshold, axis=-1).any(axis=0)
            last = np.asarray(frames[r, self.n_past - 1], np.float32) / 255.0
            moving = np.any(np.abs(target[r] - last) > self.threshold, axis=-1)[..., None]  # [T, H, W, 1]
            err = np.square(futures - target[r])  # [N, T, H, W, C]
            count = moving.sum(axis=(1, 2))  # [T, 1]
            with np.errstate(invalid="ignore"):
                moving_mse = np.where(count > 0, (err * moving).sum(axis=(2, 3)) / count, np.nan)
            self.parts.setdefault("replay_mse", []).append(err.mean(axis=(2, 3))[:, None])
            self.parts.setdefault("replay_mse_moving", []).append(moving_mse[:, None])
        with np.errstate(invalid="ignore"):
            inside = (spread * uncertain).sum(axis=(2, 3)) / uncertain.sum(axis=(2, 3))
            outside = (spread * ~uncertain).sum(axis=(2, 3)) / (~uncertain).sum(axis=(2, 3))
        self.parts.setdefault("spread_uncertain", []).append(inside)
        self.parts.setdefault("spread_elsewhere", []).append(outside)
        self.count += keep

    def result(self) -> dict:
        return {k: np.concatenate(v, axis=1 if k.startswith(("replay", "samples")) else 0) for k, v in self.parts.items()}


def summarize_latent(scores: dict, summary: dict) -> None:
    """Add ``summary['latent']``: KL per frame and per dimension (``active_units``: dimensions with
    a mean KL above :data:`ACTIVE_UNIT_KL`), and with several samples the spread of the samples
    inside and outside the uncertain pixels and, with replays, the best-of-N minus mean-of-N gain
    against the gain of exact replays at the model's own floors (its mean-of-N PSNRs)."""
    latent = {}
    if "post_kl_dim" in scores:
        per_dim = np.mean(scores["post_kl_dim"], axis=0)
        latent.update(kl=summary["posterior"]["kl"], kl_per_frame=summary["posterior"]["kl_per_frame"],
                      kl_per_dim=json_numbers(per_dim), active_units=int(np.sum(per_dim > ACTIVE_UNIT_KL)))
    if "spread_elsewhere" in scores:
        inside, outside = _nanmean(scores["spread_uncertain"]), _nanmean(scores["spread_elsewhere"])
        latent["diversity"] = {
            "uncertain": json_number(inside), "elsewhere": json_number(outside),
            "ratio": json_number(inside / outside) if outside > 0 and np.isfinite(inside) else None,
            "uncertain_per_frame": json_numbers(_nanmean(scores["spread_uncertain"], axis=0)),
            "elsewhere_per_frame": json_numbers(_nanmean(scores["spread_elsewhere"], axis=0)),
        }
    if "replay_mse" in scores and "best_minus_mean_db" in summary:
        gain, bound = {}, {}
        for name, key in (("psnr", "replay_mse"), ("psnr_moving", "replay_mse_moving")):
            floor = summary["mean_of_n"][name]
            gain[name] = summary["best_minus_mean_db"][name]
            bound[name] = json_number(M.replay_gain(scores[key], floor)) if floor is not None else None
        latent.update(gain_db=gain, bound_db=bound, floor_db={k: summary["mean_of_n"][k] for k in gain},
                      share_of_bound={k: json_number(gain[k] / bound[k]) if gain[k] is not None and bound[k] else None
                                      for k in gain})
    summary["latent"] = latent


#: Sequence-samples generated and scored per call when the batch size is not given: memory grows
#: with batch x samples x frames (100 samples of 32 sequences of 28 frames asked for 45 GB).
SEQUENCE_SAMPLES_PER_CALL = 256


def default_batch_size(eval_batch_size: int, num_samples: int, shards: int = 1) -> int:
    """Sequences per generation call: ``eval.batch_size``, lowered so that batch x samples stays
    within :data:`SEQUENCE_SAMPLES_PER_CALL`, rounded up to a multiple of the devices sharing it."""
    batch = max(1, min(int(eval_batch_size), SEQUENCE_SAMPLES_PER_CALL // max(1, int(num_samples))))
    return -(-batch // shards) * shards


def make_eval_fns(run, num_samples: int = 1, bn_mode: str = "inference") -> dict:
    """The jitted functions :func:`predict_and_score` calls: ``generate`` (``num_samples``
    samples), ``generate_one`` (one sample, for the shuffled-condition pass) and ``reconstruct``."""
    from vp_jax.generation import make_reconstruct_fn

    generate = make_generate_fn(run.model, run.n_past, num_samples=num_samples, bn_mode=bn_mode)
    one = generate if num_samples == 1 else make_generate_fn(run.model, run.n_past, num_samples=1, bn_mode=bn_mode)
    return {"generate": generate, "generate_one": one, "reconstruct": make_reconstruct_fn(run.model, run.n_past, bn_mode)}


def _nanmean(x, axis=None):
    """Mean ignoring NaN (frames without moving pixels); NaN when everything is NaN, no warning."""
    x = np.asarray(x, np.float64)
    count = np.sum(~np.isnan(x), axis=axis)
    total = np.nansum(x, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def summarize(scores: dict, moving_threshold: float = M.MOVING_THRESHOLD) -> dict:
    """The ``metrics.json`` numbers from :func:`predict_and_score` outputs.

    Every PSNR/SSIM is the mean over sequences and predicted frames of the per-frame score (the
    lab metric); ``psnr_moving`` averages only the frames that have moving pixels.
    ``action_sensitivity_db`` = model PSNR - PSNR with the conditions shuffled across sequences:
    how much the true actions/positions help (about 0 for a model that ignores them).
    """
    psnr, ssim, moving = scores["psnr"], scores["ssim"], scores["psnr_moving"]  # [N, S, T]

    def block(p, s, m):
        return {
            "psnr": json_number(np.mean(p)), "ssim": json_number(np.mean(s)), "psnr_moving": json_number(_nanmean(m)),
            "psnr_per_frame": json_numbers(np.mean(p, axis=0)), "ssim_per_frame": json_numbers(np.mean(s, axis=0)),
            "psnr_moving_per_frame": json_numbers(_nanmean(m, axis=0)),
        }

    summary = block(psnr[0], ssim[0], moving[0])
    summary["moving_threshold"] = float(moving_threshold)
    summary["moving_fraction"] = json_number(np.mean(scores["moving_fraction"]))
    summary["baseline_copy_last"] = block(scores["copy_psnr"], scores["copy_ssim"], scores["copy_psnr_moving"])
    summary["num_sequences"] = int(psnr.shape[1])
    summary["num_samples"] = int(psnr.shape[0])
    if psnr.shape[0] > 1:
        best, mean = {}, {}
        for name, values in (("psnr", psnr), ("ssim", ssim), ("psnr_moving", moving)):
            bm = M.best_and_mean_of_n(values)
            best[name], mean[name] = json_number(bm["best"]), json_number(bm["mean"])
            best[f"{name}_per_frame"], mean[f"{name}_per_frame"] = json_numbers(bm["best_curve"]), json_numbers(bm["mean_curve"])
        summary["best_of_n"], summary["mean_of_n"] = best, mean
        summary["best_minus_mean_db"] = {
            k: json_number(best[k] - mean[k]) if best[k] is not None and mean[k] is not None else None
            for k in ("psnr", "psnr_moving")
        }
    if "shuffled_psnr" in scores:
        summary["shuffled_condition"] = block(scores["shuffled_psnr"], scores["shuffled_ssim"], scores["shuffled_psnr_moving"])
        summary["action_sensitivity_db"] = json_number(summary["psnr"] - summary["shuffled_condition"]["psnr"])
        sh_moving = summary["shuffled_condition"]["psnr_moving"]
        summary["action_sensitivity_moving_db"] = (
            None if summary["psnr_moving"] is None or sh_moving is None else json_number(summary["psnr_moving"] - sh_moving)
        )
    if "post_psnr" in scores:
        summary["posterior"] = block(scores["post_psnr"], scores["post_ssim"], scores["post_psnr_moving"])
        summary["posterior"]["kl"] = json_number(np.mean(scores["post_kl"]))  # nats per predicted frame
        summary["posterior"]["kl_per_frame"] = json_numbers(np.mean(scores["post_kl"], axis=0))
    return summary


def write_json(obj: dict, path: str) -> None:
    fileio.write_json(path, obj)


def write_npz(path: str, **arrays) -> None:
    with fileio.atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


class Validator:
    """The per-epoch validation of a training run: the jitted functions are compiled once, then
    ``validator(state, keep) -> (row values, scores)`` scores (part of) the validation split.

    Row values: ``val_psnr`` (the lab metric, sample 0), ``val_psnr_moving``, ``val_action_sensitivity_db``
    (PSNR with the true minus shuffled conditions), ``val_posterior_psnr`` (teacher-forced
    reconstruction), ``val_copy_psnr`` (copying the last context frame), ``val_kl`` (KL per
    predicted frame) and ``val_active_units``, on the same sequences; with ``eval.val_samples``
    N > 1 also ``val_best_minus_mean_moving_db`` and, on pushbot, ``val_latent_share`` (that gain
    over the bound of exact replays) and ``val_spread_ratio`` (:func:`summarize_latent`).
    ``keep``: predictions of that many sequences are kept in ``scores`` (for GIFs).
    """

    def __init__(self, run, source, key, *, cond_stats=None, mesh=None):
        self.run, self.source, self.key, self.cond_stats, self.mesh = run, source, key, cond_stats, mesh
        self.fns = make_eval_fns(run, num_samples=run.eval.val_samples, bn_mode=run.eval.bn_mode)

    def __call__(self, state, keep: int = 0) -> tuple[dict, dict]:
        run, source, e = self.run, self.source, self.run.eval
        n = len(source) if not e.num_val_batches else min(len(source), e.num_val_batches * e.batch_size)
        threshold = e.moving_threshold
        scores = predict_and_score(
            run, state.params, state.batch_stats, source, key=self.key, batch_size=e.batch_size,
            max_batches=e.num_val_batches,
            shuffled_permutation=derangement(n, run.seed) if run.model.cond_dim and n > 1 else None,
            posterior=True, keep_predictions=keep > 0, fns=self.fns, cond_stats=self.cond_stats, mesh=self.mesh,
            moving_threshold=threshold, num_samples=e.val_samples,
            extra_scorers=(LatentScorer(run.n_past, threshold, replay_source(run, "validate")),) if e.val_samples > 1 else (),
        )
        summary = summarize(scores, threshold)
        summarize_latent(scores, summary)
        latent = summary["latent"]

        def value(v):
            return float("nan") if v is None else float(v)

        row = {
            "val_psnr": value(summary["psnr"]),
            "val_psnr_moving": value(summary["psnr_moving"]),
            "val_action_sensitivity_db": value(summary.get("action_sensitivity_db")),
            "val_posterior_psnr": value(summary["posterior"]["psnr"]),
            "val_copy_psnr": value(summary["baseline_copy_last"]["psnr"]),
            "val_kl": value(latent["kl"]),
            "val_active_units": value(latent["active_units"]),
        }
        if e.val_samples > 1:
            row["val_best_minus_mean_moving_db"] = value(summary["best_minus_mean_db"]["psnr_moving"])
            if "share_of_bound" in latent:
                row["val_latent_share"] = value(latent["share_of_bound"]["psnr_moving"])
                row["val_spread_ratio"] = value(latent["diversity"]["ratio"])
        return row, scores


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (for n > 1).

    Each sequence gets the conditions of its successor in a random cyclic order.
    """
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def _table(summary: dict) -> str:
    """The table eval.py prints: PSNR, SSIM and moving-pixel PSNR of every row it has."""
    rows = [("model", summary)]
    if "best_of_n" in summary:
        rows.append((f"best of {summary['num_samples']}", summary["best_of_n"]))
        rows.append((f"mean of {summary['num_samples']}", summary["mean_of_n"]))
    rows.append(("copy last context frame", summary["baseline_copy_last"]))
    if "shuffled_condition" in summary:
        rows.append(("model, shuffled conditions", summary["shuffled_condition"]))
    if "posterior" in summary:
        rows.append(("posterior (teacher forced)", summary["posterior"]))
    import pandas as pd

    frame = pd.DataFrame(
        [(name, r.get("psnr"), r.get("ssim"), r.get("psnr_moving")) for name, r in rows],
        columns=["", "PSNR (dB)", "SSIM", "PSNR moving (dB)"],
    ).set_index("")
    lines = [frame.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")]
    if summary.get("action_sensitivity_db") is not None:
        moving = summary.get("action_sensitivity_moving_db")
        lines.append(f"action sensitivity: {summary['action_sensitivity_db']:+.3f} dB"
                     + ("" if moving is None else f" ({moving:+.3f} dB on moving pixels)")
                     + "  (model - shuffled conditions)")
    if "best_minus_mean_db" in summary:
        d = summary["best_minus_mean_db"]
        lines.append("best of N - mean of N: " + ", ".join(
            f"{k} {v:+.3f} dB" for k, v in d.items() if v is not None))
    if "posterior" in summary:
        kl = " ".join(f"{v:.3g}" for v in summary["posterior"]["kl_per_frame"])
        lines.append(f"KL(q || p) per predicted frame (nats): {kl}")
    lines += _latent_lines(summary.get("latent", {}))
    lines.append(f"moving pixels: {100 * (summary['moving_fraction'] or 0):.1f} % of the predicted frames "
                 f"(|target - last context frame| > {summary['moving_threshold']:g} in any channel)")
    return "\n".join(lines)


def _latent_lines(latent: dict) -> list[str]:
    """What eval.py prints of :func:`summarize_latent`."""
    lines = []
    if "active_units" in latent:
        lines.append(f"latent: {latent['active_units']} of {len(latent['kl_per_dim'])} dimensions active "
                     f"(mean KL > {ACTIVE_UNIT_KL} nats)")
    d = latent.get("diversity")
    if d and d["uncertain"] is not None:
        ratio = "" if d["ratio"] is None else f" (x{d['ratio']:.1f})"
        lines.append(f"sample spread: {d['uncertain']:.4f} in the pixels chance decides, {d['elsewhere']:.4f} elsewhere{ratio}")
    elif d:
        lines.append(f"sample spread: {d['elsewhere']:.4f} (per-pixel standard deviation across samples)")
    for name, what in (("psnr_moving", "on moving pixels"), ("psnr", "on whole frames")):
        gain, bound = latent.get("gain_db", {}).get(name), latent.get("bound_db", {}).get(name)
        if gain is not None and bound is not None:
            share = f" ({100 * gain / bound:.0f} %)" if bound > 0 else ""
            lines.append(f"latent gain: {gain:+.3f} dB of a possible {bound:+.3f} dB {what}{share} "
                         f"(best of N - mean of N; exact replays at the model's {latent['floor_db'][name]:.2f} dB)")
    return lines


def evaluate_workdir(
    workdir: str,
    *,
    checkpoint: str = "best",
    split: str = "test",
    num_samples: int | None = None,
    bn_mode: str | None = None,
    data_root: str | None = None,
    protocol: str = "custom",
    n_future: int | None = None,
    lpips: tuple | None = None,
    fvd: bool | None = None,
    fvd_context: bool | None = None,
    fvd_repeats: int | None = None,
    num_sequences: int | None = None,
    fvd_batch_size: int = 8,
    batch_size: int | None = None,
    action_fidelity: bool = False,
) -> dict:
    """Restore a checkpoint of ``workdir`` and write ``DIR/eval/<split>/`` (``<split>-<protocol>`` for
    a named protocol; see eval.py and :mod:`vp_jax.protocols`). ``n_future``, ``num_samples``,
    ``lpips``, ``fvd*`` (None: not given) change the ``custom`` protocol only. ``action_fidelity``:
    add :mod:`vp_jax.action_fidelity`'s scores (an inverse model trained on the training split)."""
    from vp_jax import visualize
    from vp_jax.config import load_workdir_config, run_config
    from vp_jax.data.pipeline import condition_stats, open_split
    from vp_jax.errors import VPError
    from vp_jax.training.checkpoints import CheckpointStore
    from vp_jax.training.state import create_train_state

    config = load_workdir_config(workdir, data_root)
    from vp_jax import parallel

    parallel.initialize_distributed(config, when_launched=True)  # started as several processes only; before JAX
    from vp_jax import protocols

    proto = protocols.resolve(protocol, config, n_future=n_future, num_samples=num_samples, lpips=lpips, fvd=fvd,
                              fvd_context=fvd_context, fvd_repeats=fvd_repeats)
    run = run_config(protocols.apply(proto, config))
    num_samples = proto.num_samples
    bn_mode = bn_mode or run.eval.bn_mode
    batch_size = batch_size or default_batch_size(run.eval.batch_size, num_samples, jax.device_count())
    if batch_size < 1:
        raise VPError(f"--batch_size {batch_size}: expected an integer >= 1")
    if num_sequences is not None and num_sequences < 1:
        raise VPError(f"--num_sequences {num_sequences}: expected an integer >= 1")

    abstract = jax.eval_shape(lambda k: create_train_state(run, k), jax.random.key(0))
    with CheckpointStore(workdir, keep=run.checkpoint_keep, read_only=True) as store:
        state, meta = store.restore(checkpoint, abstract, run.model)
    source = open_split(run.data, split)
    if source.num_frames < run.n_eval:
        raise VPError(f"--protocol {proto.name}: needs {run.n_eval} frames a sequence ({proto.n_past} context + "
                      f"{proto.n_future} predicted); {source.name} has {source.num_frames}")
    if num_sequences is not None and num_sequences < len(source):
        source = dataclasses.replace(source, frames=source.frames[:num_sequences], cond=source.cond[:num_sequences])
    key = evaluation_key(run.seed)
    extra_scorers = []
    if proto.lpips:
        from vp_jax.perceptual import LPIPSScorer

        extra_scorers.append(LPIPSScorer(proto.lpips, run.n_past))
    if proto.fvd:
        from vp_jax.fvd import FVDScorer

        extra_scorers.append(FVDScorer(run.n_past, run.n_eval, include_context=proto.fvd_context,
                                       repeats=proto.fvd_repeats, num_sequences=len(source),
                                       batch_size=fvd_batch_size, progress=True))

    cond_stats = condition_stats(open_split(run.data, "train")) if run.data.normalize_condition else None
    threshold = run.eval.moving_threshold
    if num_samples > 1:
        extra_scorers.append(LatentScorer(run.n_past, threshold, replay_source(run, split), keep_samples=run.eval.num_gifs))
    scores = predict_and_score(
        run, state.params, state.batch_stats, source, key=key, num_samples=num_samples, bn_mode=bn_mode,
        batch_size=batch_size, cond_stats=cond_stats, keep_predictions=True, progress=True,
        shuffled_permutation=derangement(len(source), run.seed) if run.model.cond_dim > 0 and len(source) > 1 else None,
        posterior=True, moving_threshold=threshold, extra_scorers=tuple(extra_scorers),
    )
    summary = summarize(scores, threshold)
    summarize_latent(scores, summary)
    if proto.lpips:
        from vp_jax.perceptual import summarize_lpips

        summarize_lpips(scores, summary)
    if proto.fvd:
        from vp_jax.fvd import summarize_fvd

        summary["fvd"] = summarize_fvd(scores)
    if action_fidelity:  # vp_jax/action_fidelity.py: actions read back from the predictions
        from vp_jax import action_fidelity as fidelity

        summary["action_fidelity"] = fidelity.evaluate(run, source, scores)
    summary.update(
        checkpoint_step=int(state.step),
        checkpoint=str(checkpoint),
        split=split,
        bn_mode=bn_mode,
        n_past=run.n_past,
        n_eval=run.n_eval,
        predicted_frames=list(range(run.n_past, run.n_eval)),
    )
    summary["protocol"] = protocols.card(
        proto, split=split, num_sequences=summary["num_sequences"], bn_mode=bn_mode, seed=run.seed,
        checkpoint={"workdir": os.path.abspath(workdir), "name": str(checkpoint), "step": int(state.step)},
        fvd_batch_size=fvd_batch_size if proto.fvd else None, batch_size=batch_size,
    )

    if not parallel.is_main_process():
        return summary
    out_dir = os.path.join(workdir, "eval", protocols.output_name(proto, split))
    os.makedirs(os.path.join(out_dir, "gifs"), exist_ok=True)
    write_json(summary, os.path.join(out_dir, "metrics.json"))
    write_npz(
        os.path.join(out_dir, "predictions.npz"),
        pred=scores["pred"], target=scores["target"], context=scores["context"],
    )
    visualize.plot_per_frame(summary, os.path.join(out_dir, "per_frame.png"))
    shown = max(1, min(run.eval.num_gifs, len(scores["pred"])))
    visualize.write_strip(scores["pred"][:shown], np.concatenate([scores["context"], scores["target"]], axis=1)[:shown],
                          run.n_past, os.path.join(out_dir, "strip.png"))
    if "samples" in scores:
        visualize.write_samples(scores["samples"], scores["context"], scores["target"], run.n_past, out_dir)
    for j in range(min(run.eval.num_gifs, len(scores["pred"]))):
        visualize.write_gif(
            np.concatenate([scores["context"][j], scores["pred"][j]]),
            np.concatenate([scores["context"][j], scores["target"][j]]),
            run.n_past,
            os.path.join(out_dir, "gifs", f"sequence_{j:03d}.gif"),
        )
    print(f"{split} split, {summary['num_sequences']} sequences, checkpoint step {summary['checkpoint_step']} "
          f"({checkpoint}), frames {run.n_past}..{run.n_eval - 1} predicted from {run.n_past}, "
          f"BatchNorm {bn_mode}")
    print(_table(summary))
    for line in protocols.extra_lines(summary):
        print(line)
    print("protocol " + protocols.describe(summary["protocol"]))
    if action_fidelity:
        print("\n".join(fidelity.describe(summary["action_fidelity"])))
    samples = ", samples.png, samples.gif" if "samples" in scores else ""
    print(f"wrote {out_dir}/metrics.json, predictions.npz, per_frame.png, strip.png{samples}, gifs/")
    return summary
