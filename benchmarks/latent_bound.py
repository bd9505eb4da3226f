"""How much best-of-N can gain on pushbot: the spread of the futures the conditions leave open.

Each test sequence is replayed ``--samples`` times with the hidden randomness that its first
``n_past`` frames do not show drawn again from the generator's own prior
(:func:`vp_jax.data.pushbot.replay_futures`): frictions of objects not yet seen sliding, and the
uncontrolled object's turns, stops and starts. The conditions and the context stay the same. A
replay is a perfect model that knows everything but chance; its best-of-N minus mean-of-N
(:func:`vp_jax.evaluation.metrics.replay_gain`, scored as ``eval.py --num_samples N`` scores samples: over
the moving pixels and over whole frames) is what a latent can gain. A real model also errs
elsewhere; ``--floors`` adds the error of a model at that PSNR, which shrinks the gain.
``eval.py --num_samples N`` prints the same bound at the evaluated model's own floors. Prints
one JSON object::

    python benchmarks/latent_bound.py                        # 256 test sequences, 10 samples
    python benchmarks/latent_bound.py --floors 16 20 inf --version 1

Sequences are generated in memory (the quickstart's seed 0, test split); nothing is written.
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

from vp_jax.data import pushbot as pb  # noqa: E402
from vp_jax.evaluation import metrics as M  # noqa: E402


def replay_errors(spec, split: str, sequences: int, samples: int, n_past: int, n_eval: int):
    """Per-channel MSE ``[N, S, T, C]`` of the replays against the truth, over whole frames and over
    the moving pixels (NaN where none move), and the share of sequences whose replays differ at all."""
    whole, moving, differs = [], [], []
    for i in range(sequences):
        truth, _, futures = pb.replay_futures(spec, split, i, samples, n_past, n_eval)
        target, last = truth[n_past:] / 255.0, truth[n_past - 1] / 255.0
        futures = futures / 255.0
        mask = np.any(np.abs(target - last) > M.MOVING_THRESHOLD, axis=-1)[..., None]  # [T, H, W, 1]
        err = np.square(futures - target)
        count = mask.sum(axis=(1, 2))
        whole.append(err.mean(axis=(2, 3)))
        with np.errstate(invalid="ignore"):
            moving.append(np.where(count > 0, (err * mask).sum(axis=(2, 3)) / count, np.nan))
        differs.append(bool(np.any(futures != target)))
    return np.stack(whole, axis=1), np.stack(moving, axis=1), float(np.mean(differs))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=256)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="the data set's seed (the quickstart's: 0)")
    p.add_argument("--version", type=int, default=pb.VERSION, help=f"pushbot version, one of {pb.VERSIONS}")
    p.add_argument("--split", default="test")
    p.add_argument("--n-past", type=int, default=2)
    p.add_argument("--n-future", type=int, default=10)
    p.add_argument("--floors", type=float, nargs="+", default=[16.0, 20.0, 25.0, math.inf],
                   help="error floors in dB (inf: a model exact but for chance)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    spec = pb.Spec(seed=args.seed, version=args.version)
    whole, moving, differs = replay_errors(spec, args.split, args.sequences, args.samples, args.n_past,
                                           args.n_past + args.n_future)
    out = dict(sequences=args.sequences, samples=args.samples, version=args.version, split=args.split, seed=args.seed,
               n_past=args.n_past, n_future=args.n_future, fraction_of_sequences_with_any_difference=differs,
               by_floor={str(f): dict(best_minus_mean_moving_db=round(M.replay_gain(moving, f), 4),
                                      best_minus_mean_db=round(M.replay_gain(whole, f), 4)) for f in args.floors})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
