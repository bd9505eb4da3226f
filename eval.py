"""Evaluate a trained workdir: the lab's PSNR, SSIM, best-of-N, baselines, GIFs; LPIPS and FVD.

    python eval.py --workdir runs/pushbot                       # best checkpoint, test split
    python eval.py --workdir runs/lab --checkpoint latest --split validate --num_samples 100
    python eval.py --workdir runs/lab --protocol svg            # 2 -> 28, best of 100
    python eval.py --workdir runs/pushbot --lpips alex,vgg --fvd --num_samples 4 --fvd_repeats 4
    python eval.py --workdir runs/pushbot --action_fidelity     # + actions read back by an inverse model

Writes DIR/eval/<split>/{metrics.json, predictions.npz, per_frame.png, gifs/} (DIR/eval/<split>-<protocol>/
for a named protocol) and prints a table. metrics.json holds the protocol card. LPIPS and FVD need
pip install -e ".[metrics]".
"""

import dataclasses
import os
import sys

from absl import app, flags

from vp_jax.config import cli_flags_parser
from vp_jax.errors import cli_main
from vp_jax.tools import cli

flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
flags.DEFINE_enum("split", "test", ["train", "validate", "test"], "Which split to evaluate.")
flags.DEFINE_integer("num_samples", None, "Samples per sequence (default: the config's eval.num_samples).")
flags.DEFINE_enum("bn_mode", None, ["inference", "batch_stats"], "BatchNorm mode (default: config's).")
flags.DEFINE_string("data_root", None, "Override config.data.root (data moved since training).")
flags.DEFINE_enum("protocol", "custom", ["lab", "svg", "bair-1to15", "custom"],
                  "A named protocol, or custom: the config's settings and the flags below (docs/metrics.md).")
flags.DEFINE_integer("predict_frames", None, "custom: frames to predict (default: the config's n_eval - n_past).")
flags.DEFINE_list("lpips", None, "custom: LPIPS networks to score with, e.g. alex or alex,vgg.")
flags.DEFINE_boolean("fvd", None, "custom: compute FVD (I3D features of real and predicted clips).")
flags.DEFINE_boolean("fvd_context", None, "custom: include the context frames in every FVD clip (default true).")
flags.DEFINE_integer("fvd_repeats", None, "custom: FVDs to compute, repeat r with sample r (default 1).")
flags.DEFINE_integer("num_sequences", None, "Score only the first N sequences of the split (recorded in the card).")
flags.DEFINE_integer("fvd_batch_size", 8, "Clips per I3D call (memory; does not change the numbers).")
flags.DEFINE_integer("batch_size", None, "Sequences per generation call (default: the config's eval.batch_size, "
                     "lowered to keep batch x samples <= 256); memory grows with it times samples times frames.")
flags.DEFINE_boolean("action_fidelity", False, "Also train an inverse model (frames t, t+1 -> action t) on the "
                     "training split and report how well it reads the actions back from the predictions.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


@cli_main
def main(argv):
    cli.start(argv)
    from vp_jax.config import load_workdir_config

    load_workdir_config(FLAGS.workdir, FLAGS.data_root)  # a missing or bad workdir: one line, before JAX loads
    from vp_jax.evaluation.evaluate import EvalOptions, evaluate_workdir

    options = {f.name: FLAGS[f.name].value for f in dataclasses.fields(EvalOptions)}
    options["lpips"] = tuple(FLAGS.lpips) if FLAGS.lpips is not None else None
    evaluate_workdir(FLAGS.workdir, EvalOptions(**options))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    app.run(main, flags_parser=cli_flags_parser())  # flag errors: one line, exit 2
