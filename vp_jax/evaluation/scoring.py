"""Scoring a split: jitted generation, the lab metric, the paper's best-of-N, baselines.

The lab metric (docs/model.md): ``n_past`` context frames, predict frames ``n_past … n_eval-1``, one
sample, the encoder fed its own predictions, PSNR per frame = mean over channels of
10·log10(1/MSE_channel), averaged over frames and sequences.

Predictions are rounded to uint8 before they are scored, so every number in ``metrics.json``
can be recomputed exactly from ``predictions.npz`` (rounding moves PSNR by ~0.01 dB).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vp_jax.data.pipeline import eval_batches, standardize
from vp_jax.evaluation import metrics as M
from vp_jax.evaluation.latent import LatentScorer, replay_source, summarize_latent
from vp_jax.fileio import json_number, json_numbers
from vp_jax.models.generation import make_generate_fn, make_reconstruct_fn
from vp_jax.runtime import parallel


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


@dataclasses.dataclass(frozen=True)
class Options:
    """How :class:`SplitScorer` generates and scores a split.

    ``max_batches``: 0 scores every sequence. ``shuffled``: also one sample (sample 0's key) with the
    conditions of another sequence (:func:`derangement`), so only the conditions differ.
    ``posterior``: also the teacher-forced posterior pass and its KL. ``keep_predictions``: keep
    sample 0, the targets and the context frames (uint8) for GIFs and ``predictions.npz``.
    """

    num_samples: int = 1
    bn_mode: str = "inference"
    batch_size: int = 32
    max_batches: int = 0
    moving_threshold: float = M.MOVING_THRESHOLD
    shuffled: bool = True
    posterior: bool = True
    keep_predictions: bool = False
    progress: bool = False


class SplitScorer:
    """``scorer(state, source, key, extra_scorers=())``: ``options.num_samples`` futures of every
    sequence of ``source`` from its ``n_past`` context frames under the model of ``run`` (a
    :class:`~vp_jax.config.RunConfig`; ``state`` anything with ``params`` and ``batch_stats``), scored.

    The jitted functions are compiled once per scorer (validation reuses one every epoch).
    ``cond_stats`` (mean/std of the training split) standardises the conditions as in training.
    ``mesh``: a :mod:`vp_jax.runtime.parallel` mesh to split each batch over, None for one device,
    or ``'auto'`` (all devices when more than one is visible; the batch size must split evenly).

    Returns numpy arrays over the predicted frames ``T = n_eval - n_past``:

    * ``psnr``, ``ssim``, ``psnr_moving`` ``[N, S, T]`` (``psnr_moving``: PSNR over the pixels that
      differ from the last context frame by more than the moving threshold; NaN for a frame where
      none do) and ``moving_fraction`` ``[S, T]``;
    * ``copy_psnr``, ``copy_ssim``, ``copy_psnr_moving`` ``[S, T]``: the last context frame repeated;
    * with ``shuffled`` (and conditions, more than one sequence): ``shuffled_psnr``, ``shuffled_ssim``,
      ``shuffled_psnr_moving`` ``[S, T]``;
    * with ``posterior``: ``post_psnr``, ``post_ssim``, ``post_psnr_moving``, ``post_kl`` ``[S, T]``
      and ``post_kl_dim`` ``[S, z_dim]``;
    * with ``keep_predictions``: ``pred`` (sample 0), ``target`` and ``context`` uint8 ``[S, T, 64, 64, 3]``.

    The last batch is padded by repeating its last sequence; padded rows are dropped (with
    ``bn_mode='batch_stats'`` the padding takes part in the batch statistics). ``extra_scorers``:
    objects with ``update(pred_u8 [N, B, T, H, W, C], frames uint8 [B, n_eval, H, W, C], keep)``
    called on every (padded) batch and ``result() -> dict`` merged into the output
    (:class:`~vp_jax.evaluation.latent.LatentScorer`, :class:`~vp_jax.evaluation.perceptual.LPIPSScorer`,
    :class:`~vp_jax.evaluation.fvd.FVDScorer`).
    """

    def __init__(self, run, options: Options = Options(), *, cond_stats=None, mesh="auto"):
        o = self.options = options
        self.run, self.cond_stats = run, cond_stats
        self.mesh = parallel.auto_mesh() if isinstance(mesh, str) else mesh
        if self.mesh is not None:
            parallel.check_batch_size(o.batch_size, self.mesh, "eval.batch_size")
        self.generate = make_generate_fn(run.model, run.n_past, num_samples=o.num_samples, bn_mode=o.bn_mode)
        self.generate_one = (self.generate if o.num_samples == 1
                             else make_generate_fn(run.model, run.n_past, num_samples=1, bn_mode=o.bn_mode))
        self.reconstruct = make_reconstruct_fn(run.model, run.n_past, o.bn_mode)
        self.score = _make_scorer(float(o.moving_threshold))

    def __call__(self, state, source, key, extra_scorers=()) -> dict:
        o, run = self.options, self.run
        variables = (state.params, state.batch_stats)
        if self.mesh is not None:
            variables = parallel.replicate(variables, self.mesh)
        num_batches = -(-len(source) // o.batch_size)
        num_batches = min(num_batches, o.max_batches) if o.max_batches else num_batches
        n = min(len(source), num_batches * o.batch_size)
        shuffle = derangement(n, run.seed) if o.shuffled and run.model.cond_dim and n > 1 else None
        out = {}
        # Every sequence once, in order; the last batch padded by repeating its last sequence.
        batches = eval_batches(source, o.batch_size, run.n_eval, cond_stats=self.cond_stats)
        bar = tqdm(range(num_batches), desc="generate", disable=not o.progress, leave=False)
        for i, batch in zip(bar, batches):
            keep = int(batch["mask"].sum())
            idx = np.arange(i * o.batch_size, (i + 1) * o.batch_size).clip(max=len(source) - 1)  # as padded
            cond_sh = None if shuffle is None else source.cond[shuffle[idx], : run.n_eval]
            for name, value in self._batch(variables, batch, cond_sh, jax.random.fold_in(key, i), extra_scorers).items():
                out.setdefault(name, []).append(parallel.host_array(value)[..., :keep, :] if name[-1] != "!" else value[:keep])
        batches.close()
        out = {k.rstrip("!"): np.concatenate(v, axis=1 if k in ("psnr", "ssim", "psnr_moving") else 0) for k, v in out.items()}
        for scorer in extra_scorers:
            out.update(scorer.result())
        return out

    def _batch(self, variables, batch, cond_sh, key, extra_scorers) -> dict:
        """One padded batch's scores (axis -2 is the sequence; names ending in '!' have it first)."""
        o, run = self.options, self.run
        frames, cond_dim = batch["frames"], run.model.cond_dim
        target, reference = frames[:, run.n_past :], frames[:, run.n_past - 1]
        frames_in, cond_in = parallel.put_batch((frames, batch["cond"][..., :cond_dim]), self.mesh)
        pred_u8, psnr, ssim, moving_psnr, moving = self.score(self.generate(*variables, frames_in, cond_in, key),
                                                             target, reference)
        for scorer in extra_scorers:
            scorer.update(pred_u8, frames, int(batch["mask"].sum()))
        out = {"psnr": psnr, "ssim": ssim, "psnr_moving": moving_psnr,
               "moving_fraction": parallel.host_array(moving).mean(axis=(-2, -1))}
        copy = M.copy_last_baseline(reference, run.n_eval - run.n_past).astype(jnp.float32)[None] / 255.0
        out.update(self._scores("copy_", copy, target, reference))
        if cond_sh is not None:
            cond_sh = standardize(np.asarray(cond_sh, np.float32), self.cond_stats)
            (cond_sh,) = parallel.put_batch((cond_sh[..., :cond_dim],), self.mesh)
            out.update(self._scores("shuffled_", self.generate_one(*variables, frames_in, cond_sh, key), target, reference))
        if o.posterior:
            x_hat, kl, kl_dim = self.reconstruct(*variables, frames_in, cond_in, key)
            out.update(self._scores("post_", x_hat[None], target, reference), post_kl=kl, post_kl_dim=kl_dim)
        if o.keep_predictions:
            out.update({"pred!": parallel.host_array(pred_u8)[0], "target!": target, "context!": frames[:, : run.n_past]})
        return out

    def _scores(self, prefix, pred, target, reference) -> dict:
        """PSNR, SSIM and moving-pixel PSNR of one prediction per sequence."""
        _, psnr, ssim, moving, _ = self.score(pred, target, reference)
        return {prefix + "psnr": psnr[0], prefix + "ssim": ssim[0], prefix + "psnr_moving": moving[0]}


def summarize(scores: dict, moving_threshold: float = M.MOVING_THRESHOLD) -> dict:
    """The ``metrics.json`` numbers from :class:`SplitScorer` outputs.

    Every PSNR/SSIM is the mean over sequences and predicted frames of the per-frame score (the
    lab metric); ``psnr_moving`` averages only the frames that have moving pixels.
    ``action_sensitivity_db`` = model PSNR - PSNR with the conditions shuffled across sequences:
    how much the true actions/positions help (about 0 for a model that ignores them).
    """
    psnr, ssim, moving = scores["psnr"], scores["ssim"], scores["psnr_moving"]  # [N, S, T]

    def block(p, s, m):
        return {
            "psnr": json_number(np.mean(p)), "ssim": json_number(np.mean(s)), "psnr_moving": json_number(M.nanmean(m)),
            "psnr_per_frame": json_numbers(np.mean(p, axis=0)), "ssim_per_frame": json_numbers(np.mean(s, axis=0)),
            "psnr_moving_per_frame": json_numbers(M.nanmean(m, axis=0)),
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




class Validator:
    """The per-epoch validation of a training run: the jitted functions are compiled once, then
    ``validator(state, keep) -> (row values, scores)`` scores (part of) the validation split.

    Row values: ``val_psnr`` (the lab metric, sample 0), ``val_psnr_moving``, ``val_action_sensitivity_db``
    (PSNR with the true minus shuffled conditions), ``val_posterior_psnr`` (teacher-forced
    reconstruction), ``val_copy_psnr`` (copying the last context frame), ``val_kl`` (KL per
    predicted frame) and ``val_active_units``, on the same sequences; with ``eval.val_samples``
    N > 1 also ``val_best_minus_mean_moving_db`` and, on pushbot, ``val_latent_share`` (that gain
    over the bound of exact replays) and ``val_spread_ratio`` (:func:`~vp_jax.evaluation.latent.summarize_latent`).
    ``scores`` keeps the predictions (for GIFs).
    """

    def __init__(self, run, source, key, *, cond_stats=None, mesh=None):
        e = run.eval
        options = Options(num_samples=e.val_samples, bn_mode=e.bn_mode, batch_size=e.batch_size,
                          max_batches=e.num_val_batches, moving_threshold=e.moving_threshold, keep_predictions=True)
        self.run, self.source, self.key = run, source, key
        self.scorer = SplitScorer(run, options, cond_stats=cond_stats, mesh=mesh)

    def __call__(self, state) -> tuple[dict, dict]:
        run, e = self.run, self.run.eval
        latent = (LatentScorer(run.n_past, e.moving_threshold, replay_source(run, "validate")),) if e.val_samples > 1 else ()
        scores = self.scorer(state, self.source, self.key, latent)
        summary = summarize(scores, e.moving_threshold)
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
