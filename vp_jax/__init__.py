"""vp_jax: action-conditioned stochastic video prediction (SVG-LP conditional VAE) in JAX/Flax.

The networks are Flax **Linen** modules.  Linen was chosen over NNX because the hot path is a
pure function of explicit pytrees (params, batch_stats, key) -> (loss, new batch_stats): that is
what `jax.jit`, `lax.scan` and `jax.sharding` want, orbax saves those pytrees as they are, and
BatchNorm's running statistics stay an explicit carry of the scan instead of hidden mutable
module state (the pitfall of the PyTorch original).
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "train_and_evaluate"]


def train_and_evaluate(config, workdir: str) -> dict:
    """Train ``config`` in ``workdir`` (resuming what is there), validating every
    ``eval.every_epochs`` epochs; return the last epoch's row (:func:`vp_jax.training.loop.train`)."""
    from vp_jax.evaluation.scoring import Validator  # on use: ``import vp_jax`` loads no JAX
    from vp_jax.training.loop import train  # on use: ``import vp_jax`` loads no JAX

    return train(config, workdir, Validator)


def __getattr__(name):
    # Imported on first use: ``import vp_jax`` stays free of JAX, so command-line entry points can
    # set XLA's flags before JAX starts.
    if name == "Predictor":
        from vp_jax.predictor import Predictor  # on use: ``import vp_jax`` loads no JAX

        return Predictor
    raise AttributeError(f"module 'vp_jax' has no attribute {name!r}")
