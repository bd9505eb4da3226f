"""The private names vp_jax/runtime/compat.py relies on still exist and still mean what it assumes."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import orbax.checkpoint as ocp

from vp_jax.runtime import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_jax_backend_started_reads_jaxs_registry():
    jax.devices()  # this process has a backend now
    assert compat.jax_backend_started()
    script = "import jax, jax.numpy\nfrom vp_jax.runtime import compat\nprint(int(compat.jax_backend_started()))\njax.devices()\nprint(int(compat.jax_backend_started()))\n"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "1"]  # importing JAX starts none; asking for devices does


def test_orbax_still_has_the_cleanup_wait(tmp_path):
    options = ocp.CheckpointManagerOptions(cleanup_tmp_directories=True, enable_async_checkpointing=False)
    manager = ocp.CheckpointManager(str(tmp_path / "c"), options=options, item_names=("state",))
    try:
        assert callable(getattr(manager, "_maybe_await_cleanup_tmp_directory", None))
        compat.await_orbax_tmp_cleanup(manager)
    finally:
        manager.close()


def test_config_flags_defers_a_missing_config_file_into_an_error_config(tmp_path):
    """config_flags keeps the IOError of a config file it cannot load in a placeholder, raised
    only when the config is used; vp_jax.config turns that into a one-line error."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv)
    fv(["prog", f"--config={tmp_path / 'missing.py'}"])
    assert compat.is_deferred_config_error(fv["config"].value)
    good = tmp_path / "good_config.py"
    good.write_text("import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n")
    fv2 = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv2)
    fv2(["prog", f"--config={good}"])
    assert not compat.is_deferred_config_error(fv2["config"].value)
