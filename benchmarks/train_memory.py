"""Host memory over a training run: does the resident set stay flat from epoch to epoch?

Runs the real ``train.py`` on a config for many short epochs (each epoch trains, validates,
writes GIFs and plots, saves a checkpoint) and prints one JSON object from the run's own
``metrics.csv`` (whose ``rss_mb`` column is the process's resident memory at each epoch end)::

    python benchmarks/train_memory.py                                  # tiny config, 20 x 4 steps
    python benchmarks/train_memory.py --config configs/pushbot.py --epochs 10 --epoch-size 20

``growth`` = median RSS of the last 5 epochs / median RSS of epochs 5-9, minus 1 (the first
epochs compile and warm caches). Memory is steady when it stays within a few percent (measured
figures in docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--epoch-size", type=int, default=4)
    p.add_argument("--data-root", default=None, help="data.root override (default: the config's)")
    args = p.parse_args(argv)
    if args.epochs < 15:
        p.error("--epochs: at least 15 (epochs 5-9 against the last 5)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", args.config, "--workdir", workdir,
               f"--config.train.epochs={args.epochs}", f"--config.train.epoch_size={args.epoch_size}"]
        if args.data_root:
            cmd.append(f"--config.data.root={args.data_root}")
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"train.py failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        rss = pd.read_csv(os.path.join(workdir, "metrics.csv"))["rss_mb"].to_numpy()
    early, late = float(np.median(rss[5:10])), float(np.median(rss[-5:]))
    record = {
        "config": args.config, "epochs": args.epochs, "epoch_size": args.epoch_size,
        "rss_mb_epochs_5_9": round(early, 1), "rss_mb_last_5": round(late, 1),
        "growth": round(late / early - 1.0, 4), "rss_mb": [round(float(v), 1) for v in rss],
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
