"""training/workdir.py: which config changes a resumed run accepts."""

import os

import pytest

from vp_jax.config import load_config_file
from vp_jax.errors import ConfigError
from vp_jax.training.workdir import check_same_run

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config():
    return load_config_file(os.path.join(CONFIGS, "lab_bair.py"))


def test_resume_accepts_how_long_and_how_to_evaluate_only():
    saved = _config()
    new = _config()
    new.train.epochs, new.eval.num_samples, new.checkpoint.keep = 500, 10, 7
    check_same_run(saved, new)
    for field, value in (("train.lr", 0.001), ("model.decoder_cond", 8), ("train.kl.free_bits", 0.5)):
        changed = _config()
        group, _, name = field.rpartition(".")
        node = changed
        for part in group.split("."):
            node = node[part]
        node[name] = value
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            check_same_run(saved, changed)


def test_one_writer_per_workdir(tmp_path):
    """A second lock on the same workdir is refused in one line naming the holder's pid; once the
    first is released (or its process died), the workdir can be locked again."""
    from vp_jax.errors import VPError
    from vp_jax.training.workdir import WorkdirLock

    with WorkdirLock(str(tmp_path)):
        with pytest.raises(VPError, match=rf"\.lock: another train.py \(pid {os.getpid()}\) is training this workdir"):
            with WorkdirLock(str(tmp_path)):
                pass
    with WorkdirLock(str(tmp_path)):
        pass
