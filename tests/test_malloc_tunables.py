"""The launcher line of docs/performance.md: with its GLIBC_TUNABLES a freed large buffer stays in
the process, so allocating it again costs no page faults (as XLA:CPU's per-step buffers)."""

import json
import os
import pathlib
import platform
import re
import subprocess
import sys

import pytest

from vp_jax.runtime.xla_flags import MALLOC_TUNABLES

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "performance.md"

# Allocate, fill and free a 256 MiB buffer twice in a worker thread (as XLA's threads do); print
# the page faults of each round. With glibc's defaults each one is mapped fresh (mmap) and
# unmapped on free, so the second round faults every page in again.
SCRIPT = """
import ctypes, json, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
def work():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = libc.malloc(2**28)
        ctypes.memset(a, 1, 2**28)
        libc.free(a)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps(faults))
"""


def second_round_faults(tunables: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)[1]


def test_docs_launcher_line_is_the_constant():
    lines = re.findall(r"GLIBC_TUNABLES=(\S+) python", DOCS.read_text())
    assert lines and set(lines) == {MALLOC_TUNABLES}


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_second_allocation_reuses_memory():
    pages = 2**28 // os.sysconf("SC_PAGE_SIZE")
    assert second_round_faults(None) > 0.5 * pages  # glibc's default: faulted in again
    assert second_round_faults(MALLOC_TUNABLES) < 0.05 * pages  # reused: (almost) no new pages
    # each setting pulls its weight: without one arena a worker thread's blocks are mmap'd anyway
    assert second_round_faults(MALLOC_TUNABLES.replace("arena_max=1:", "")) > 0.5 * pages
