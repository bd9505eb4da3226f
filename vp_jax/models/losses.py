"""The objective: per-step MSE and KL from a rollout's outputs, free bits, and their weighted sum.

    loss = sum_t mean((x̂_t - x_t)^2) + beta * sum_t KL_t,   KL_t = sum_{batch, dims} KL(q || p) / B

over the steps t = 1 .. T-1 of :func:`vp_jax.models.rollout.rollout`. The KL is the one choice
between a learned prior p(z_t | x_{<t}) and the fixed N(0, I) (``ModelConfig.learned_prior``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vp_jax.config import ModelConfig


def kl_diagonal_gaussians(mu_q, logvar_q, mu_p, logvar_p) -> jax.Array:
    """Elementwise KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) =
    log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2."""
    return (
        0.5 * (logvar_p - logvar_q)
        + (jnp.exp(logvar_q) + jnp.square(mu_q - mu_p)) / (2.0 * jnp.exp(logvar_p))
        - 0.5
    )


def kl_standard_normal(mu, logvar) -> jax.Array:
    """Elementwise KL(N(mu, e^lv) || N(0, 1)) = -1/2 (1 + lv - mu^2 - e^lv)."""
    return -0.5 * (1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))


def kl_terms(cfg: ModelConfig, q, p) -> dict:
    """The KL of Gaussians ``q = (mu_q, lv_q)``, ``p = (mu_p, lv_p)`` of shape ``[..., B, z_dim]``
    (e.g. ``[T-1, B, z_dim]``): ``kl`` ``[...]`` (summed over dimensions, averaged over the batch),
    ``kl_elementwise`` ``[..., B, z_dim]``, ``kl_per_sample`` ``[..., B]``, and two ``[..., z_dim]`` batch means of equal value that free
    bits need apart: ``kl_per_dim`` with the prior held fixed (``stop_gradient``: the posterior's
    part) and ``kl_prior_per_dim`` with the posterior held fixed (the learned prior's part; zeros
    for the fixed prior)."""
    (mu_q, lv_q), (mu_p, lv_p) = q, p
    sg = jax.lax.stop_gradient
    if cfg.learned_prior:
        kl = kl_diagonal_gaussians(mu_q, lv_q, mu_p, lv_p)
        kl_posterior = kl_diagonal_gaussians(mu_q, lv_q, sg(mu_p), sg(lv_p))
        kl_prior = kl_diagonal_gaussians(sg(mu_q), sg(lv_q), mu_p, lv_p)
    else:
        kl = kl_posterior = kl_standard_normal(mu_q, lv_q)
        kl_prior = jnp.zeros_like(kl)
    kl_per_sample = jnp.sum(kl, axis=-1)
    return {
        "kl": jnp.sum(kl_per_sample, axis=-1) / kl.shape[-2],
        "kl_elementwise": kl,
        "kl_per_sample": kl_per_sample,
        "kl_per_dim": jnp.mean(kl_posterior, axis=-2),
        "kl_prior_per_dim": jnp.mean(kl_prior, axis=-2),
    }


def step_terms(cfg: ModelConfig, outputs: dict) -> dict:
    """Per-step loss terms of a rollout's outputs: ``mse`` ``[T-1]`` (mean over batch and pixels)
    and the :func:`kl_terms` of its posterior and prior."""
    mse = jnp.mean(jnp.square(outputs["x_hat"] - outputs["target"]), axis=tuple(range(1, outputs["x_hat"].ndim)))
    return {"mse": mse, **kl_terms(cfg, outputs["q"], outputs["p"])}


def objective(terms: dict, beta, free_bits: float = 0.0):
    """``sum_t mse_t + beta * KL term`` of :func:`step_terms`; returns ``(loss, metrics)``.

    With ``free_bits`` = lambda > 0 the KL term is ``sum_t sum_d max(KL_{t,d}, lambda)``, where
    ``KL_{t,d}`` is the KL of latent dimension d at step t averaged over the batch (Kingma et al.
    2016): the first lambda nats of every dimension are free, so the posterior is not pushed all
    the way onto the prior and the latent keeps carrying information (a remedy for KL collapse).
    The clamp holds back the posterior only: a learned prior gets the plain KL's gradient at every
    value (the added term is 0 in value), so that it keeps learning where the posterior puts z;
    otherwise, below lambda, nothing would train it and samples at test time would come from an
    untrained prior.

    metrics: ``loss`` (the sum above), ``mse`` and ``kl`` (means over the steps; ``kl`` is the true
    KL, free bits or not).
    """
    if free_bits > 0:
        kl_prior = terms["kl_prior_per_dim"]
        kl_term = jnp.sum(jnp.maximum(terms["kl_per_dim"], free_bits)) + jnp.sum(kl_prior - jax.lax.stop_gradient(kl_prior))
    else:
        kl_term = jnp.sum(terms["kl"])
    loss = jnp.sum(terms["mse"]) + beta * kl_term
    return loss, {"loss": loss, "mse": jnp.mean(terms["mse"]), "kl": jnp.mean(terms["kl"])}
