"""Generation: against the original's generation loop written out, keys, BatchNorm mode."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vp_jax.config import model_config
from vp_jax.errors import ConfigError
from vp_jax.models.cvae import ConditionalVAE, initial_state
from vp_jax.models.generation import make_generate_fn
from vp_jax.models.rollout import Pass, rollout

B, T = 2, 5  # tiny config: n_past 2 -> 3 predicted frames


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(B, T, 64, 64, 3), dtype=np.uint8)
    cond = rng.normal(size=(B, T, 7)).astype(np.float32)
    return jnp.asarray(frames), jnp.asarray(cond)


def calibrated(cfg, variables, data, fast_jit):
    """``variables`` with calibrated running statistics: one training-mode rollout with BatchNorm
    momentum 0 stores the statistics of its last batch.  With the initial (0, 1) statistics a fresh
    model's signals shrink through the layers until z no longer reaches the output."""
    cfg = dataclasses.replace(cfg, bn_momentum=0.0)
    frames, cond = data

    def calibrate(params, stats, frames, cond, key):
        mask = jnp.ones(frames.shape[:2], bool)
        return rollout(params, stats, frames, cond, key, Pass(cfg, 2, unroll=1), mask)[1]

    stats = fast_jit(calibrate)(variables["params"], variables["batch_stats"], frames, cond, jax.random.PRNGKey(3))
    return {"params": variables["params"], "batch_stats": stats}


@pytest.fixture(scope="module")
def variables(tiny_config, tiny_variables, data, fast_jit):
    """The tiny model, calibrated."""
    return calibrated(model_config(tiny_config), tiny_variables, data, fast_jit)


PATHWAYS = dict(decoder_cond=4, output="composite")  # the decoder's condition field and compositing


@pytest.fixture(scope="module")
def pathway_variables(tiny_config, data, fast_jit):
    """The tiny model with both decoder pathways, calibrated."""
    from vp_jax.models import init_variables

    cfg = dataclasses.replace(model_config(tiny_config), **PATHWAYS)
    return calibrated(cfg, init_variables(cfg, jax.random.PRNGKey(0)), data, fast_jit)


def reference_generate(params, batch_stats, frames, cond, key, *, cfg, n_past):
    """The original's generation loop (inference-mode BatchNorm), one sample: encode the current
    input every step; context steps run the posterior on the next ground-truth frame and the prior
    for its state; then z from the prior and the decoder's output becomes the next input."""
    model = ConditionalVAE(cfg)

    def apply(method, *args):
        return model.apply({"params": params, "batch_stats": batch_stats}, *args, method=method)

    keys = jax.random.split(jax.random.fold_in(key, 0), frames.shape[1] - 1)  # sample 0
    states = initial_state(cfg, frames.shape[0])
    x_in, skip, preds = frames[:, 0], None, []
    for t in range(1, frames.shape[1]):
        h, skips = apply(ConditionalVAE.encode, x_in, False, None)
        # original: skips kept from the last context step (input x_{n_past-2}); the paper: from
        # x_{n_past-1} (the input of step n_past); every_step: always the current input
        if t < n_past or cfg.skip_frame == "every_step" or (cfg.skip_frame == "last_context" and t == n_past):
            skip = skips
        if t < n_past:
            h_target, _ = apply(ConditionalVAE.encode, frames[:, t], False, None)
            posterior = apply(ConditionalVAE.infer_posterior, states["posterior"], h_target, keys[t - 1])
            states["posterior"], z, _, _ = posterior
            states["prior"], _, _, _ = apply(ConditionalVAE.infer_prior, states["prior"], h, None)
            states["predictor"], _ = apply(ConditionalVAE.predict, states["predictor"], h, z, cond[:, t], False)
            x_in = frames[:, t]
        else:
            states["prior"], z, _, _ = apply(ConditionalVAE.infer_prior, states["prior"], h, keys[t - 1])
            states["predictor"], g = apply(ConditionalVAE.predict, states["predictor"], h, z, cond[:, t], False)
            x_in = apply(ConditionalVAE.decode, g, skip, False, cond[:, t])
            preds.append(x_in)
    return jnp.stack(preds, axis=1)[None]


@pytest.mark.parametrize(
    "skip_frame,learned_prior,pathways",
    [("original", True, False), ("last_context", False, False), ("every_step", True, False), ("last_context", True, True)],
)
def test_generation_equals_the_original_loop(
    tiny_config, variables, pathway_variables, data, fast_jit, skip_frame, learned_prior, pathways
):
    c = tiny_config.copy_and_resolve_references()
    c.model.skip_frame, c.model.learned_prior = skip_frame, learned_prior
    if pathways:
        c.model.update(PATHWAYS)
        variables = pathway_variables
    cfg = model_config(c)
    params = variables["params"] if learned_prior else {k: v for k, v in variables["params"].items() if k != "prior"}
    frames, cond = data
    key = jax.random.PRNGKey(5)
    pred = make_generate_fn(model_config(c), c.n_past, num_samples=1)(params, variables["batch_stats"], frames, cond, key)
    assert pred.shape == (1, B, T - c.n_past, 64, 64, 3) and pred.dtype == jnp.float32
    ref = fast_jit(lambda p, s, x, cd, k: reference_generate(p, s, x, cd, k, cfg=cfg, n_past=c.n_past))
    expected = ref(params, variables["batch_stats"], frames.astype(jnp.float32) / 255.0, cond, key)
    np.testing.assert_allclose(pred, expected, atol=1e-5)


@pytest.fixture(scope="module")
def generated(tiny_config, variables, data):
    """Two samples in each BatchNorm mode, and the inference mode again with other inputs."""
    frames, cond = data
    args = (variables["params"], variables["batch_stats"])
    inference = make_generate_fn(model_config(tiny_config), tiny_config.n_past, num_samples=2, bn_mode="inference")
    batch_stats = make_generate_fn(model_config(tiny_config), tiny_config.n_past, num_samples=2, bn_mode="batch_stats")
    key = jax.random.PRNGKey(0)
    n_past = tiny_config.n_past
    future_changed = frames.at[:, n_past:].set(255 - frames[:, n_past:])
    return {
        "a": inference(*args, frames, cond, key),
        "a_again": inference(*args, frames, cond, key),
        "other_key": inference(*args, frames, cond, jax.random.PRNGKey(1)),
        "future_changed": inference(*args, future_changed, cond, key),
        "context_changed": inference(*args, frames.at[:, n_past - 1].set(0), cond, key),
        "batch_stats": batch_stats(*args, frames, cond, key),
        "batch_stats_again": batch_stats(*args, frames, cond, key),
    }


def test_same_key_same_samples_other_key_other_samples(generated):
    g = generated
    assert g["a"].shape == (2, B, T - 2, 64, 64, 3)
    np.testing.assert_array_equal(g["a"], g["a_again"])
    np.testing.assert_array_equal(g["batch_stats"], g["batch_stats_again"])
    assert float(jnp.max(jnp.abs(g["a"] - g["other_key"]))) > 1e-4
    assert float(jnp.max(jnp.abs(g["a"][0] - g["a"][1]))) > 1e-4  # the N samples differ


def test_only_context_frames_are_read(generated):
    np.testing.assert_array_equal(generated["a"], generated["future_changed"])
    assert float(jnp.max(jnp.abs(generated["a"] - generated["context_changed"]))) > 1e-4


def test_bn_mode_changes_the_output(generated):
    assert float(jnp.max(jnp.abs(generated["a"] - generated["batch_stats"]))) > 1e-3


def test_bad_bn_mode_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match="bn_mode"):
        make_generate_fn(model_config(tiny_config), tiny_config.n_past, bn_mode="train")
