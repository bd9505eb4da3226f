"""Writing files so that nothing is ever half-written: into a temporary sibling, renamed over the
target only once complete. A killed process leaves at most a hidden ``.tmp-*`` file behind, never
a truncated target."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yields a temporary path beside ``path``; renamed to ``path`` when the block completes,
    removed when it raises. ``suffix`` keeps an extension for writers that look at it
    (``np.savez`` appends ``.npz`` otherwise, image writers pick the format by it)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    return path


def write_json(path: str, obj, **dump_kwargs) -> str:
    return write_text(path, json.dumps(obj, **({"indent": 2} | dump_kwargs)))


def json_number(value) -> float | None:
    """A score for JSON: a float, or None (JSON null) for NaN or infinity (no score)."""
    value = float(value)
    return value if np.isfinite(value) else None


def json_numbers(values) -> list:
    """A per-frame curve for JSON: floats, None (JSON null) where a frame has no score."""
    return [json_number(v) for v in np.asarray(values, np.float64)]
