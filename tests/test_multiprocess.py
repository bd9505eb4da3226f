"""Several processes of one run (jax.distributed on localhost, gloo CPU collectives), as the README
launches them: the numbers of a one-process run, files from process 0 only, checkpoints that
resume on another number of processes, and a prompt stop of every process when one is killed.

The runs are ``train.py --config configs/tiny.py`` started by ``multiprocess_support``; slow tests
(``-m slow`` or ``VP_JAX_SLOW=1``) cover 2 and 4 processes, resuming 2 -> 1 and 1 -> 2, and kill -9
(a minute or more each on a 2-core CPU; tests/test_parallel.py checks the same sharding in one process).
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest
from multiprocess_support import output, read_lines, run, sequence_log, start, wait

from vp_jax.config import run_config
from vp_jax.errors import ConfigError
from vp_jax.runtime import parallel

EPOCH_SIZE = 3  # the tiny set: 16 sequences, batches of 4 -> 4 batches a data epoch


def train_args(data_root: str, niter: int, *extra) -> list[str]:
    return ["--config", "configs/tiny.py", f"--config.data.root={data_root}", f"--config.train.epochs={niter}",
            f"--config.train.epoch_size={EPOCH_SIZE}", *extra]


# ----------------------------------------------------------------------------- settings (no JAX run)


def test_distributed_settings_come_from_the_readme_environment():
    """JAX_NUM_PROCESSES and JAX_PROCESS_ID are read by vp_jax (the installed JAX reads only
    JAX_COORDINATOR_ADDRESS and stopped with 'Number of processes must be defined')."""
    env = {"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    settings = parallel.distributed_settings(None, env)
    assert settings == dict(coordinator_address="localhost:1234", num_processes=2, process_id=1,
                            heartbeat_timeout_seconds=100, initialization_timeout=300)
    assert "num_processes" not in parallel.distributed_settings(None, {})  # left to SLURM/Open MPI/TPU detection


@pytest.mark.parametrize("env, field", [
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two'"),
    ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES='0'"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID=2"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost"}, "JAX_COORDINATOR_ADDRESS='localhost'"),
])
def test_bad_distributed_environment_is_one_line_naming_it(env, field):
    with pytest.raises(ConfigError) as err:
        parallel.distributed_settings(None, env)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_bad_timeout_names_the_field(tiny_config):
    c = tiny_config.copy_and_resolve_references()
    c.parallel.heartbeat_timeout_s = 0
    with pytest.raises(ConfigError, match=r"^config.parallel.heartbeat_timeout_s = 0: expected"):
        parallel.distributed_settings(c, {})


def test_process_rows_make_up_the_global_batch(tiny_config, tmp_path):
    """process_batch_slice gives each process an equal, contiguous share in process order; a
    BatchIterator given those rows reads only them, with the global batch's order and state."""
    from data_support import COUNTS, SEED, make_pushbot

    from vp_jax.data.pipeline import BatchIterator, Sampling, open_split

    for n in (1, 2, 3, 4):
        rows = [np.arange(12)[parallel.process_batch_slice(12, i, n)] for i in range(n)]
        assert np.concatenate(rows).tolist() == list(range(12))
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        parallel.process_batch_slice(6, 0, 4)
    batch = {"x": np.arange(8)}
    assert parallel.host_piece(batch) is batch  # one process: the whole batch

    c = tiny_config.copy_and_resolve_references()
    c.data.root = make_pushbot(str(tmp_path / "pushbot"))
    c.data.pushbot = dict(seed=SEED, **COUNTS)
    src = open_split(c.data, "train")

    def iterator(rows=None):
        return BatchIterator(src, 4, 5, 3, Sampling(random_offset=True, rows=rows), prefetch=0)

    whole, pieces = iterator(), [iterator(parallel.process_batch_slice(4, i, 2)) for i in range(2)]
    for it in [whole, *pieces]:
        it.set_state({"epoch": 1, "position": 1})
    for _ in range(3):  # across the epoch's end (2 batches of 4 in 10 sequences)
        state = whole.get_state()
        full = next(whole)
        parts = [next(p) for p in pieces]
        assert all(p.get_state() == whole.get_state() for p in pieces)
        for key in ("frames", "cond"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
        ids = [p.batch_indices(state["epoch"], state["position"]) for p in pieces]
        assert np.concatenate(ids).tolist() == whole.batch_indices(state["epoch"], state["position"]).tolist()
        assert len(ids[0]) == 2


# ----------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_config):
    """configs/tiny.py's pushbot set (16 train sequences), made here once, before the runs."""
    from vp_jax.data.pipeline import open_split

    c = tiny_config.copy_and_resolve_references()
    c.data.root = str(tmp_path_factory.mktemp("mp_data") / "pushbot")
    for split in ("train", "validate", "test"):
        open_split(c.data, split)
    return c.data.root


class Reference:
    """The one-process run the others are compared with (2 epochs of 3 steps), started once;
    ``get()`` waits for it and returns ``(workdir, log)``."""

    def __init__(self, tmp, data_root):
        self.workdir, self.log, self.data_root = str(tmp / "run"), str(tmp / "log"), data_root
        self.procs = None

    def start(self):
        if self.procs is None:
            self.procs = start(1, self.workdir, self.log, train_args(self.data_root, 2))

    def get(self):
        self.start()
        codes = wait(self.procs, 600)
        assert codes == [0], output(self.log, 0)[-3000:]
        return self.workdir, self.log


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    return Reference(tmp_path_factory.mktemp("mp_ref"), data_root)


def metrics(workdir: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(workdir, "metrics.csv"))


def assert_same_numbers(workdir: str, ref_workdir: str) -> None:
    ours, ref = metrics(workdir), metrics(ref_workdir)
    assert ours["step"].tolist() == ref["step"].tolist()
    for col in ("loss", "mse", "kl"):  # loss about 0.1: a few 1e-6 apart after 6 Adam steps
        np.testing.assert_allclose(ours[col], ref[col], rtol=0, atol=1e-5, err_msg=col)
    # Predictions are rounded to uint8 before scoring: a summation-order difference of 1e-7 can
    # flip the rounding of a pixel, which moves PSNR by ~1e-3 dB.
    for col in ("val_psnr", "val_psnr_moving", "val_posterior_psnr", "val_copy_psnr"):
        np.testing.assert_allclose(ours[col], ref[col], atol=5e-3, err_msg=col)


def final_params(workdir: str):
    import jax

    from vp_jax.config import load_workdir_config, model_config
    from vp_jax.store.checkpoints import CheckpointStore
    from vp_jax.store.state import create_train_state

    config = load_workdir_config(workdir)
    abstract = jax.eval_shape(lambda: create_train_state(run_config(config), jax.random.key(0)))
    with CheckpointStore(workdir, read_only=True) as store:
        state, meta = store.restore("latest", abstract, model_config(config))
    return jax.tree.leaves(jax.device_get(state.params)), meta


def assert_only_process_0_wrote(workdir: str, log: str, num_processes: int) -> None:
    """Process 0 writes the workdir; the others only their part of orbax's collective checkpoint
    save (their array metadata ``array_metadatas/process_<i>`` and their OCDBT manifest in
    ``ocdbt.process_<i>/``; the latter written by TensorStore, outside Python's audit)."""
    assert read_lines(f"{log}.writes.0"), "process 0 wrote nothing?"
    for i in range(1, num_processes):
        for line in read_lines(f"{log}.writes.{i}"):
            path = line.split(" ", 1)[1]
            assert ".orbax-checkpoint-tmp" in path and path.endswith(f"array_metadatas/process_{i}"), line


def check_run(num_processes: int, tmp_path, data_root, reference) -> None:
    workdir, log = str(tmp_path / "run"), str(tmp_path / "log")
    reference.start()  # side by side: the compilers of the runs share the CPU's cores better
    run(num_processes, workdir, log, train_args(data_root, 2))
    reference = reference.get()
    for i in range(num_processes):
        assert f"data parallel over {num_processes} devices" in output(log, i)
    assert_same_numbers(workdir, reference[0])
    assert sequence_log(log, num_processes) == sequence_log(reference[1], 1)
    assert_only_process_0_wrote(workdir, log, num_processes)
    assert sorted(os.listdir(workdir)) == sorted(os.listdir(reference[0]))


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, data_root, reference):
    """Two processes, each reading half of every batch: the losses of every epoch (to 1e-5), the
    validation metrics and the batches' sequences of the one-process run; only process 0 writes."""
    check_run(2, tmp_path, data_root, reference)


@pytest.mark.slow
def test_four_processes_equal_one_process(tmp_path, data_root, reference):
    check_run(4, tmp_path, data_root, reference)


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_processes(tmp_path, data_root, reference, first, then):
    """Saved by ``first`` processes after 3 steps (data position 3 of 4), resumed by ``then``: the
    numbers, the parameters and the sequences of the uninterrupted run; every sequence of the
    first data epoch read exactly once."""
    workdir, log = str(tmp_path / "run"), str(tmp_path / "log")
    reference.start()
    run(first, workdir, log + "1", train_args(data_root, 1))
    _, meta = final_params(workdir)
    assert meta["iterator"] == {"epoch": 0, "position": EPOCH_SIZE}
    # The resumed run restores the state and checks it against the SHA-256 saved with it (a
    # mismatch would stop it as a damaged checkpoint): bit for bit the parameters saved.
    assert meta["state_sha256"]
    run(then, workdir, log + "2", train_args(data_root, 2))
    assert f"resuming {workdir} at step {EPOCH_SIZE}" in output(log + "2", 0)
    reference = reference.get()
    assert_same_numbers(workdir, reference[0])
    # Parameters are not compared with the reference's: the biases that BatchNorm follows have a
    # gradient of 0 up to float rounding, which Adam scales up to steps of lr (a summation order
    # of 2 processes moves them by ~1e-3); the losses and metrics above are what they compute.
    (_, ref_meta) = final_params(reference[0])
    assert final_params(workdir)[1]["iterator"] == ref_meta["iterator"]
    seen = sequence_log(log + "1", first) + sequence_log(log + "2", then)
    assert seen == sequence_log(reference[1], 1)
    first_epoch = [i for epoch, _, ids in seen if epoch == 0 for i in ids]
    assert sorted(first_epoch) == list(range(16))  # each once: none twice, none skipped
    assert [(e, p) for e, p, _ in seen] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("victim, signum", [(1, signal.SIGKILL), (0, signal.SIGKILL), (1, signal.SIGINT)])
def test_kill_9_of_one_process_stops_the_others(tmp_path, data_root, victim, signum):
    """kill -9 of a worker (or of process 0, the coordinator), or Ctrl-C of a worker, mid-run: the
    other process stops by itself, with one line saying why, well within the heartbeat timeout
    plus a margin."""
    workdir, log = str(tmp_path / "run"), str(tmp_path / "log")
    heartbeat = 10
    procs = start(2, workdir, log, train_args(data_root, 100, f"--config.parallel.heartbeat_timeout_s={heartbeat}"))
    try:
        deadline = time.monotonic() + 300
        while "epoch 2:" not in output(log, 0):  # training is under way: compiled, one epoch done
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), output(log, 0)[-3000:]
            time.sleep(0.5)
        os.kill(procs[victim].pid, signum)
        t0 = time.monotonic()
        code, victim_code = wait([procs[1 - victim], procs[victim]], timeout=heartbeat + 60)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = output(log, 1 - victim)
    assert code not in (None, 0), text[-3000:]
    assert elapsed < heartbeat + 60
    assert (f"error: process {1 - victim} of 2: another process of the run stopped" in text
            or "Terminating process because the JAX distributed service detected fatal errors" in text), text[-3000:]
    if signum == signal.SIGINT:
        assert victim_code == 130 and f"interrupted: process {victim} of 2: stopping every process" in output(log, victim)
    print(json.dumps({"victim": victim, "signal": int(signum), "survivor_exit": code, "seconds_to_stop": round(elapsed, 1)}))
