"""What eval.py does: restore a workdir's checkpoint, score a split under a protocol, write
``metrics.json``, ``predictions.npz``, plots and GIFs, print the table.

Writes ``DIR/eval/<split>/`` (``<split>-<protocol>`` for a named protocol; see eval.py and
:mod:`vp_jax.evaluation.protocols`).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pandas as pd

from vp_jax import fileio
from vp_jax.config import load_workdir_config, run_config
from vp_jax.data.pipeline import condition_stats, open_split
from vp_jax.errors import VPError
from vp_jax.evaluation import action_fidelity, protocols
from vp_jax.evaluation.fvd import FVDScorer, summarize_fvd
from vp_jax.evaluation.latent import LatentScorer, latent_lines, replay_source, summarize_latent
from vp_jax.evaluation.perceptual import LPIPSScorer, summarize_lpips
from vp_jax.evaluation.scoring import Options, SplitScorer, summarize
from vp_jax.models.generation import evaluation_key
from vp_jax.report import visualize
from vp_jax.runtime import parallel
from vp_jax.store.checkpoints import CheckpointStore
from vp_jax.store.state import create_train_state

#: Sequence-samples generated and scored per call when the batch size is not given: memory grows
#: with batch x samples x frames (100 samples of 32 sequences of 28 frames asked for 45 GB).
SEQUENCE_SAMPLES_PER_CALL = 256


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """eval.py's flags. ``predict_frames``, ``num_samples``, ``lpips``, ``fvd*`` (None: not given)
    change the ``custom`` protocol only; ``action_fidelity`` adds the scores of
    :mod:`vp_jax.evaluation.action_fidelity` (an inverse model trained on the training split)."""

    checkpoint: str = "best"
    split: str = "test"
    num_samples: int | None = None
    bn_mode: str | None = None
    data_root: str | None = None
    protocol: str = "custom"
    predict_frames: int | None = None
    lpips: tuple | None = None
    fvd: bool | None = None
    fvd_context: bool | None = None
    fvd_repeats: int | None = None
    num_sequences: int | None = None
    fvd_batch_size: int = 8
    batch_size: int | None = None
    action_fidelity: bool = False


def default_batch_size(eval_batch_size: int, num_samples: int, shards: int = 1) -> int:
    """Sequences per generation call: ``eval.batch_size``, lowered so that batch x samples stays
    within :data:`SEQUENCE_SAMPLES_PER_CALL`, rounded up to a multiple of the devices sharing it."""
    batch = max(1, min(int(eval_batch_size), SEQUENCE_SAMPLES_PER_CALL // max(1, int(num_samples))))
    return -(-batch // shards) * shards


def evaluate_workdir(workdir: str, options: EvalOptions = EvalOptions()) -> dict:
    """Score ``options.split`` with a checkpoint of ``workdir``; write and print the results (on
    the main process); return the summary written to ``metrics.json``."""
    o = options
    config = load_workdir_config(workdir, o.data_root)
    parallel.initialize_distributed(config, when_launched=True)  # started as several processes only; before JAX
    proto = protocols.resolve(o.protocol, config, predict_frames=o.predict_frames, num_samples=o.num_samples, lpips=o.lpips,
                              fvd=o.fvd, fvd_context=o.fvd_context, fvd_repeats=o.fvd_repeats)
    run = run_config(protocols.apply(proto, config))
    bn_mode = o.bn_mode or run.eval.bn_mode
    batch_size = o.batch_size or default_batch_size(run.eval.batch_size, proto.num_samples, jax.device_count())
    for flag in ("batch_size", "num_sequences"):
        if getattr(o, flag) is not None and getattr(o, flag) < 1:
            raise VPError(f"--{flag} {getattr(o, flag)}: expected an integer >= 1")
    state, source = _restore(workdir, run, proto, o)
    cond_stats = condition_stats(open_split(run.data, "train")) if run.data.normalize_condition else None
    scorer = SplitScorer(run, Options(num_samples=proto.num_samples, bn_mode=bn_mode, batch_size=batch_size,
                                      moving_threshold=run.eval.moving_threshold, keep_predictions=True,
                                      progress=True), cond_stats=cond_stats)
    scores = scorer(state, source, evaluation_key(run.seed), _extra_scorers(run, proto, o, len(source)))
    summary = _summary(run, proto, scores, source, o)
    summary.update(checkpoint_step=int(state.step), checkpoint=str(o.checkpoint), split=o.split, bn_mode=bn_mode,
                   n_past=run.n_past, n_eval=run.n_eval, predicted_frames=list(range(run.n_past, run.n_eval)))
    summary["protocol"] = protocols.card(
        proto, split=o.split, num_sequences=summary["num_sequences"], bn_mode=bn_mode, seed=run.seed,
        checkpoint={"workdir": os.path.abspath(workdir), "name": str(o.checkpoint), "step": int(state.step)},
        fvd_batch_size=o.fvd_batch_size if proto.fvd else None, batch_size=batch_size,
    )
    if parallel.is_main_process():
        out_dir = os.path.join(workdir, "eval", protocols.output_name(proto, o.split))
        written = _write(out_dir, run, summary, scores)
        print(report(summary, run))
        print(f"wrote {out_dir}/{', '.join(written)}")
    return summary


def _restore(workdir: str, run, proto, o: EvalOptions):
    """The checkpoint's state and the split to score (its first ``num_sequences`` sequences)."""
    abstract = jax.eval_shape(lambda k: create_train_state(run, k), jax.random.key(0))
    with CheckpointStore(workdir, keep=run.checkpoint_keep, read_only=True) as store:
        state, _ = store.restore(o.checkpoint, abstract, run.model)
    source = open_split(run.data, o.split)
    if source.num_frames < run.n_eval:
        raise VPError(f"--protocol {proto.name}: needs {run.n_eval} frames a sequence ({proto.n_past} context + "
                      f"{proto.n_future} predicted); {source.name} has {source.num_frames}")
    if o.num_sequences is not None and o.num_sequences < len(source):
        source = dataclasses.replace(source, frames=source.frames[: o.num_sequences], cond=source.cond[: o.num_sequences])
    return state, source


def _extra_scorers(run, proto, o: EvalOptions, num_sequences: int) -> tuple:
    """LPIPS and FVD as the protocol asks; the latent's measures with several samples."""
    scorers = []
    if proto.lpips:
        scorers.append(LPIPSScorer(proto.lpips, run.n_past))
    if proto.fvd:
        scorers.append(FVDScorer(run.n_past, run.n_eval, include_context=proto.fvd_context, repeats=proto.fvd_repeats,
                                 num_sequences=num_sequences, batch_size=o.fvd_batch_size, progress=True))
    if proto.num_samples > 1:
        replays = replay_source(run, o.split)
        scorers.append(LatentScorer(run.n_past, run.eval.moving_threshold, replays, keep_samples=run.eval.num_gifs))
    return tuple(scorers)


def _summary(run, proto, scores: dict, source, o: EvalOptions) -> dict:
    summary = summarize(scores, run.eval.moving_threshold)
    summarize_latent(scores, summary)
    if proto.lpips:
        summarize_lpips(scores, summary)
    if proto.fvd:
        summary["fvd"] = summarize_fvd(scores)
    if o.action_fidelity:
        summary["action_fidelity"] = action_fidelity.evaluate(run, source, scores)
    return summary


def _write(out_dir: str, run, summary: dict, scores: dict) -> list[str]:
    """metrics.json, predictions.npz, per_frame.png, strip.png, samples.png/gif and gifs/: the names written."""
    os.makedirs(os.path.join(out_dir, "gifs"), exist_ok=True)
    fileio.write_json(os.path.join(out_dir, "metrics.json"), summary)
    with fileio.atomic_path(os.path.join(out_dir, "predictions.npz"), suffix=".npz") as tmp:
        np.savez_compressed(tmp, pred=scores["pred"], target=scores["target"], context=scores["context"])
    visualize.plot_per_frame(summary, os.path.join(out_dir, "per_frame.png"))
    truth = np.concatenate([scores["context"], scores["target"]], axis=1)
    shown = max(1, min(run.eval.num_gifs, len(scores["pred"])))
    visualize.write_strip(scores["pred"][:shown], truth[:shown], run.n_past, os.path.join(out_dir, "strip.png"))
    written = ["metrics.json", "predictions.npz", "per_frame.png", "strip.png"]
    if "samples" in scores:
        visualize.write_samples(scores["samples"], scores["context"], scores["target"], run.n_past, out_dir)
        written += ["samples.png", "samples.gif"]
    for j in range(min(run.eval.num_gifs, len(scores["pred"]))):
        visualize.write_gif(np.concatenate([scores["context"][j], scores["pred"][j]]), truth[j], run.n_past,
                            os.path.join(out_dir, "gifs", f"sequence_{j:03d}.gif"))
    return written + ["gifs/"]


def report(summary: dict, run) -> str:
    """What eval.py prints: the run, the table of every row, the latent's and the protocol's lines."""
    lines = [f"{summary['split']} split, {summary['num_sequences']} sequences, checkpoint step "
             f"{summary['checkpoint_step']} ({summary['checkpoint']}), frames {run.n_past}..{run.n_eval - 1} "
             f"predicted from {run.n_past}, BatchNorm {summary['bn_mode']}", table(summary)]
    lines += protocols.extra_lines(summary)
    lines.append("protocol " + protocols.describe(summary["protocol"]))
    if "action_fidelity" in summary:
        lines += action_fidelity.describe(summary["action_fidelity"])
    return "\n".join(lines)


def table(summary: dict) -> str:
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
    lines += latent_lines(summary.get("latent", {}))
    lines.append(f"moving pixels: {100 * (summary['moving_fraction'] or 0):.1f} % of the predicted frames "
                 f"(|target - last context frame| > {summary['moving_threshold']:g} in any channel)")
    return "\n".join(lines)


