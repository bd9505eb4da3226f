"""Memory options of the train step (train.grad_accum, train.remat) and the CPU-only code paths
(vp_jax/runtime/backend.py) turned off: the numbers each promises.

* Gradient accumulation over k micro-batches equals one big batch for a loss without
  BatchNorm (a stand-in network), and, for the model (BatchNorm in every VGG layer), equals what
  the docstring of make_train_step says it does: the mean of the micro-batches' gradients, each
  normalised with its own batch statistics, the running statistics updated once per micro-batch.
* Rematerialisation changes nothing but memory.
* The generic (GPU/TPU) code paths, forced on the CPU, give the CPU paths' loss and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE

from vp_jax.config import model_config, run_config
from vp_jax.errors import ConfigError
from vp_jax.models.rollout import Pass
from vp_jax.runtime.backend import cpu_kernels, cpu_kernels_off, scan_unroll
from vp_jax.store.state import create_train_state
from vp_jax.training.accumulate import accumulate_gradients, check_accumulation, split_microbatches
from vp_jax.training.step import make_train_step, rollout_loss


def test_microbatches_take_strided_rows():
    x = np.arange(12)
    parts = np.asarray(split_microbatches({"x": x}, 3)["x"])
    assert parts.tolist() == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert check_accumulation(12, 3) == 3
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ConfigError, match=r"^config.train.grad_accum = "):
            check_accumulation(12, bad)


def test_accumulated_gradients_equal_the_big_batch_without_batchnorm():
    """A conv + dense network with a batch-mean loss and no BatchNorm: k = 1, 2, 4 micro-batches
    give the big batch's loss and gradients (float summation order aside)."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(0.3 * rng.standard_normal((3, 3, 3, 6)), jnp.float32),
              "d": jnp.asarray(0.3 * rng.standard_normal((6, 2)), jnp.float32)}
    batch = {"x": rng.random((8, 8, 8, 3), np.float32), "y": rng.random((8, 2), np.float32)}

    def loss(p, b):
        h = jax.nn.relu(jax.lax.conv_general_dilated(b["x"], p["w"], (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return jnp.mean((h.mean((1, 2)) @ p["d"] - b["y"]) ** 2)

    big_loss, big_grads = jax.jit(jax.value_and_grad(loss))(params, batch)

    def micro(carry, mb, i):
        value, grads = jax.value_and_grad(loss)(params, mb)
        return carry + 1, grads, {"loss": value}

    for k in (1, 2, 4):
        count, grads, metrics = jax.jit(lambda b: accumulate_gradients(micro, jnp.int32(0), b, k))(batch)
        assert int(count) == k
        np.testing.assert_allclose(metrics["loss"], big_loss, rtol=1e-6)
        for name in params:
            np.testing.assert_allclose(grads[name], big_grads[name], rtol=1e-5, atol=1e-7, err_msg=f"k={k} {name}")


@pytest.fixture(scope="module")
def setup(tiny_config):
    c = tiny_config.copy_and_resolve_references()
    rng = np.random.default_rng(1)
    T = c.n_past + c.n_future
    batch = {"frames": rng.integers(0, 256, (4, T, 64, 64, 3), dtype=np.uint8),
             "cond": rng.standard_normal((4, T, 7)).astype(np.float32)}
    batch["frames"][:, :, :20] = 128  # flat regions: ties in the max-pools
    state = create_train_state(run_config(c), jax.random.key(0))
    return c, batch, state


def run_step(config, state, batch, key):
    """One train step of ``config`` (compiled without XLA's optimisation) on a copy of ``state``."""
    state = jax.tree.map(jnp.copy, state)  # the step donates it
    return make_train_step(run_config(config)).lower(state, batch, key).compile(compiler_options=FAST_COMPILE)(state, batch, key)


@pytest.mark.slow
def test_grad_accum_with_batchnorm_and_remat_do_what_the_step_says(setup):
    """train.grad_accum = 2 (with train.remat = True) against the same computed by hand without
    remat: the Adam update of the mean of the two micro-batches' gradients (rows 0::2 and 1::2,
    each micro-batch normalised by its own BatchNorm statistics, its posterior noise drawn from
    fold_in(loss key, i)); BatchNorm running statistics updated by micro-batch 0, then 1."""
    config, batch, state = setup
    c = config.copy_and_resolve_references()
    c.train.grad_accum, c.train.remat = 2, True
    key = jax.random.key(5)
    new_state, metrics = run_step(c, state, batch, key)

    cfg = model_config(c)
    _, loss_key = jax.random.split(jax.random.fold_in(key, state.step))
    beta = float(metrics["beta"])  # the KL schedule's value at this step

    def grads_of(params, batch_stats, micro, i):
        fn = jax.value_and_grad(rollout_loss, has_aux=True)
        (value, (m, bs)), grads = fn(params, batch_stats, {"frames": micro["frames"], "cond": micro["cond"][:, :, :cfg.cond_dim]},
                                    jax.random.fold_in(loss_key, i), beta, Pass(cfg, c.n_past))
        return value, bs, grads

    micros = [jax.tree.map(lambda x: x[i::2], batch) for i in range(2)]
    by_hand = jax.jit(grads_of).lower(state.params, state.batch_stats, micros[0], 0).compile(
        compiler_options=FAST_COMPILE)
    bs, grads, losses = state.batch_stats, [], []
    for i, micro in enumerate(micros):
        value, bs, g = by_hand(state.params, bs, micro, i)
        losses.append(float(value))
        grads.append(g)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    _, expected = state.tx.update(mean, state.opt_state, state.params)
    assert float(metrics["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
    # The gradient the step applied, through Adam's first moment (1 - b1) * g: the parameters
    # themselves would not do, since the biases that BatchNorm follows have a gradient of 0 up to
    # rounding, which Adam's first step scales up to +-lr.
    ours, theirs = new_state.opt_state.inner_state[0].mu, expected.inner_state[0].mu  # apply_if_finite(adam)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=max(1e-9, 1e-4 * float(np.abs(b).max())),
                                   err_msg=jax.tree_util.keystr(path))
    for a, b in zip(jax.tree.leaves(new_state.batch_stats), jax.tree.leaves(bs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="compares the CPU's own code paths with the generic ones")
@pytest.mark.slow  # ~30 s on a 2-core CPU: VP_JAX_SLOW=1
def test_generic_code_paths_give_the_cpu_paths_numbers(setup):
    """The CPU-only kernels (hand-written gradients, fusion boundaries) and the full unroll, forced
    off on the CPU (what a GPU runs): the same loss and gradients, on the teacher-forced path
    and on the path with a teacher-forcing mask (its scan rolled instead of unrolled)."""
    config, batch, state = setup
    cfg = model_config(config)
    mask = np.ones((4, config.n_past + config.n_future), bool)
    mask[1::2, 3:] = False  # some samples get their own predictions from step 3 on

    def both_paths(params, batch_stats, frames, cond, key):
        out = []
        for m in (None, mask):
            fn = jax.value_and_grad(rollout_loss, has_aux=True)
            (value, (_, bs)), grads = fn(params, batch_stats, {"frames": frames, "cond": cond, "mask": m}, key, 0.5,
                                         Pass(cfg, config.n_past))
            out.append((value, grads, bs))
        return out

    args = (state.params, state.batch_stats, batch["frames"], batch["cond"], jax.random.key(2))
    assert cpu_kernels() and scan_unroll() is True
    cpu = jax.jit(both_paths).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)
    with cpu_kernels_off():
        assert not cpu_kernels() and scan_unroll() == 1
        generic = jax.jit(both_paths).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)
    assert cpu_kernels()
    for (v1, g1, bs1), (v2, g2, bs2) in zip(cpu, generic):
        assert float(v1) == pytest.approx(float(v2), rel=1e-6)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g2)):
            scale = float(jnp.max(jnp.abs(a))) + 1e-12
            np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale, atol=2e-5,
                                       err_msg=jax.tree_util.keystr(path))
        for a, b in zip(jax.tree.leaves(bs1), jax.tree.leaves(bs2)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
