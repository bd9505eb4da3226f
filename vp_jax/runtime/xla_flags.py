"""Fast XLA flags for the CPU backend, added to ``XLA_FLAGS`` before JAX starts its backend.

XLA reads ``XLA_FLAGS`` once, when the first backend is created, and **aborts the process** on
a flag (or a flag value) that its build does not know. The flags below are experimental and tied
to the jaxlib build, so :func:`configure_xla_flags` adds a flag only where it is known to be
accepted:

* for a jaxlib version in :data:`VERIFIED` (measured and checked by hand), directly;
* otherwise after a cheap check in a subprocess (``import jax; jax.devices()`` and one small
  jitted convolution with the candidate flags), whose answer is cached per jaxlib version in
  ``$XDG_CACHE_HOME/vp_jax/xla_flags.json`` (default ``~/.cache``).

It never touches a flag the user already set in ``XLA_FLAGS``, does nothing when JAX will run
on an accelerator (``JAX_PLATFORMS`` naming a non-CPU platform first, or an accelerator plugin
installed and ``JAX_PLATFORMS`` unset), and does nothing at all with ``VP_JAX_NO_XLA_FLAGS=1``.

Call it first thing in a command-line entry point, before any JAX computation::

    from vp_jax.runtime.xla_flags import configure_xla_flags
    configure_xla_flags()

Why these flags (measured on a 2-core AVX-512 CPU, jaxlib 0.10.2, lab model, batch 4; see
``benchmarks/train_step.py``): YNNPACK's convolution kernels are slower than XLA's own (Eigen)
convolutions for the VGG-64 layers; ``ynn_fusion_type=-individual_convolution`` keeps YNNPACK for
the other fusions it handles and gives the convolutions back to Eigen. Measured gain (lab model,
2-core AMD EPYC, median of 5 steps, ``python benchmarks/train_step.py --config configs/lab_bair.py --batch 12 --steps 5`` against the same with
``--no-xla-flags``): 13.0 s against 18.2 s a step at batch 12 (28 %), 4.9 s against 5.3 s at
batch 4 (7 %).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import warnings

#: glibc's malloc settings that keep XLA:CPU's large buffers in the process, for the launcher line
#: ``GLIBC_TUNABLES=<this> python train.py ...`` (glibc reads them at process start; docs/performance.md).
#: XLA:CPU allocates its buffers (for the lab model at batch 12 one 4.8 GB block of temporaries and
#: a dozen of 0.1-1.4 GB a step) with ``malloc`` from its worker threads; glibc serves such sizes
#: with a fresh ``mmap`` and unmaps them on ``free``, so every step page-faults all of it in again
#: (about 1.2 million faults and 4-5 s of kernel time a step on 2 cores). One arena, no ``mmap``d
#: blocks and no trimming keep freed memory for reuse; the process keeps its peak memory until it
#: exits. Measured gain (lab model, batch 12, 2-core AMD EPYC, median of 5 steps,
#: ``python benchmarks/train_step.py --config configs/lab_bair.py --batch 12 --steps 5``, the same three
#: settings applied through ``mallopt``): 13.0 s against 15.2 s a step (14 %); none at batch 4.
#: ``--malloc-tunables`` runs the benchmark under this line; ``tests/test_malloc_tunables.py``
#: checks that it keeps a freed 256 MiB block for reuse, as ``mallopt`` did.
MALLOC_TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"

from vp_jax.fileio import write_json
from vp_jax.runtime.compat import jax_backend_started

OPT_OUT_ENV = "VP_JAX_NO_XLA_FLAGS"

# The flags this module may add, in order. Each entry is one ``--name=value`` token.
CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

# jaxlib versions whose acceptance of CPU_FLAGS was checked by hand (no subprocess needed).
VERIFIED: frozenset[str] = frozenset({"0.10.2"})

_PROBE = (
    "import jax, jax.numpy as jnp\n"
    "jax.devices()\n"
    "x = jnp.ones((1, 8, 8, 4)); w = jnp.ones((3, 3, 4, 4))\n"
    "y = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',"
    " dimension_numbers=('NHWC', 'HWIO', 'NHWC')))(x, w)\n"
    "assert float(y[0, 4, 4, 0]) == 36.0\n"
)

_TRUTHY = ("1", "true", "yes", "on")


def flag_name(token: str) -> str:
    """``'--xla_foo=1'`` -> ``'xla_foo'`` (leading dashes and value removed)."""
    return token.lstrip("-").split("=", 1)[0]


def _jaxlib_version() -> str | None:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend_started() -> bool:
    """True when JAX already created a backend (then XLA_FLAGS is no longer read)."""
    return jax_backend_started()


def _accelerator_plugins() -> list[str]:
    """Names of installed PJRT plugins (CUDA, ROCm, TPU) that JAX would prefer over the CPU."""
    found = []
    try:
        found += [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    except Exception:  # noqa: BLE001 - a broken metadata entry must not stop training
        pass
    for mod in ("jax_plugins", "libtpu"):
        try:
            if importlib.util.find_spec(mod) is not None:
                found.append(mod)
        except (ImportError, ValueError):
            pass
    if "jax_plugins" in found:  # the namespace package: list what it holds
        found.remove("jax_plugins")
        try:
            import jax_plugins  # type: ignore

            found += [n for n in os.listdir(list(jax_plugins.__path__)[0]) if not n.startswith(("_", "."))]
        except Exception:  # noqa: BLE001
            pass
    return sorted(set(found))


def runs_on_cpu(environ=None) -> bool:
    """Whether JAX's default backend will be the CPU, decided without starting JAX."""
    environ = os.environ if environ is None else environ
    platforms = (environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not _accelerator_plugins()


def _cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "vp_jax", "xla_flags.json")


def _read_cache() -> dict:
    try:
        with open(_cache_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, cache, indent=1, sort_keys=True)
    except OSError:  # a read-only home: probe again next time
        pass


def probe_flags(flags: tuple[str, ...] | list[str], timeout: float = 120.0) -> bool:
    """Start a fresh Python with ``flags`` in XLA_FLAGS and check it survives a jitted conv."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env[OPT_OUT_ENV] = "1"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def accepted_flags(candidates: tuple[str, ...] = CPU_FLAGS) -> tuple[str, ...]:
    """The subset of ``candidates`` this jaxlib accepts (verified table, else cached probe)."""
    version = _jaxlib_version()
    if version is None:
        return ()
    if version in VERIFIED and set(candidates) <= set(CPU_FLAGS):
        return tuple(candidates)
    cache = _read_cache()
    accepted = []
    for flag in candidates:
        key = f"jaxlib=={version} {flag}"
        if key not in cache:
            cache[key] = probe_flags([flag])
            _write_cache(cache)
        if cache[key]:
            accepted.append(flag)
    return tuple(accepted)


def configure_xla_flags(candidates: tuple[str, ...] = CPU_FLAGS, *, verbose: bool = False) -> list[str]:
    """Append the accepted fast CPU flags to ``os.environ['XLA_FLAGS']``; return those added.

    Call before JAX creates its backend (before the first ``jax.devices()``, array or jit call).
    Adds nothing when ``VP_JAX_NO_XLA_FLAGS`` is set, when JAX will not run on the CPU, or for
    a flag whose name already appears in ``XLA_FLAGS`` (the user's setting wins).
    """
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() in _TRUTHY:
        return []
    if not runs_on_cpu():
        return []
    existing = os.environ.get("XLA_FLAGS", "").split()
    have = {flag_name(tok) for tok in existing}
    wanted = tuple(f for f in candidates if flag_name(f) not in have)
    if not wanted:
        return []
    if _backend_started():
        warnings.warn(
            "vp_jax.runtime.xla_flags.configure_xla_flags() was called after JAX started its backend; "
            "the fast CPU flags are not applied (call it before any JAX computation)",
            stacklevel=2,
        )
        return []
    added = list(accepted_flags(wanted))
    if added:
        os.environ["XLA_FLAGS"] = " ".join(existing + added)
    if verbose:
        print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}", file=sys.stderr)
    return added
