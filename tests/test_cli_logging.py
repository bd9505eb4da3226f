"""What train.py/eval.py do to logging: orbax (through absl) is quiet, vp_jax's warnings are not."""

from __future__ import annotations

import subprocess
import sys

# As train.py: absl's app.run (which routes Python logging through absl's handler), then cli's setup.
SCRIPT = """
import logging
from absl import app
from absl import logging as absl_logging
from vp_jax import cli

def main(argv):
    cli.quiet_library_logs()
    absl_logging.warning("ORBAX-LIKE absl warning")
    absl_logging.error("absl error")
    logging.getLogger("vp_jax.data.pipeline").warning("data/train: skipped 2 bad sequences")
    logging.getLogger("vp_jax.data.pipeline").info("building the cache (once)")

app.run(main)
"""


def test_absl_is_quiet_and_vp_jax_warnings_reach_the_user():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    assert "skipped 2 bad sequences" in proc.stderr, proc.stderr
    assert "absl error" in proc.stderr
    assert "ORBAX-LIKE" not in proc.stderr and "building the cache" not in proc.stderr
