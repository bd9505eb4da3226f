"""What the latent does: KL per dimension (active units), the spread of the samples inside and
outside the pixels chance decides, and best-of-N minus mean-of-N against the gain exact replays of
the data's hidden randomness allow (docs/metrics.md, "Measures of the latent")."""

from __future__ import annotations

import numpy as np

from vp_jax.data import pushbot
from vp_jax.evaluation import metrics as M
from vp_jax.fileio import json_number, json_numbers
from vp_jax.runtime import parallel

#: KL (nats, mean over frames and sequences) above which a latent dimension counts as active.
ACTIVE_UNIT_KL = 0.01


def replay_source(run, split: str):
    """``replays(index, num)`` for :class:`LatentScorer` when the run's data is pushbot (whose
    generator replays its hidden randomness exactly), else None."""
    if run.data.source != "pushbot":
        return None
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
    per-channel MSE of each replay, over all and over the moving pixels) for :func:`vp_jax.evaluation.metrics.replay_gain`.
    """

    def __init__(self, n_past: int, threshold: float, replays=None, keep_samples: int = 0):
        self.n_past, self.threshold, self.replays, self.keep_samples = n_past, threshold, replays, keep_samples
        self.parts, self.count = {}, 0

    def update(self, pred_u8, frames, keep: int) -> None:
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
        inside, outside = M.nanmean(scores["spread_uncertain"]), M.nanmean(scores["spread_elsewhere"])
        latent["diversity"] = {
            "uncertain": json_number(inside), "elsewhere": json_number(outside),
            "ratio": json_number(inside / outside) if outside > 0 and np.isfinite(inside) else None,
            "uncertain_per_frame": json_numbers(M.nanmean(scores["spread_uncertain"], axis=0)),
            "elsewhere_per_frame": json_numbers(M.nanmean(scores["spread_elsewhere"], axis=0)),
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


def latent_lines(latent: dict) -> list[str]:
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

