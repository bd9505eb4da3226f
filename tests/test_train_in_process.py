"""The training loop's steady state, in this process on tiny data: no step waits for the host."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from data_support import COUNTS, SEED, make_pushbot

from vp_jax.config import run_config
from vp_jax.data.pipeline import BatchIterator, open_split
from vp_jax.store.checkpoints import CheckpointStore
from vp_jax.store.state import create_train_state
from vp_jax.training import loop
from vp_jax.training.step import make_train_step
from vp_jax.training.workdir import STEP_METRICS


@pytest.fixture(scope="module")
def config(tiny_config, tmp_path_factory):
    c = tiny_config.copy_and_resolve_references()
    c.data.root = make_pushbot(str(tmp_path_factory.mktemp("data") / "pushbot"))
    c.data.seq_len = 30
    c.data.pushbot = dict(seed=SEED, **COUNTS)
    return c


class _NoStop:
    requested = False


@pytest.mark.slow  # ~25 s on a 2-core CPU: VP_JAX_SLOW=1
def test_steady_state_steps_make_no_implicit_transfer(config, tmp_path, monkeypatch):
    """After the first epoch has compiled everything, an epoch of steps runs under
    ``jax.transfer_guard('disallow')``: the batch goes to the device explicitly, the step's key is
    folded in on the device, the epoch's sums stay there. On a CPU the guard only sees host-to-device
    transfers (device memory is host memory), so the host's reads are counted too: one per
    LOG_EVERY steps and one at the end of the epoch, none per step."""
    c = config.copy_and_resolve_references()
    c.train.epoch_size = 2 * loop.LOG_EVERY + 3
    batches = BatchIterator(open_split(c.data, "train"), batch_size=c.train.batch_size,
                            seq_len=c.n_past + c.n_future, seed=c.seed)
    with CheckpointStore(str(tmp_path / "w"), keep=1) as store:
        typed = run_config(c)
        run = loop._Run(typed, str(tmp_path / "w"), store, batches, None, True, jax.random.key(0), make_train_step(typed), None)
        state = create_train_state(typed, jax.random.key(0))
        state, sums, bad = loop._train_epoch(run, _NoStop(), state, None, 0, c.train.epoch_size - 1)  # compile
        reads = []
        device_get = jax.device_get
        monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or device_get(x))
        with jax.transfer_guard("disallow"):
            state, sums, bad = loop._train_epoch(run, _NoStop(), state, None, 1, 0)
    logged = [it for it in range(c.train.epoch_size) if it % loop.LOG_EVERY == 0 or it == c.train.epoch_size - 1]
    assert len(reads) == len(logged) + 1  # steps 0, 10, 20, the last, and the sums at the end
    assert int(state.step) == c.train.epoch_size + 1 and bad == 0
    assert sums["count"] == c.train.epoch_size and all(np.isfinite(sums[k]) for k in STEP_METRICS)
