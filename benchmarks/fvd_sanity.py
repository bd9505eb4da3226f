"""Does FVD see what it should? Real against real, blurred and time-shuffled pushbot clips.

Takes ``2 M`` pushbot test sequences (generated in memory, the quickstart's seed), cuts one clip
of ``--clip-frames`` frames from each, and splits them into two halves A and B of M clips. Prints
one JSON object with

* ``fvd_real_halves``: FVD(A, B) -- two samples of the same distribution: the floor for M clips
  (a Gaussian fit to few clips is biased upwards, so it is not 0);
* ``fvd_blurred``: FVD(A, B blurred) (a Gaussian blur of ``--blur`` pixels on every frame: a
  blurry model);
* ``fvd_time_shuffled``: FVD(A, B with the frames of each clip in a random order: the right
  frames, the wrong motion);
* ``fvd_frozen``: FVD(A, B's first frame repeated: nothing moves);
* ``features_deterministic``: the I3D features of B computed twice are identical;
* ``batch_size_max_abs_diff``: the largest difference between B's features computed
  ``--batch`` clips a call and 1 clip a call (padding and batching change nothing but float
  summation order).

    python benchmarks/fvd_sanity.py                 # 2 x 32 clips of 16 frames
    python benchmarks/fvd_sanity.py --clips 128     # closer to the paper's 256

Needs the metrics extra (``pip install -e ".[metrics]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image, ImageFilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vp_jax.data import pushbot as pb  # noqa: E402
from vp_jax.evaluation import fvd as F  # noqa: E402


def blur(clips, radius: float):
    return np.stack([np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in clip])
                     for clip in clips])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=32, help="clips per half (M)")
    p.add_argument("--clip-frames", type=int, default=16)
    p.add_argument("--blur", type=float, default=1.5, help="Gaussian blur radius in pixels")
    p.add_argument("--batch", type=int, default=8, help="clips per I3D call")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    m, t = args.clips, args.clip_frames
    clips = np.stack([pb.generate_sequence(args.seed, "test", i)[0][:t] for i in range(2 * m)])
    a, b = clips[:m], clips[m:]
    rng = np.random.default_rng(args.seed)
    shuffled = np.stack([clip[rng.permutation(t)] for clip in b])
    frozen = np.repeat(b[:, :1], t, axis=1)

    def features(x, batch=args.batch):
        return F.i3d_features(x, batch_size=batch)

    fa, fb = features(a), features(b)
    fb_again = features(b)
    fb_one = features(b[: min(m, 4)], batch=1)
    out = dict(
        clips_per_half=m, clip_frames=t, blur_px=args.blur, seed=args.seed,
        fvd_real_halves=round(F.fvd_from_features(fa, fb), 2),
        fvd_blurred=round(F.fvd_from_features(fa, features(blur(b, args.blur))), 2),
        fvd_time_shuffled=round(F.fvd_from_features(fa, features(shuffled)), 2),
        fvd_frozen=round(F.fvd_from_features(fa, features(frozen)), 2),
        features_deterministic=bool(np.array_equal(fb, fb_again)),
        batch_size_max_abs_diff=float(np.abs(fb[: len(fb_one)] - fb_one).max()),
        feature_scale=float(np.abs(fb).max()),
        seconds=round(time.perf_counter() - t0, 1),
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
