"""What train.py/eval.py do to logging: orbax (through absl) is quiet; vp_jax's messages are plain
lines, information on stdout and warnings on stderr, once each."""

from __future__ import annotations

import subprocess
import sys

# As train.py: absl's app.run (which routes Python logging through absl's handler), then cli's setup.
SCRIPT = """
import logging
from absl import app
from absl import logging as absl_logging
from vp_jax.tools import cli

def main(argv):
    cli.quiet_library_logs()
    cli.show_messages()
    absl_logging.warning("ORBAX-LIKE absl warning")
    absl_logging.error("absl error")
    logging.getLogger("vp_jax.data.pipeline").warning("data/train: skipped 2 bad sequences")
    logging.getLogger("vp_jax.data.pipeline").info("building the cache (once)")
    logging.getLogger("vp_jax.training.loop").info("epoch 1: loss %.4f", 0.5)
    logging.getLogger("other.library").warning("OTHER warning")

app.run(main)
"""


def test_absl_is_quiet_and_vp_jax_messages_reach_the_user_once():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    err = proc.stderr.splitlines()
    assert "warning: data/train: skipped 2 bad sequences" in err and proc.stderr.count("skipped 2 bad") == 1, err
    assert proc.stdout.splitlines() == ["building the cache (once)", "epoch 1: loss 0.5000"]
    assert "absl error" in proc.stderr and "OTHER warning" in proc.stderr  # other libraries' warnings: as before
    assert "ORBAX-LIKE" not in proc.stderr and "building the cache" not in proc.stderr
