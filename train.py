"""Train a conditional VAE for video prediction.

    python train.py --config configs/pushbot.py --workdir runs/pushbot
    python train.py --config configs/lab_bair.py --workdir runs/lab --config.data.root=/data/bair

Running the same command on an existing workdir resumes it from its latest checkpoint;
``python train.py --workdir DIR`` alone resumes with the workdir's own config.json.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from vp_jax.config import cli_flags_parser
from vp_jax.errors import ConfigError, cli_main
from vp_jax.tools import cli

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics, plots and GIFs.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


@cli_main
def main(argv):
    cli.start(argv, options="--config, --workdir, --config.FIELD=VALUE")
    from vp_jax.config import load_config_json, run_config

    config = FLAGS.config
    if config is None:
        saved = os.path.join(FLAGS.workdir, "config.json")
        if not os.path.exists(saved):
            raise ConfigError(f"--config is required: {saved} does not exist (a new run needs a config)")
        config = load_config_json(saved)
    run = run_config(config)  # a bad field: one line, before JAX and the training code load
    from vp_jax import train_and_evaluate
    from vp_jax.runtime import parallel

    parallel.initialize_distributed(run.config)  # config.parallel.distributed: multi-host, before JAX starts
    with parallel.stop_together():  # several processes: one fails -> all stop, one line each
        train_and_evaluate(run, FLAGS.workdir)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # configs/ importable
    app.run(main, flags_parser=cli_flags_parser())  # flag errors: one line, exit 2
