"""Cost of LPIPS and FVD (the metrics extra): seconds per frame and per clip, and what a protocol costs.

Times, after compilation (median of ``--repeats`` calls), on synthetic uint8 frames:

* LPIPS (``alex`` and ``vgg``): ``lpips_per_frame`` on ``[N, B, T, 64, 64, 3]`` predictions
  against ``[B, T, ...]`` targets, the shape eval.py scores a batch in;
* the I3D feature pass of FVD: ``i3d_features`` on ``--fvd-batch`` clips of ``--clip-frames``
  frames (resized to 224x224 inside);
* the Fréchet distance of two 400-dimensional feature sets of ``--num-sequences`` clips.

Prints one JSON object, including the projected seconds for the 256 test sequences under
``bair-1to15`` (100 samples: LPIPS AlexNet on 15 frames, I3D on 256 x 101 clips of 16 frames)::

    python benchmarks/metrics.py                      # CPU-sized defaults
    python benchmarks/metrics.py --batch 32 --fvd-batch 32 --repeats 5    # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _timed(fn, repeats):
    fn()  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8, help="sequences per LPIPS call")
    p.add_argument("--frames", type=int, default=10, help="predicted frames per sequence for LPIPS")
    p.add_argument("--samples", type=int, default=1, help="samples N per LPIPS call")
    p.add_argument("--clip-frames", type=int, default=16, help="frames per FVD clip")
    p.add_argument("--fvd-batch", type=int, default=4, help="clips per I3D call")
    p.add_argument("--num-sequences", type=int, default=256, help="clips per set for the Frechet distance")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nets", default="alex,vgg")
    p.add_argument("--no-fvd", action="store_true")
    args = p.parse_args(argv)

    from vp_jax.runtime.xla_flags import configure_xla_flags

    configure_xla_flags()
    import jax
    import numpy as np

    from vp_jax.evaluation import fvd as F
    from vp_jax.evaluation.extras import versions
    from vp_jax.evaluation.perceptual import lpips_per_frame

    rng = np.random.default_rng(0)
    record = {"device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
              "cpu_count": os.cpu_count(), "versions": versions(), "settings": vars(args)}
    pred = rng.integers(0, 256, (args.samples, args.batch, args.frames, 64, 64, 3), dtype=np.uint8)
    target = rng.integers(0, 256, (args.batch, args.frames, 64, 64, 3), dtype=np.uint8)
    for net in args.nets.split(","):
        s = _timed(lambda: np.asarray(lpips_per_frame(pred, target, net)), args.repeats)
        frames = args.samples * args.batch * args.frames
        record[f"lpips_{net}_ms_per_frame"] = 1000 * s / frames
        # bair-1to15 on BAIR test: 256 sequences x 100 samples x 15 frames (targets once per batch; ~ per frame)
        record[f"lpips_{net}_bair_1to15_s"] = s / frames * 256 * 100 * 15
    if not args.no_fvd:
        clips = rng.integers(0, 256, (args.fvd_batch, args.clip_frames, 64, 64, 3), dtype=np.uint8)
        s = _timed(lambda: F.i3d_features(clips, batch_size=args.fvd_batch), args.repeats)
        record["i3d_s_per_clip"] = s / args.fvd_batch
        record["i3d_bair_1to15_s"] = s / args.fvd_batch * 256 * 101 * (16 / args.clip_frames)
        a, b = rng.normal(size=(args.num_sequences, 400)), rng.normal(size=(args.num_sequences, 400))
        record["frechet_distance_s"] = _timed(lambda: F.fvd_from_features(a, b), args.repeats)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
