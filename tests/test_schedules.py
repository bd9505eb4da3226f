"""Schedules against the lab's formulas, computed by hand at chosen steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lab_bair
from vp_jax.config import run_config
from vp_jax.models.schedules import (
    frange_cycle_linear,
    kl_beta_schedule,
    learning_rate_schedule,
    teacher_forcing_schedule,
)


def lab_table(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    """The lab's / Fu et al.'s ``frange_cycle_linear`` table, as the algorithm is described:
    fill with ``stop``; each cycle c writes start, start+step, ... from index int(c*period)
    while the value does not exceed ``stop``."""
    table = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            table[int(i + c * period)] = v
            v += step
            i += 1
    return table


def config(**train):
    """The lab's ``config.train`` with ``train`` changed (``kl__cycles=3``: ``train.kl.cycles``)."""
    c = lab_bair.get_config()
    for key, value in train.items():
        node = c.train
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return run_config(c).train  # the typed config.train the schedules take


def values(fn, steps):
    jitted = jax.jit(fn)  # schedules must work on traced int32 steps
    return np.array([float(jitted(jnp.int32(s))) for s in steps])


def test_cyclical_beta_lab_defaults_by_hand():
    # Lab: niter 300 epochs of 600 iterations, 3 cycles, ratio 0.5 -> period 100 epochs, beta
    # rises by 1/50 per epoch for 50 epochs, holds 1 for 50, and restarts at 0.
    fn = kl_beta_schedule(config())
    epochs = [0, 1, 25, 49, 50, 99, 100, 125, 150, 200, 249, 299]
    expected = [0.0, 0.02, 0.5, 0.98, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.98, 1.0]
    np.testing.assert_allclose(values(fn, [600 * e for e in epochs]), expected, atol=1e-6)
    # per epoch: constant within an epoch
    np.testing.assert_allclose(values(fn, [600 * 25 + 599, 600 * 26 - 1]), [0.5, 0.5], atol=1e-6)
    # past the end: the table's last value
    np.testing.assert_allclose(values(fn, [600 * 400]), [1.0], atol=1e-6)


def test_monotonic_beta_is_one_cycle_and_scaled_by_beta_max():
    fn = kl_beta_schedule(config(kl__schedule="monotonic", kl__cycles=3, kl__beta_max=0.5))
    # one cycle of 300 epochs, ratio 0.5: 0.5 * min(1, e / 150)
    np.testing.assert_allclose(
        values(fn, [600 * e for e in (0, 75, 149, 150, 299)]), [0.0, 0.25, 0.5 * 149 / 150, 0.5, 0.5], atol=1e-6
    )


@pytest.mark.parametrize("niter,cycles,ratio", [(10, 3, 0.5), (7, 2, 1.0), (300, 3, 0.5), (12, 4, 0.3)])
def test_cyclical_beta_matches_lab_table_everywhere(niter, cycles, ratio):
    # non-integer periods and ratio 1 exercise the table's overwrite order
    fn = jax.jit(frange_cycle_linear(niter, cycles, ratio))
    got = np.array([float(fn(n)) for n in range(niter)])
    np.testing.assert_allclose(got, lab_table(niter, 0.0, 1.0, cycles, ratio), atol=1e-6)


def test_beta_per_step_and_constant():
    c = config(kl__per="step", kl__cycles=2, kl__ratio=0.5, epochs=2, epoch_size=100)
    # 200 steps, 2 cycles of 100, rising over 50 steps
    got = values(kl_beta_schedule(c), [0, 10, 49, 50, 99, 100, 125])
    np.testing.assert_allclose(got, [0, 0.2, 0.98, 1, 1, 0, 0.5], atol=1e-6)
    c = config(kl__schedule="constant", kl__beta_max=1e-4)
    np.testing.assert_allclose(values(kl_beta_schedule(c), [0, 12345]), [1e-4, 1e-4], rtol=1e-6)


def test_teacher_forcing_decay_by_hand():
    # start 1, decay 0.1 per epoch after each epoch e >= 2, floor 0.35; 10 iterations/epoch
    c = config(epoch_size=10, tfr__start=1.0, tfr__start_decay_epoch=2, tfr__decay_step=0.1, tfr__lower_bound=0.35)
    fn = teacher_forcing_schedule(c)
    epochs = [0, 1, 2, 3, 4, 8, 9, 10, 50]
    expected = [1.0, 1.0, 1.0, 0.9, 0.8, 0.4, 0.35, 0.35, 0.35]
    np.testing.assert_allclose(values(fn, [10 * e + 9 for e in epochs]), expected, atol=1e-6)
    np.testing.assert_allclose(values(fn, [30, 39, 40]), [0.9, 0.9, 0.8], atol=1e-6)  # changes at epoch boundaries
    # lab defaults (decay 0): tfr stays 1
    np.testing.assert_allclose(values(teacher_forcing_schedule(config()), [0, 10**6]), [1.0, 1.0])


def test_learning_rate_schedules():
    np.testing.assert_allclose(values(learning_rate_schedule(config()), [0, 10**5]), [0.002, 0.002], rtol=1e-6)
    c = config(lr_schedule="cosine", epochs=10, epoch_size=10, lr=0.1)  # 100 steps
    np.testing.assert_allclose(values(learning_rate_schedule(c), [0, 50, 100]), [0.1, 0.05, 0.0], atol=1e-7)
    c = config(lr_schedule="warmup_cosine", epochs=10, epoch_size=10, lr=0.1, warmup_steps=10)
    # linear 0 -> 0.1 over 10 steps, then cosine over the remaining 90 to 0
    got = values(learning_rate_schedule(c), [0, 5, 10, 55, 100])
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-7)
