"""What every command-line entry point does first (train.py, eval.py)."""

from __future__ import annotations

import logging
import sys

from vp_jax.errors import ConfigError
from vp_jax.runtime.xla_flags import configure_xla_flags


class _MessageHandler(logging.Handler):
    """vp_jax's messages as plain lines: information on stdout, warnings and errors on stderr with
    a ``warning:`` / ``error:`` prefix, each written with ``tqdm.write`` so that a progress bar on
    the terminal is redrawn below it instead of being broken."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"{'error' if record.levelno >= logging.ERROR else 'warning'}: {text}"
            tqdm.write(text, file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


def show_messages(level: int = logging.INFO) -> None:
    """Show what vp_jax logs (the ``vp_jax`` logger: progress lines of training, data preparation,
    warnings) as plain lines (:class:`_MessageHandler`); the command-line tools call it. A program
    that uses vp_jax as a library can call it too, or configure the ``vp_jax`` logger itself."""
    logger = logging.getLogger("vp_jax")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _MessageHandler)] + [_MessageHandler()]
    logger.setLevel(level)
    logger.propagate = False  # not again through absl's handler on the root logger


def quiet_library_logs() -> None:
    """Warnings and errors only (absl's app.run would show INFO), and only errors from what logs
    through absl (orbax logs every file it writes): vp_jax's own warnings, e.g. the data
    pipeline's "skipped N bad sequences", still reach the user."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)


def start(argv, options: str = "") -> None:
    """Quiet orbax's logging, show vp_jax's messages, add the fast CPU XLA flags (before JAX
    starts), refuse stray arguments."""
    quiet_library_logs()
    show_messages()
    configure_xla_flags()  # CPU only; VP_JAX_NO_XLA_FLAGS=1 opts out
    if len(argv) > 1:
        raise ConfigError(f"unexpected argument {argv[1]!r}" + (f" (options are {options})" if options else ""))
