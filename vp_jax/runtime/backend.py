"""Which backend-specific code paths the model takes: the CPU's, or the generic ones.

On XLA:CPU some operations are much faster written another way (measured in
``docs/performance.md``), so on a CPU the model uses, at trace time:

* hand-written gradients (``jax.custom_vjp``) for the convolution's kernel gradient, the 2x2
  max-pool, the nearest-neighbour upsampling and the gather of decoder steps
  (:mod:`vp_jax.models.kernels`), with fusion boundaries (``kernels.materialized``) in them;
* a fully unrolled ``lax.scan`` for the rollout's path with a teacher-forcing mask
  (:func:`scan_unroll`).

On every other backend (GPU, TPU) they are off: plain ``lax`` operations with JAX's own
gradients and rolled loops, which the GPU compilers handle well. The numbers are the same up to
float summation order (``tests/test_memory_options.py`` runs the loss both ways on the CPU: same
loss and gradients). The XLA flags (:mod:`vp_jax.runtime.xla_flags`) are decided before JAX starts, by the same
rule (:func:`vp_jax.runtime.xla_flags.runs_on_cpu`).

``VP_JAX_NO_CPU_KERNELS=1`` turns the CPU paths off on a CPU too (what a GPU runs), and so does
``with cpu_kernels_off():`` for what is traced inside it.
"""

from __future__ import annotations

import contextlib
import os

import jax

OPT_OUT_ENV = "VP_JAX_NO_CPU_KERNELS"
_TRUTHY = ("1", "true", "yes", "on")
_forced_off = 0  # depth of cpu_kernels_off() blocks


def cpu_kernels() -> bool:
    """Whether the CPU-specific code paths are used for what is traced now: on the CPU backend,
    unless ``VP_JAX_NO_CPU_KERNELS`` is set or inside :func:`cpu_kernels_off`."""
    if _forced_off or os.environ.get(OPT_OUT_ENV, "").strip().lower() in _TRUTHY:
        return False
    return jax.default_backend() == "cpu"


@contextlib.contextmanager
def cpu_kernels_off():
    """Trace the generic (GPU/TPU) code paths inside this block, also on a CPU. Affects functions
    traced inside it: a function jitted before keeps the program it was compiled with."""
    global _forced_off
    _forced_off += 1
    try:
        yield
    finally:
        _forced_off -= 1


def scan_unroll():
    """``unroll`` for the rollout's ``lax.scan`` over frames, whose body holds convolution
    gradients: fully unrolled
    with the CPU paths (XLA:CPU runs convolution gradients inside a while loop 10-30x slower than
    outside one, jax-ml/jax#12868), a rolled loop otherwise."""
    return True if cpu_kernels() else 1
