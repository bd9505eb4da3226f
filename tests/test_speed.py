"""The speed-ups compute the same thing: each fast form against the plain one it replaces.

* ``max_pool_2x2`` (reshape + max, own backward) == ``nn.max_pool``, gradients included, with ties;
* ``SkipConcatConv`` == ``nn.Conv`` on ``concat([x, skip])``: same parameters, same outputs;
* ``rollout`` without a mask (decoder outside the scan, skip convolutions shared over steps) ==
  ``rollout`` with an all-True teacher-forcing mask: loss terms, gradients, BatchNorm statistics,
  for every ``skip_frame`` mode;
* the train step takes the fast path only where it is exact.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from vp_jax.config import load_config_file, model_config, run_config
from vp_jax.models.kernels import max_pool_2x2
from vp_jax.models.layers import SkipConcatConv, weight_init
from vp_jax.models.losses import step_terms
from vp_jax.models.rollout import Pass, rollout
from vp_jax.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_max_pool_matches_reduce_window_with_ties():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, (2, 3, 8, 8, 5)).astype(np.float32))  # many ties
    g = jnp.asarray(rng.standard_normal((2, 3, 4, 4, 5)).astype(np.float32))

    def ref(x):
        return nn.max_pool(x.reshape(6, 8, 8, 5), (2, 2), strides=(2, 2), padding="VALID").reshape(2, 3, 4, 4, 5)

    y, vjp = jax.vjp(max_pool_2x2, x)
    y_ref, vjp_ref = jax.vjp(ref, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])


class _Concat(nn.Module):
    @nn.compact
    def __call__(self, x, skip):
        conv = nn.Conv(7, (3, 3), padding=((1, 1), (1, 1)), kernel_init=weight_init, name="conv")
        return conv(jnp.concatenate([x, skip], -1))


class _Split(nn.Module):
    @nn.compact
    def __call__(self, x, skip, skip_index=None):
        return SkipConcatConv(7, name="conv")(x, skip, skip_index)


@pytest.mark.parametrize("skip_index", [(0, 0, 0, 0, 0), (0, 1, 1, 1, 1), (0, 1, 0, 1, 0)])
def test_skip_concat_conv_equals_conv_of_concatenation(skip_index):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((5, 2, 8, 8, 3)), jnp.float32)
    skips = jnp.asarray(rng.standard_normal((2, 2, 8, 8, 4)), jnp.float32)
    per_step = skips[jnp.asarray(skip_index)]
    v_ref = _Concat().init(jax.random.key(0), x, per_step)
    v_new = _Split().init(jax.random.key(0), x, per_step)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v_ref, v_new))
    v_ref = jax.tree.map(lambda p: p + 0.1, v_ref)  # a non-zero bias
    out = _Concat().apply(v_ref, x, per_step)
    np.testing.assert_allclose(_Split().apply(v_ref, x, skips, skip_index), out, atol=1e-5)
    np.testing.assert_allclose(_Split().apply(v_ref, x, per_step), out, atol=1e-5)


# The three skip rules; 'original' with 3 context frames also has a skip frame (x_1) that is not
# the first, and runs with the decoder's condition field and compositing.
@pytest.mark.parametrize(
    "skip_frame,n_past,pathways",
    [pytest.param("last_context", 3, False, marks=pytest.mark.slow), pytest.param("every_step", 2, False, marks=pytest.mark.slow),
     ("original", 3, True)],  # the other rules: ~35 s each, VP_JAX_SLOW=1
)
def test_teacher_forced_rollout_equals_scan_rollout(tiny_config, tiny_variables, fast_jit, skip_frame, n_past, pathways):
    cfg = dataclasses.replace(model_config(tiny_config), skip_frame=skip_frame)
    variables = tiny_variables
    if pathways:  # the decoder's condition field and compositing (skip frames 0 and 1 both used)
        from vp_jax.models import init_variables

        cfg = dataclasses.replace(cfg, decoder_cond=4, output="composite")
        variables = init_variables(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(2)
    B, T = 3, n_past + tiny_config.n_future
    scale = np.linspace(1.0, 0.4, T, dtype=np.float32)[None, :, None, None, None]  # per-step statistics differ
    frames = jnp.asarray(rng.uniform(size=(B, T, 64, 64, 3)).astype(np.float32) * scale)
    cond = jnp.asarray(rng.standard_normal((B, T, cfg.cond_dim)), jnp.float32)
    key = jax.random.PRNGKey(3)

    def both(params, batch_stats, frames, cond, key):
        def loss(params, tf_mask):
            return step_lib.rollout_loss(params, batch_stats, {"frames": frames, "cond": cond, "mask": tf_mask}, key, 0.7,
                                         Pass(cfg, n_past, unroll=1))

        grad = jax.value_and_grad(loss, has_aux=True)
        ref = grad(params, jnp.ones((B, T), bool))  # the general scan rollout, all teacher forced
        new = grad(params, None)  # the teacher-forced path
        out_ref, _ = rollout(params, batch_stats, frames, cond, key, Pass(cfg, n_past, unroll=1), jnp.ones((B, T), bool))
        out_new, _ = rollout(params, batch_stats, frames, cond, key, Pass(cfg, n_past))
        out_ref, out_new = (dict(o, **step_terms(cfg, o)) for o in (out_ref, out_new))
        return ref, new, out_ref, out_new

    ref, new, out_ref, out_new = fast_jit(both)(variables["params"], variables["batch_stats"], frames, cond, key)
    (l_ref, (m_ref, bs_ref)), g_ref = ref
    (l_new, (m_new, bs_new)), g_new = new
    np.testing.assert_allclose(l_new, l_ref, rtol=1e-6)
    for k in m_ref:
        np.testing.assert_allclose(m_new[k], m_ref[k], rtol=1e-5, atol=1e-7)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale), g_new, g_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), bs_new, bs_ref)
    for k in ("x_hat", "g", "encoder_input", "mse", "kl"):
        np.testing.assert_allclose(out_new[k], out_ref[k], rtol=1e-5, atol=1e-6)
    assert not bool(jnp.any(out_new["reencoded"]))


def test_always_teacher_forced():
    config = load_config_file(os.path.join(ROOT, "configs", "lab_bair.py"))
    assert step_lib.always_teacher_forced(run_config(config).train)  # lab: tfr 1, no decay
    config.train.tfr.decay_step = 0.1
    assert not step_lib.always_teacher_forced(run_config(config).train)
    config.train.tfr.lower_bound = 1.0
    assert step_lib.always_teacher_forced(run_config(config).train)
    config.train.tfr.start = 0.5
    assert not step_lib.always_teacher_forced(run_config(config).train)


@pytest.mark.slow  # ~40 s on a 2-core CPU: VP_JAX_SLOW=1
def test_train_step_same_with_and_without_the_static_fast_path(fast_jit):
    """tfr = 1 via the static path vs via the lax.cond (tfr schedule that could decay later).
    Both steps are compiled without XLA's backend optimisation (same programs; the lax.cond one
    holds both rollouts and their gradients, a minute of optimising on a 2-core CPU)."""
    from vp_jax.store.state import create_train_state

    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    decaying = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    decaying.train.tfr.start_decay_epoch = 100  # still 1.0 for these steps, but not provably
    decaying.train.tfr.decay_step = 0.1
    assert step_lib.always_teacher_forced(run_config(config).train) and not step_lib.always_teacher_forced(run_config(decaying).train)
    rng = np.random.default_rng(4)
    B, T = config.train.batch_size, config.n_past + config.n_future
    batch = {"frames": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8),
             "cond": rng.standard_normal((B, T, config.model.cond_dim)).astype(np.float32)}
    losses = []
    for c in (config, decaying):
        state = create_train_state(run_config(c), jax.random.key(0))
        train_step = fast_jit(step_lib.make_train_step(run_config(c), unroll=1))
        out = []
        for s in range(3):
            state, m = train_step(state, batch, jax.random.key(s))
            out.append(float(m["loss"]))
        losses.append(out)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_upsample_and_take_steps_gradients_are_autodiffs():
    from vp_jax.models.kernels import take_steps, upsample_nearest_2x

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5, 6))
    g = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8, 10, 6))
    plain = lambda x: jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)  # noqa: E731
    np.testing.assert_array_equal(upsample_nearest_2x(x), plain(x))
    np.testing.assert_allclose(jax.vjp(upsample_nearest_2x, x)[1](g)[0], jax.vjp(plain, x)[1](g)[0], rtol=1e-6, atol=1e-6)
    for index in [(0,) * 5, (0, 1, 1, 1), (2, 0, 2, 1, 0)]:
        gi = jax.random.normal(jax.random.PRNGKey(2), (len(index),) + x.shape[1:])
        y, vjp = jax.vjp(lambda x: take_steps(x, index), x)
        y_ref, vjp_ref = jax.vjp(lambda x: x[jnp.asarray(index)], x)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_allclose(vjp(gi)[0], vjp_ref(gi)[0], rtol=1e-6, atol=1e-6)


def test_materialized_is_the_identity_with_its_gradient():
    """kernels.materialized (a fusion boundary for XLA:CPU) returns its input, passes gradients
    through unchanged, and gives NaN only when the witness is NaN (every result is NaN then)."""
    from vp_jax.models.kernels import materialized

    x = jax.random.normal(jax.random.key(0), (3, 4, 5))
    w = jnp.ones((2,))
    assert jnp.array_equal(jax.jit(materialized)(x, w), x)
    g = jax.grad(lambda x: jnp.sum(jnp.sin(materialized(x, w))))(x)
    assert jnp.allclose(g, jnp.cos(x), rtol=1e-6)
    assert jnp.isnan(jax.jit(materialized)(x, jnp.full((2,), jnp.nan))).all()


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((3, 3), (3, 3)), ((0, 0), (0, 0))])
def test_conv_nhwc_gradients_equal_autodiff_of_lax_conv(padding):
    """conv_nhwc's hand-written kernel gradient (a transposed convolution through `materialized`)
    against autodiff of lax.conv_general_dilated, jitted as the train step is, with an
    elementwise producer in front of the convolution (what XLA would fuse into the transpose)."""
    from vp_jax.models.kernels import conv_nhwc

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 3, 8, 8, 5)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 5, 6)) * 0.2, jnp.float32)
    k4 = jnp.asarray(rng.standard_normal((4, 4, 5, 6)) * 0.2, jnp.float32)

    def ours(x, k):
        return jnp.sum(jnp.tanh(conv_nhwc(nn.leaky_relu(x, 0.2), k, padding)) ** 2)

    def plain(x, k):
        y = jax.lax.conv_general_dilated(
            nn.leaky_relu(x, 0.2).reshape(6, 8, 8, 5), k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(jnp.tanh(y) ** 2)

    for kernel in (k, k4):
        got = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, kernel)
        want = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(x, kernel)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
