"""What every command-line entry point does first (train.py, eval.py)."""

from __future__ import annotations

import logging

from vp_jax.errors import ConfigError


def quiet_library_logs() -> None:
    """Warnings and errors only (absl's app.run would show INFO), and only errors from what logs
    through absl (orbax logs every file it writes): vp_jax's own warnings, e.g. the data
    pipeline's "skipped N bad sequences", still reach the user."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)


def start(argv, options: str = "") -> None:
    """Quiet orbax's logging, add the fast CPU XLA flags and keep XLA's buffers in the heap (both
    before JAX starts), refuse stray arguments."""
    quiet_library_logs()
    from vp_jax.host_memory import configure_malloc
    from vp_jax.xla_flags import configure_xla_flags

    configure_xla_flags()  # CPU only; VP_JAX_NO_XLA_FLAGS=1 opts out
    configure_malloc()  # CPU only; VP_JAX_NO_MALLOC_TUNING=1 opts out
    if len(argv) > 1:
        raise ConfigError(f"unexpected argument {argv[1]!r}" + (f" (options are {options})" if options else ""))
