"""Helpers for the multi-process tests (not a test module): start ``train.py`` as N processes of
one ``jax.distributed`` run on this machine (a coordinator on localhost, one CPU device and gloo
collectives per process), as the README's launch line does.

Each process runs :data:`DRIVER`, which records, before handing over to ``train.py``:

* ``LOG.seq.<process>``: per training batch, ``[data epoch, position, sequence ids]`` of the rows
  this process read;
* ``LOG.writes.<process>``: every file or folder under the workdir that this process's Python
  code opened for writing, created, renamed or removed (``sys.addaudithook``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r"""
import json, os, runpy, sys
log, workdir = os.environ["VP_TEST_LOG"], os.path.abspath(os.environ["VP_TEST_WORKDIR"])
me = os.environ.get("JAX_PROCESS_ID", "0")
writes = open(f"{log}.writes.{me}", "a", buffering=1)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path):
    try:
        return os.path.abspath(os.fsdecode(path)).startswith(workdir)
    except (TypeError, ValueError):
        return False

def hook(event, args):
    if event == "open" and args and inside(args[0]):
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITE_FLAGS):
            writes.write(f"open {os.fsdecode(args[0])}\n")
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate") and args and inside(args[0]):
        writes.write(f"{event} {os.fsdecode(args[0])}\n")

sys.addaudithook(hook)

from vp_jax.data import pipeline

_next = pipeline.BatchIterator.__next__

def recording_next(self):
    state = self.get_state()
    batch = _next(self)
    if self.epochs is None:  # the training iterator
        ids = self.batch_indices(state["epoch"], state["position"]).tolist()
        with open(f"{log}.seq.{me}", "a") as f:
            f.write(json.dumps([state["epoch"], state["position"], ids]) + "\n")
    return batch

pipeline.BatchIterator.__next__ = recording_next
sys.argv = ["train.py", *sys.argv[1:]]
sys.path.insert(0, os.getcwd())
runpy.run_path(os.path.join(os.getcwd(), "train.py"), run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def environment(num_processes: int, process_id: int, port: int, log: str, workdir: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", VP_TEST_LOG=log, VP_TEST_WORKDIR=workdir)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    if num_processes > 1:  # the README's launch line
        # Without XLA's optimisation (conftest's fast compiling) every cross-process reduction
        # stays a collective of its own: the run takes twice as long.
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if not f.startswith(("--xla_backend_optimization_level", "--xla_llvm_disable")))
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(num_processes),
                   JAX_PROCESS_ID=str(process_id))
    return env


def start(num_processes: int, workdir: str, log: str, args: list[str]) -> list[subprocess.Popen]:
    """Start ``train.py --workdir workdir ARGS`` as ``num_processes`` processes (stdout and stderr
    to ``log.out.<i>``); with more than one, ``--config.parallel.distributed=True``."""
    port = free_port()
    extra = ["--config.parallel.distributed=True"] if num_processes > 1 else []
    procs = []
    for i in range(num_processes):
        out = open(f"{log}.out.{i}", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", DRIVER, "--workdir", workdir, *args, *extra], cwd=ROOT,
            env=environment(num_processes, i, port, log, workdir), stdout=out, stderr=subprocess.STDOUT,
        ))
    return procs


def wait(procs, timeout: float) -> list[int]:
    """Exit statuses; kills every process still running after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            codes.append(None)
    return codes


def run(num_processes: int, workdir: str, log: str, args: list[str], timeout: float = 600) -> None:
    procs = start(num_processes, workdir, log, args)
    codes = wait(procs, timeout)
    if codes != [0] * num_processes:
        raise AssertionError(f"exit statuses {codes}:\n" + "\n".join(
            f"--- process {i}\n" + output(log, i)[-3000:] for i in range(num_processes)))


def output(log: str, i: int) -> str:
    with open(f"{log}.out.{i}") as f:
        return f.read()


def read_lines(path: str) -> list[str]:
    return open(path).read().splitlines() if os.path.exists(path) else []


def sequence_log(log: str, num_processes: int) -> list:
    """``[(epoch, position, ids of the global batch)]`` in order: the processes' rows side by side."""
    import json

    per = [[json.loads(line) for line in read_lines(f"{log}.seq.{i}")] for i in range(num_processes)]
    assert len({len(p) for p in per}) == 1, [len(p) for p in per]
    out = []
    for rows in zip(*per):
        assert len({(e, p) for e, p, _ in rows}) == 1, rows
        out.append((rows[0][0], rows[0][1], [i for _, _, ids in rows for i in ids]))
    return out
