"""BAIR conversion throughput and memory: ``python -m vp_jax.data.bair`` on a synthetic release.

    python benchmarks/bair_convert.py [--sequences 2048] [--repeats 3] [--workers 2] [--workdir DIR]

Writes a synthetic release in the BAIR schema (``softmotion30_44k/{train,test}/traj_*.tfrecords``,
256 records a file, pushbot frames for both cameras; needs the ``tfrecord`` package of the dev
extra), converts it ``--repeats`` times from the folder and from a tar of it, each run in a
fresh process, and prints one JSON object:

* ``dir`` / ``tar``: ``sequences_per_s`` (median over the runs), ``seconds`` (each run),
  ``cpu_ms_per_sequence`` (CPU time of the converting process, user + system, a sequence:
  what another load on the machine does not change), ``peak_rss_mb`` (median of each
  process's peak resident memory);
* ``cache``: the same for ``data.source=bair``'s first use, packing the train split straight
  from the TFRecords into the training cache (no PNGs);
* ``small``: the same from the folder for a quarter of the sequences, and ``rss_growth_mb`` =
  peak RSS of the full run minus that of the quarter: near 0 when memory is flat in the number
  of sequences;
* ``projected_minutes_bair``: the real release's 43,520 sequences at the measured rates;
* ``release_mb``: the synthetic release's size on disk.

The release sits in the page cache (it was just written), so the figures are what the CPUs
allow; a release read from a slow disk converts at most at the disk's speed (a record is ~740 KB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BAIR_SEQUENCES = 43_520  # 43,264 train + 256 test in the real release
PER_FILE = 256


def write_release(root: str, sequences: int) -> str:
    """A synthetic release of ``sequences`` records (the last file is the test split)."""
    import numpy as np
    from tfrecord.writer import TFRecordWriter

    from vp_jax.data import pushbot

    pool = [pushbot.generate_sequence(0, "train", i)[:2] for i in range(32)]
    release = os.path.join(root, "softmotion30_44k")
    # Files of up to 256 records, at least 3 (train, the validate file, test); the last one is test.
    files = max(3, -(-sequences // PER_FILE))
    for k in range(files):
        count = sequences // files + (k < sequences % files)
        folder, first = ("test", 0) if k == files - 1 else ("train", k * PER_FILE)
        os.makedirs(os.path.join(release, folder), exist_ok=True)
        writer = TFRecordWriter(os.path.join(release, folder, f"traj_{first}_to_{first + PER_FILE - 1}.tfrecords"))
        for i in range(count):
            frames, cond = pool[(k * PER_FILE + i) % len(pool)]
            cond = cond + np.float32(i * 1e-4)
            datum = {}
            for t in range(30):
                datum[f"{t}/image_aux1/encoded"] = (frames[t].tobytes(), "byte")
                datum[f"{t}/image_main/encoded"] = (frames[t, :, ::-1].tobytes(), "byte")
                datum[f"{t}/action"] = (cond[t, :4].tolist(), "float")
                datum[f"{t}/endeffector_pos"] = (cond[t, 4:].tolist(), "float")
            writer.write(datum)
        writer.close()
    return release


def child(args) -> None:
    """One conversion (or, with ``--cache``, one cache build of the train split) in this process;
    prints its JSON record."""
    from vp_jax.data import bair, cache

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    if args.cache:
        n = cache.build_cache("bair", args.input, "train", args.out)["count"]
    else:
        release = bair.TarRelease(args.input) if args.input.endswith(".tar") else bair.DirRelease(args.input)
        manifest = bair.convert(release, args.out, workers=args.workers, progress=False)
        n = sum(v["sequences"] for v in manifest["splits"].values())
    secs = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    print(json.dumps(dict(sequences=n, seconds=secs, cpu_seconds=cpu, peak_rss_mb=peak_rss_mb())))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process image, while
    ``ru_maxrss`` keeps the parent's peak across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(source: str, out: str, workers: int, build_cache: bool = False) -> dict:
    """One run in a fresh process, into a new folder ``out`` (removed only at the end: deleting
    tens of thousands of files while the next run writes would slow that run down)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", source, "--out", out, "--workers", str(workers)]
    cmd += ["--cache"] if build_cache else []
    os.sync()  # the previous run's files reach the disk first, not during this run
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    secs = [r["seconds"] for r in runs]
    return dict(
        sequences=runs[0]["sequences"],
        sequences_per_s=round(runs[0]["sequences"] / statistics.median(secs), 1),
        seconds=[round(s, 3) for s in secs],
        cpu_ms_per_sequence=round(1000 * statistics.median(r["cpu_seconds"] / r["sequences"] for r in runs), 2),
        peak_rss_mb=round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="PNG-encoding threads of the converter")
    p.add_argument("--workdir", help="where to write the synthetic release (default: a temporary folder)")
    p.add_argument("--child", metavar="INPUT", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.input = args.child
        return child(args)

    work = tempfile.mkdtemp(prefix="bair-bench-", dir=args.workdir)
    try:
        full = write_release(os.path.join(work, "full"), args.sequences)
        small = write_release(os.path.join(work, "small"), max(3, args.sequences // 4))  # 3: a sequence a split
        tar = os.path.join(work, "bair.tar")
        with tarfile.open(tar, "w") as t:
            t.add(full, arcname="softmotion30_44k")
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(full) for f in fs)
        outs = (os.path.join(work, f"out{i}") for i in range(1000))
        dir_runs, tar_runs, cache_runs = [], [], []
        for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits all alike
            dir_runs.append(run_child(full, next(outs), args.workers))
            tar_runs.append(run_child(tar, next(outs), args.workers))
            cache_runs.append(run_child(full, next(outs), args.workers, build_cache=True))
        small_runs = [run_child(small, next(outs), args.workers) for _ in range(args.repeats)]
        record = dict(
            sequences=dir_runs[0]["sequences"],
            release_mb=round(size / 2**20, 1),
            workers=args.workers,
            cpus=os.cpu_count(),
            dir=summarise(dir_runs),
            tar=summarise(tar_runs),
            small=summarise(small_runs),
            cache=summarise(cache_runs),
        )
        record["rss_growth_mb"] = round(record["dir"]["peak_rss_mb"] - record["small"]["peak_rss_mb"], 1)
        record["projected_minutes_bair"] = {
            k: round(BAIR_SEQUENCES / record[k]["sequences_per_s"] / 60, 1) for k in ("dir", "tar", "cache")
        }
        print(json.dumps(record))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
