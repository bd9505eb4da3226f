"""Input pipeline throughput: packed cache vs PNG folders, and pushbot generation rate.

    python benchmarks/input_pipeline.py [--sequences 512] [--repeats 5] [--seconds 2] [--workdir DIR]

Prints one JSON object:

* ``cache_sequences_per_s``: 12-frame windows per second out of :class:`BatchIterator` over a
  packed cache (shuffled, prefetch thread on), for batch 12 (the lab's) and 32; page cache warm.
* ``png_sequences_per_s``: sequences per second read straight from the lab folder layout
  (PNG decode + CSV parse), for the first 12 frames and for all 30 (what a cache build does).
* ``pushbot_sequences_per_s``: 30-frame sequences generated and written per second (2 workers).
* with ``--grain`` (``pip install grain`` first; not a vp_jax dependency): ``grain_sequences_per_s``,
  the same batches (per-epoch shuffle, 12-frame windows, batch 12 and 32) from a ``grain``
  ``MapDataset -> shuffle -> batch -> to_iter_dataset`` pipeline with 2 read threads, interleaved
  run by run with ``cache_sequences_per_s``.

Each figure is the median over ``--repeats`` runs. A pushbot set of ``--sequences`` training
sequences is generated in a temporary folder (or ``--workdir``) and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vp_jax.data import cache, pushbot  # noqa: E402
from vp_jax.data.lab_folders import ACTIONS_CSV, POSITIONS_CSV, list_sequences, read_csv, read_png  # noqa: E402
from vp_jax.data.pipeline import BatchIterator, SequenceSource  # noqa: E402


def rate(fn, seconds: float) -> float:
    """Items per second of ``fn() -> items done``, run for about ``seconds``."""
    fn()  # warm-up (thread start, page cache)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start)


def read_first(seq: str, frames: int) -> int:
    read_csv(os.path.join(seq, ACTIONS_CSV), 30, 4)
    read_csv(os.path.join(seq, POSITIONS_CSV), 30, 3)
    for t in range(frames):
        read_png(os.path.join(seq, f"{t}.png"))
    return 1


def grain_batches(source: SequenceSource, batch: int, seq_len: int, seed: int):
    """BatchIterator's batches (shuffled every epoch, first ``seq_len`` frames) through grain."""
    import grain

    class Windows(grain.sources.RandomAccessDataSource):
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            frames, cond = source.window(int(i), 0, seq_len)
            return {"frames": frames, "cond": cond}

    ds = grain.MapDataset.source(Windows()).seed(seed).shuffle().repeat().batch(batch, drop_remainder=True)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=512, help="training sequences in the benchmark set")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0, help="length of one throughput run")
    p.add_argument("--gen-sequences", type=int, default=128, help="sequences per generation run")
    p.add_argument("--workdir", default=None)
    p.add_argument("--grain", action="store_true", help="also time the same batches through grain")
    args = p.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="vp_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        gen = []
        for r in range(args.repeats):
            out = os.path.join(work, f"gen{r}")
            start = time.perf_counter()
            pushbot.generate(out, train=args.gen_sequences, validate=0, test=0, seed=r, workers=2)
            gen.append(args.gen_sequences / (time.perf_counter() - start))
            shutil.rmtree(out)

        root = os.path.join(work, "set")
        pushbot.generate(root, train=args.sequences, validate=0, test=0, seed=0)
        start = time.perf_counter()
        cache.build_cache("pushbot", root, "train", os.path.join(work, "cache"))
        build = args.sequences / (time.perf_counter() - start)
        frames, cond, _ = cache.open_cache(os.path.join(work, "cache"))
        source = SequenceSource(frames, cond, name="bench")

        cached, grained = {}, {}
        for batch in (12, 32):
            runs, grain_runs = [], []
            for r in range(args.repeats):
                it = BatchIterator(source, batch, 12, seed=r, prefetch=2)
                runs.append(rate(lambda: len(next(it)["frames"]), args.seconds))
                it.close()
                if args.grain:
                    it = grain_batches(source, batch, 12, seed=r)
                    grain_runs.append(rate(lambda: len(next(it)["frames"]), args.seconds))
            cached[f"batch{batch}"] = round(statistics.median(runs))
            if args.grain:
                grained[f"batch{batch}"] = round(statistics.median(grain_runs))

        seqs = list_sequences(root, "train")
        png = {}
        for n_frames in (12, 30):
            runs = []
            for r in range(args.repeats):
                pos = iter(range(10**9))
                runs.append(rate(lambda: read_first(seqs[next(pos) % len(seqs)], n_frames), args.seconds / 2))
            png[f"frames{n_frames}"] = round(statistics.median(runs), 1)

        print(
            json.dumps(
                dict(
                    cpus=os.cpu_count(),
                    load_average_1min=round(os.getloadavg()[0], 2),
                    cache_sequences_per_s=cached,
                    **(dict(grain_sequences_per_s=grained) if args.grain else {}),
                    png_sequences_per_s=png,
                    cache_build_sequences_per_s=round(build, 1),
                    pushbot_sequences_per_s=round(statistics.median(gen), 1),
                    pushbot_runs=[round(g, 1) for g in gen],
                    repeats=args.repeats,
                    seq_len=12,
                ),
                indent=2,
            )
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
