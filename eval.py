"""Evaluate a trained workdir: the lab's PSNR, SSIM, best-of-N, baselines, GIFs.

    python eval.py --workdir runs/pushbot                       # best checkpoint, test split
    python eval.py --workdir runs/lab --checkpoint latest --split validate --num_samples 100

Writes DIR/eval/<split>/{metrics.json, predictions.npz, per_frame.png, gifs/} and prints a table.
"""

import os
import sys

from absl import app, flags

from vp_jax.config import cli_flags_parser
from vp_jax import cli
from vp_jax.errors import cli_main

flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
flags.DEFINE_enum("split", "test", ["train", "validate", "test"], "Which split to evaluate.")
flags.DEFINE_integer("num_samples", None, "Samples per sequence (default: the config's eval.num_samples).")
flags.DEFINE_enum("bn_mode", None, ["inference", "batch_stats"], "BatchNorm mode (default: config's).")
flags.DEFINE_string("data_root", None, "Override config.data.root (data moved since training).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


@cli_main
def main(argv):
    cli.start(argv)
    from vp_jax.config import load_workdir_config

    load_workdir_config(FLAGS.workdir, FLAGS.data_root)  # a missing or bad workdir: one line, before JAX loads
    from vp_jax.evaluation import evaluate_workdir

    evaluate_workdir(
        FLAGS.workdir,
        checkpoint=FLAGS.checkpoint,
        split=FLAGS.split,
        num_samples=FLAGS.num_samples,
        bn_mode=FLAGS.bn_mode,
        data_root=FLAGS.data_root,
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    app.run(main, flags_parser=cli_flags_parser())  # flag errors: one line, exit 2
