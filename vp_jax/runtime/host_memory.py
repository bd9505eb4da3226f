"""Keep the XLA CPU backend's large buffers in the process instead of mapping them fresh per step.

XLA:CPU allocates its buffers -- for the lab model at batch 12 one 4.8 GB block of temporaries
and a dozen 0.1-1.4 GB ones per train step -- with ``malloc`` from its worker threads. glibc
serves such sizes with a fresh ``mmap`` and gives them back with ``munmap`` on ``free``, so every
step page-faults all of it in again: about 1.2 million page faults and 4-5 s of kernel time per
step on a 2-core machine (measured with ``getrusage`` and ``strace -c``). Measured gain (lab
model, batch 12, 2-core AMD EPYC, median of 5 steps, ``python benchmarks/train_step.py --config configs/lab_bair.py --batch 12 --steps 5`` against the same
with ``--no-malloc-tuning``): 13.0 s against 15.2 s a step, 14 %; at batch 4 none (4.9 s against
4.4 s, within the noise). :func:`configure_malloc` tells glibc, through ``mallopt``, to keep freed memory for reuse:

* ``M_ARENA_MAX = 1``: all threads allocate from the main heap (a worker thread's own arena
  falls back to ``mmap`` for blocks above 64 MB whatever the other settings);
* ``M_MMAP_MAX = 0``: no allocation is served by its own ``mmap``;
* ``M_TRIM_THRESHOLD = SIZE_MAX``: free memory at the top of the heap is never given back.

The price: the process keeps its peak memory (resident set) until it exits, which a training or
evaluation process reaches in its first step anyway. The numbers computed do not change.

Call it first thing in a command-line entry point, before JAX starts threads (train.py and
eval.py do, through :func:`vp_jax.tools.cli.start`). It does nothing with ``VP_JAX_NO_MALLOC_TUNING=1``,
when JAX will run on an accelerator (:func:`vp_jax.runtime.xla_flags.runs_on_cpu`), or where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

from vp_jax.runtime.xla_flags import runs_on_cpu

OPT_OUT_ENV = "VP_JAX_NO_MALLOC_TUNING"

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

#: what :func:`configure_malloc` sets, as ``(name, parameter, value)``; ``-1`` as the trim
#: threshold is ``SIZE_MAX`` once glibc converts mallopt's ``int`` to its ``size_t`` setting.
SETTINGS = (("M_ARENA_MAX", M_ARENA_MAX, 1), ("M_MMAP_MAX", M_MMAP_MAX, 0), ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, -1))

_done: dict[str, int] | None = None


def _glibc():
    """The process's C library if it is glibc (with ``mallopt``), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def configure_malloc(*, force: bool = False) -> dict[str, int]:
    """Apply :data:`SETTINGS` with ``mallopt``; return ``{name: value}`` of those glibc accepted.

    Idempotent. ``force=True`` applies them even when JAX would run on an accelerator (tests).
    """
    global _done
    if _done is not None:
        return dict(_done)
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return {}
    if not force and not runs_on_cpu():
        return {}
    libc = _glibc()
    if libc is None:
        return {}
    _done = {name: value for name, param, value in SETTINGS if libc.mallopt(param, value) == 1}
    return dict(_done)
