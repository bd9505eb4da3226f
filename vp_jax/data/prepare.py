"""Pack one split into the memory-mapped cache the pipeline reads (see :mod:`vp_jax.data.cache`).

    python -m vp_jax.data.prepare --source lab --root data/processed_data --split train --out cache/lab-train
    python -m vp_jax.data.prepare --source tfds --root ~/tensorflow_datasets --split validate --out cache/tfds-val
    python -m vp_jax.data.prepare --source pushbot --root data/pushbot --split test --out cache/pb-test
    python -m vp_jax.data.prepare --source bair --root softmotion30_44k --split train --out cache/bair-train

``--source pushbot`` generates the set at ``--root`` first if it is missing (``--train``,
``--validate``, ``--test``, ``--seed`` as for ``python -m vp_jax.data.pushbot``). An existing
complete cache at ``--out`` built from the same source, root and split is left alone unless
``--force``. ``--verify CACHE`` only checks an existing cache's checksums. Errors are one line
and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import time

from vp_jax.data import cache, pushbot
from vp_jax.errors import DataError, cli_main


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vp_jax.data.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=cache.SOURCES)
    p.add_argument("--root", help="lab/pushbot folder root, the TFDS data dir, or the BAIR softmotion30_44k folder")
    p.add_argument("--split", choices=("train", "validate", "test"))
    p.add_argument("--out", help="cache folder to write")
    p.add_argument("--camera", default="image_aux1", choices=("image_aux1", "image_main"), help="tfds and bair")
    p.add_argument("--tfds-validate", type=int, default=256, help="tfds: last N of TFDS train held out as validate")
    p.add_argument("--frames", type=int, default=30, help="lab/pushbot: frames per sequence (lab: 30)")
    p.add_argument("--skip-bad", action="store_true", help="leave out bad sequences (counted) instead of stopping")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching cache exists")
    p.add_argument("--workers", type=int, default=2, help="PNG decoding threads")
    p.add_argument("--train", type=int, default=1000, help="pushbot: sequences to generate if missing")
    p.add_argument("--validate", type=int, default=256)
    p.add_argument("--test", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", type=int, default=2, help="pushbot: generator version if missing")
    p.add_argument("--verify", metavar="CACHE", help="only verify the checksums of an existing cache")
    args = p.parse_args(argv)

    if args.verify:
        manifest = cache.verify_cache(args.verify)
        print(f"{args.verify}: ok ({manifest['count']} sequences x {manifest['num_frames']} frames, checksums match)")
        return
    missing = [f"--{k}" for k in ("source", "root", "split", "out") if not getattr(args, k)]
    if missing:
        p.error(f"required: {' '.join(missing)}")

    if args.source == "pushbot":
        spec = pushbot.Spec(args.train, args.validate, args.test, args.seed, args.version, args.frames)
        if pushbot.ensure_pushbot(args.root, spec.check()):
            print(f"generated pushbot data at {args.root}")
    if not args.force and os.path.isfile(os.path.join(args.out, cache.MANIFEST_FILE)):
        try:
            manifest = cache.read_manifest(args.out)
        except DataError:
            manifest = None
        wanted = dict(source=args.source, root=cache.normalize_root(args.root), split=args.split)
        if args.source in cache.CAMERA_SOURCES:
            wanted["camera"] = args.camera
        if manifest is not None and all(manifest.get(k) == v for k, v in wanted.items()):
            print(f"{args.out}: cache already built ({manifest['count']} sequences); --force rebuilds it")
            return
        raise DataError(f"{args.out}: holds a cache of another source/root/split/camera; use --force or another --out")

    start = time.perf_counter()
    reading = cache.Reading(camera=args.camera, num_frames=args.frames, skip_bad=args.skip_bad,
                            tfds_validate=args.tfds_validate, workers=args.workers)
    manifest = cache.build_cache(args.source, args.root, args.split, args.out, reading, progress=True)
    secs = time.perf_counter() - start
    skipped = f", skipped {manifest['skipped']} bad sequences" if manifest["skipped"] else ""
    print(
        f"wrote {args.out}: {manifest['count']} sequences, frames uint8 {tuple(manifest['frames']['shape'])}, "
        f"cond float32 {tuple(manifest['cond']['shape'])}{skipped} in {secs:.1f} s"
    )


if __name__ == "__main__":
    main()
