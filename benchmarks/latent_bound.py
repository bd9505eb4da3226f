"""How much best-of-N can gain on pushbot: the spread of the futures the conditions leave open.

In pushbot the conditions (actions, end-effector positions) fix the gripper and the arm; the only
hidden quantity is each object's friction (``slip``), which sets how far a pushed object slides.
This script takes each test sequence, keeps its robot trajectory and replays the objects with
``--samples`` frictions drawn from the generator's own prior (:func:`vp_jax.data.pushbot.with_slip`),
and scores each replay against the truth exactly as ``eval.py --num_samples N`` scores samples:
per-frame PSNR over the moving pixels (``vp_jax.metrics.moving_mask``, threshold 0.05 against the
last context frame) and over the whole frame, best of N minus mean of N per sequence
(``vp_jax.metrics.best_and_mean_of_n``).

A replay is a perfect model that knows everything except the friction and samples it correctly:
its best minus mean is what a latent that models the friction can gain. A real model also has an
error floor; ``--floors`` adds that error (the MSE of a model at that PSNR, in every frame and
channel) to the replay's, since the gain shrinks as the floor rises:
PSNR_c = 10 log10(1 / (MSE_c(replay, truth) + 10^(-floor/10))). Prints one JSON object::

    python benchmarks/latent_bound.py                       # 256 test sequences, 10 samples
    python benchmarks/latent_bound.py --floors 21.8 30 inf  # gain at a moving-pixel PSNR of 21.8 dB, ...

Sequences are generated in memory (seed 0, the quickstart's test split); nothing is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vp_jax import metrics as M  # noqa: E402
from vp_jax.data import pushbot as pb  # noqa: E402


def frame_psnr(pred, target, mask, floor_mse):
    """Per-frame PSNR [T] over ``mask [T, H, W]`` with ``floor_mse`` added to each channel's MSE."""
    m = mask[..., None].astype(np.float64)
    count = m.sum(axis=(1, 2))  # [T, 1]
    mse = (np.square(pred - target) * m).sum(axis=(1, 2)) / np.maximum(count, 1.0) + floor_mse  # [T, C]
    cap = 10.0 ** (-M.PSNR_CAP / 10.0)
    psnr = np.mean(10.0 * np.log10(1.0 / np.maximum(mse, cap)), axis=-1)
    return np.where(count[:, 0] > 0, psnr, np.nan)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=256)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="the data set's seed (the quickstart's: 0)")
    p.add_argument("--split", default="test")
    p.add_argument("--n-past", type=int, default=2)
    p.add_argument("--n-future", type=int, default=10)
    p.add_argument("--start", type=int, default=0, help="first frame of the scored window (eval.py: 0)")
    p.add_argument("--floors", type=float, nargs="+", default=[21.8, 25.0, 30.0, math.inf],
                   help="error floors in dB (inf: a model exact but for the friction)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    n, s, lo, hi = args.sequences, args.samples, args.start + args.n_past, args.start + args.n_past + args.n_future
    floors = [10.0 ** (-f / 10.0) if math.isfinite(f) else 0.0 for f in args.floors]
    moving = np.zeros((len(floors), s, n, args.n_future))
    whole = np.zeros((len(floors), s, n, args.n_future))
    differs = np.zeros(n, bool)
    for i in range(n):
        ep = pb.simulate(pb.sequence_rng(args.seed, args.split, i))
        truth = pb.render(ep).astype(np.float64) / 255.0
        target, last = truth[lo:hi], truth[lo - 1]
        mask = np.any(np.abs(target - last[None]) > M.MOVING_THRESHOLD, axis=-1)
        everything = np.ones_like(mask)
        rng = np.random.default_rng([args.seed, i, 7])
        for j in range(s):
            replay = pb.with_slip(ep, rng.uniform(0.0, pb.SLIP_MAX, size=len(ep.obj_radius)))
            pred = pb.render(replay).astype(np.float64)[lo:hi] / 255.0
            differs[i] |= bool(np.any(pred != target))
            for f, floor in enumerate(floors):
                moving[f, j, i] = frame_psnr(pred, target, mask, floor)
                whole[f, j, i] = frame_psnr(pred, target, everything, floor)
    out = dict(sequences=n, samples=s, window=[args.start, args.n_past, args.n_future], split=args.split,
               seed=args.seed, fraction_of_sequences_with_any_difference=float(differs.mean()), by_floor={})
    for f, name in enumerate(args.floors):
        bm_m = M.best_and_mean_of_n(moving[f])
        bm_w = M.best_and_mean_of_n(whole[f])
        out["by_floor"][str(name)] = dict(
            best_minus_mean_moving_db=round(float(bm_m["best"] - bm_m["mean"]), 4),
            best_minus_mean_db=round(float(bm_w["best"] - bm_w["mean"]), 4),
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
