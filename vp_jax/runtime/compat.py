"""The only places vp_jax reaches into other libraries' private names, each for want of a public API.

``tests/test_compat.py`` fails when a library changes one of them, instead of the workaround
silently doing nothing.

* :func:`jax_backend_started` -- whether JAX has created a backend (then ``XLA_FLAGS`` and
  ``jax.distributed.initialize`` come too late). JAX has no public query that does not itself
  start a backend.
* :func:`await_orbax_tmp_cleanup` -- orbax removes a killed save's temporary folders on a
  background thread that ``CheckpointManager.close()`` does not wait for; a process that exits
  right after opening the manager (a refused resume) would print that thread's traceback.
* :func:`is_deferred_config_error` -- ``ml_collections.config_flags`` defers an exception raised
  while loading a config file into a placeholder object instead of raising it.
"""

from __future__ import annotations

import sys


def jax_backend_started() -> bool:
    """True when JAX already created a backend (without starting one)."""
    xb = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(xb, "_backends", None))


def await_orbax_tmp_cleanup(manager) -> None:
    """Wait for an ``ocp.CheckpointManager``'s removal of leftover temporary folders."""
    await_cleanup = getattr(manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
        await_cleanup()


def is_deferred_config_error(value) -> bool:
    """Whether a ``config_flags`` value is the placeholder of a config file that failed to load."""
    return type(value).__name__ == "_ErrorConfig"
