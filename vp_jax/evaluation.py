"""Evaluation: jitted generation over a split, the lab metric, the paper's best-of-N, baselines.

The lab metric (spec §4): ``n_past`` context frames, predict frames ``n_past … n_eval-1``, one
sample, the encoder fed its own predictions, PSNR per frame = mean over channels of
10·log10(1/MSE_channel), averaged over frames and sequences.

Predictions are rounded to uint8 before they are scored, so every number in ``metrics.json``
can be recomputed exactly from ``predictions.npz`` (rounding moves PSNR by ~0.01 dB).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vp_jax import metrics as M
from vp_jax.generation import make_generate_fn


def _to_uint8(x):
    return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)


@functools.cache
def _make_scorer():
    """One jitted scorer per process (validation runs every epoch; compile it once)."""

    @jax.jit
    def score(pred, target):
        """pred float [N, B, T, H, W, C] in [0, 1]; target uint8 [B, T, H, W, C]."""
        pred_u8 = _to_uint8(pred)
        p = pred_u8.astype(jnp.float32) / 255.0
        t = jnp.broadcast_to(target.astype(jnp.float32) / 255.0, p.shape)
        return pred_u8, M.psnr_per_frame(p, t), M.ssim_per_frame(p, t)

    return score


def _batches(num: int, batch_size: int, max_batches: int):
    starts = list(range(0, num, batch_size))
    if max_batches:
        starts = starts[:max_batches]
    return [(s, min(s + batch_size, num)) for s in starts]


def predict_and_score(
    config,
    params,
    batch_stats,
    source,
    *,
    key,
    num_samples: int = 1,
    bn_mode: str = "inference",
    batch_size: int = 32,
    max_batches: int = 0,
    cond_permutation: np.ndarray | None = None,
    keep_predictions: bool = False,
    generate_fn=None,
    progress: bool = False,
    cond_stats: dict | None = None,
    mesh="auto",
) -> dict:
    """Generate ``num_samples`` futures for each sequence of ``source`` and score them.

    Returns numpy arrays: ``psnr`` and ``ssim`` ``[N, S, T_pred]``; ``copy_psnr`` and
    ``copy_ssim`` ``[S, T_pred]`` (last context frame repeated); with ``keep_predictions`` also
    ``pred`` (sample 0), ``target`` and ``context`` uint8 ``[S, T, 64, 64, 3]``.
    ``cond_stats`` (mean/std from the training split) standardises the conditions as in training.
    ``cond_permutation`` reorders the conditions across sequences (the shuffled-condition test).
    The last batch is padded by repeating its last sequence; padded rows are dropped (with
    ``bn_mode='batch_stats'`` the padding takes part in the batch statistics).
    ``mesh``: a :mod:`vp_jax.parallel` mesh to split each batch over, None for one device, or
    ``'auto'`` (all devices when more than one is visible; ``batch_size`` must split evenly).
    """
    from vp_jax import parallel

    n_past, n_eval = config.n_past, config.n_eval
    if isinstance(mesh, str):
        mesh = parallel.auto_mesh()
    if mesh is not None:
        parallel.check_batch_size(batch_size, mesh, "eval.batch_size")
        params, batch_stats = parallel.replicate((params, batch_stats), mesh)
    generate = generate_fn or make_generate_fn(config, num_samples=num_samples, bn_mode=bn_mode)
    score = _make_scorer()
    out = {k: [] for k in ("psnr", "ssim", "copy_psnr", "copy_ssim", "pred", "target", "context")}
    spans = _batches(len(source), batch_size, max_batches)
    for i, (lo, hi) in enumerate(tqdm(spans, desc="generate", disable=not progress, leave=False)):
        idx = np.arange(lo, lo + batch_size).clip(max=hi - 1)  # pad the last batch
        frames = np.asarray(source.frames[idx, :n_eval])
        cidx = idx if cond_permutation is None else cond_permutation[idx]
        cond = np.asarray(source.cond[cidx, :n_eval], dtype=np.float32)
        if cond_stats is not None:
            cond = (cond - cond_stats["mean"]) / cond_stats["std"]
        cond = cond[..., : config.model.cond_dim]
        frames_in, cond_in = parallel.put_batch((frames, cond), mesh)
        pred = generate(params, batch_stats, frames_in, cond_in, jax.random.fold_in(key, i))
        target = frames[:, n_past:]
        pred_u8, psnr, ssim = score(pred, target)
        copy = np.broadcast_to(frames[:, n_past - 1 : n_past], target.shape)
        _, copy_psnr, copy_ssim = score(jnp.asarray(copy, jnp.float32)[None] / 255.0, target)
        keep = hi - lo
        out["psnr"].append(np.asarray(psnr)[:, :keep])
        out["ssim"].append(np.asarray(ssim)[:, :keep])
        out["copy_psnr"].append(np.asarray(copy_psnr)[0, :keep])
        out["copy_ssim"].append(np.asarray(copy_ssim)[0, :keep])
        if keep_predictions:
            out["pred"].append(np.asarray(pred_u8[0, :keep]))
            out["target"].append(target[:keep])
            out["context"].append(frames[:keep, :n_past])
    result = {}
    for k, parts in out.items():
        if parts:
            result[k] = np.concatenate(parts, axis=1 if k in ("psnr", "ssim") else 0)
    return result


def summarize(scores: dict, shuffled: dict | None = None) -> dict:
    """The ``metrics.json`` numbers from :func:`predict_and_score` outputs."""
    psnr, ssim = scores["psnr"], scores["ssim"]  # [N, S, T]
    summary = {
        "psnr": float(psnr[0].mean()),
        "psnr_per_frame": psnr[0].mean(axis=0).tolist(),
        "ssim": float(ssim[0].mean()),
        "ssim_per_frame": ssim[0].mean(axis=0).tolist(),
        "baseline_copy_last": {
            "psnr": float(scores["copy_psnr"].mean()),
            "psnr_per_frame": scores["copy_psnr"].mean(axis=0).tolist(),
            "ssim": float(scores["copy_ssim"].mean()),
            "ssim_per_frame": scores["copy_ssim"].mean(axis=0).tolist(),
        },
        "num_sequences": int(psnr.shape[1]),
        "num_samples": int(psnr.shape[0]),
    }
    if psnr.shape[0] > 1:
        for name, values in (("psnr", psnr), ("ssim", ssim)):
            bm = M.best_and_mean_of_n(values)
            summary.setdefault("best_of_n", {})[name] = float(np.mean(bm["best_per_frame"]))
            summary["best_of_n"][f"{name}_per_frame"] = np.asarray(bm["best_per_frame"]).tolist()
            summary.setdefault("mean_of_n", {})[name] = float(np.mean(bm["mean_per_frame"]))
            summary["mean_of_n"][f"{name}_per_frame"] = np.asarray(bm["mean_per_frame"]).tolist()
    if shuffled is not None:
        summary["shuffled_condition"] = {
            "psnr": float(shuffled["psnr"][0].mean()),
            "ssim": float(shuffled["ssim"][0].mean()),
        }
    return summary


def write_json(obj: dict, path: str) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def write_npz(path: str, **arrays) -> None:
    """Write an .npz atomically."""
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (for n > 1).

    Each sequence gets the conditions of its successor in a random cyclic order.
    """
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def _table(summary: dict) -> str:
    rows = [("model", summary["psnr"], summary["ssim"])]
    if "best_of_n" in summary:
        rows.append((f"best of {summary['num_samples']}", summary["best_of_n"]["psnr"], summary["best_of_n"]["ssim"]))
        rows.append((f"mean of {summary['num_samples']}", summary["mean_of_n"]["psnr"], summary["mean_of_n"]["ssim"]))
    base = summary["baseline_copy_last"]
    rows.append(("copy last context frame", base["psnr"], base["ssim"]))
    if "shuffled_condition" in summary:
        sh = summary["shuffled_condition"]
        rows.append(("model, shuffled conditions", sh["psnr"], sh["ssim"]))
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["", "PSNR (dB)", "SSIM"]).set_index("")
    return frame.to_string(float_format=lambda v: f"{v:.3f}")


def evaluate_workdir(
    workdir: str,
    *,
    checkpoint: str = "best",
    split: str = "test",
    num_samples: int | None = None,
    bn_mode: str | None = None,
    data_root: str | None = None,
) -> dict:
    """Restore a checkpoint of ``workdir`` and write ``DIR/eval/<split>/`` (see eval.py)."""
    from vp_jax import visualize
    from vp_jax.config import load_config_json, model_config, validate
    from vp_jax.data.pipeline import condition_stats, open_split
    from vp_jax.errors import VPError
    from vp_jax.training.checkpoints import CheckpointStore
    from vp_jax.training.state import create_train_state

    if not os.path.isdir(workdir):
        raise VPError(f"{workdir}: no such workdir")
    config = load_config_json(os.path.join(workdir, "config.json"))
    if data_root:
        config.data.root = data_root
    validate(config)
    from vp_jax import parallel

    parallel.initialize_distributed(config)  # multi-host only; before any other JAX call
    num_samples = num_samples or config.eval.num_samples
    bn_mode = bn_mode or config.eval.bn_mode
    if num_samples < 1:
        raise VPError(f"--num_samples {num_samples}: expected an integer >= 1")
    model_cfg = model_config(config)

    abstract = jax.eval_shape(lambda k: create_train_state(config, k), jax.random.key(0))
    with CheckpointStore(workdir, keep=config.checkpoint.keep, read_only=True) as store:
        state, meta = store.restore(checkpoint, abstract, model_cfg)
    source = open_split(config.data, split)
    key = jax.random.fold_in(jax.random.key(config.seed), 7919)

    cond_stats = condition_stats(open_split(config.data, "train")) if config.data.normalize_condition else None
    common = dict(bn_mode=bn_mode, batch_size=config.eval.batch_size, cond_stats=cond_stats)
    scores = predict_and_score(
        config, state.params, state.batch_stats, source, key=key, num_samples=num_samples,
        keep_predictions=True, progress=True, **common,
    )
    shuffled = None
    if model_cfg.cond_dim > 0 and len(source) > 1:
        shuffled = predict_and_score(
            config, state.params, state.batch_stats, source, key=key, num_samples=1,
            cond_permutation=derangement(len(source), config.seed), **common,
        )
    summary = summarize(scores, shuffled)
    summary.update(
        checkpoint_step=int(state.step),
        checkpoint=str(checkpoint),
        split=split,
        bn_mode=bn_mode,
        n_past=int(config.n_past),
        n_eval=int(config.n_eval),
        predicted_frames=list(range(config.n_past, config.n_eval)),
    )

    if not parallel.is_main_process():
        return summary
    out_dir = os.path.join(workdir, "eval", split)
    os.makedirs(os.path.join(out_dir, "gifs"), exist_ok=True)
    write_json(summary, os.path.join(out_dir, "metrics.json"))
    write_npz(
        os.path.join(out_dir, "predictions.npz"),
        pred=scores["pred"], target=scores["target"], context=scores["context"],
    )
    visualize.plot_per_frame(summary, os.path.join(out_dir, "per_frame.png"))
    for j in range(min(config.eval.num_gifs, len(scores["pred"]))):
        visualize.write_gif(
            np.concatenate([scores["context"][j], scores["pred"][j]]),
            np.concatenate([scores["context"][j], scores["target"][j]]),
            config.n_past,
            os.path.join(out_dir, "gifs", f"sequence_{j:03d}.gif"),
        )
    print(f"{split} split, {summary['num_sequences']} sequences, checkpoint step {summary['checkpoint_step']} "
          f"({checkpoint}), frames {config.n_past}..{config.n_eval - 1} predicted from {config.n_past}, "
          f"BatchNorm {bn_mode}")
    print(_table(summary))
    print(f"wrote {out_dir}/metrics.json, predictions.npz, per_frame.png, gifs/")
    return summary
