"""vp_jax.runtime.host_memory: freed large buffers stay in the process, so reusing them costs no page faults."""

import json
import os
import subprocess
import sys

import pytest

from vp_jax.runtime import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocate, fill and free a 256 MiB buffer twice in a worker thread (as XLA's threads do); print
# the page faults of the second round. Without the settings glibc maps each one fresh (mmap) and
# unmaps it on free, so the second round faults every page in again.
SCRIPT = """
import ctypes, json, resource, sys, threading
from vp_jax.runtime import host_memory
applied = host_memory.configure_malloc(force=True) if sys.argv[1] == "on" else {}
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
def work():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = libc.malloc(2**28)  # 256 MiB, every page written (malloc itself, as XLA does)
        ctypes.memset(a, 1, 2**28)
        libc.free(a)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _run(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(host_memory.OPT_OUT_ENV, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc only")
def test_second_allocation_reuses_memory():
    pages = 2**28 // os.sysconf("SC_PAGE_SIZE")
    off, on = _run("off"), _run("on")
    assert off["faults"][1] > 0.5 * pages  # the default: faulted in again (the behaviour being fixed)
    assert on["applied"] == {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
    assert on["faults"][1] < 0.05 * pages  # reused: (almost) no new pages


def test_opt_out(monkeypatch):
    monkeypatch.setattr(host_memory, "_done", None)
    monkeypatch.setenv(host_memory.OPT_OUT_ENV, "1")
    assert host_memory.configure_malloc(force=True) == {}
    assert host_memory._done is None
