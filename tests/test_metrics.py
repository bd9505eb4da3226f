"""metrics.py against scikit-image and closed-form cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vp_jax.evaluation import metrics

SK_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)


def _sk_psnr(x, y):
    return np.mean([peak_signal_noise_ratio(x[..., c], y[..., c], data_range=1.0) for c in range(x.shape[-1])])


def _structured(rng, shape):
    """Smooth gradients, a moving disc and mild noise: SSIM far from 0 and 1."""
    *lead, h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w] / (h - 1)
    out = np.empty(shape, np.float32)
    for idx in np.ndindex(*lead):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2).astype(np.float32)
        base = np.stack([xx, yy, disc][:c], -1) * rng.uniform(0.5, 1.0)
        out[idx] = np.clip(base + 0.03 * rng.standard_normal((h, w, c)), 0, 1)
    return out


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 64, 64, 3)  # [N, B, T, H, W, C]
    rand_x = rng.random(shape, dtype=np.float32)
    rand_y = np.clip(rand_x + 0.2 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    st_x = _structured(rng, shape)
    st_y = np.clip(st_x + 0.05 * rng.standard_normal(shape) + 0.02, 0, 1).astype(np.float32)
    return {"random": (rand_x, rand_y), "structured": (st_x, st_y)}


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_psnr_matches_skimage_per_channel_mean(pairs, kind):
    x, y = pairs[kind]
    got = np.asarray(jax.jit(metrics.psnr_per_frame)(x, y))
    assert got.shape == x.shape[:3]
    want = np.array([_sk_psnr(x[i], y[i]) for i in np.ndindex(*x.shape[:3])]).reshape(x.shape[:3])
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_psnr_closed_form_constant_error():
    x = np.full((3, 64, 64, 3), 0.5, np.float32)
    for e in (0.1, 0.01, 0.25):
        got = np.asarray(metrics.psnr_per_frame(x + e, x))
        np.testing.assert_allclose(got, 10 * np.log10(1 / e**2), rtol=1e-4)


def test_psnr_per_channel_mean_not_pooled_mse():
    x = np.zeros((1, 8, 8, 3), np.float32)
    y = x.copy()
    y[..., 0] = 0.1  # errors 0.1, 0, 0 -> (20 + 100 + 100) / 3 with the 100 dB cap
    got = float(metrics.psnr_per_frame(y, x)[0])
    assert got == pytest.approx((20.0 + 2 * metrics.PSNR_CAP) / 3, rel=1e-4)


def test_psnr_identical_is_capped_and_data_range():
    x = np.random.default_rng(1).random((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(metrics.psnr_per_frame(x, x)), metrics.PSNR_CAP, rtol=1e-6)
    u = (x * 255).astype(np.uint8)
    v = np.clip(u.astype(int) + 10, 0, 255).astype(np.uint8)
    got = np.asarray(metrics.psnr_per_frame(u, v, data_range=255.0))
    want = [np.mean([peak_signal_noise_ratio(u[i, ..., c], v[i, ..., c], data_range=255) for c in range(3)]) for i in range(2)]
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_skimage(pairs, kind):
    x, y = pairs[kind]
    got = np.asarray(jax.jit(metrics.ssim_per_frame)(x, y))
    assert got.shape == x.shape[:3]
    idx = list(np.ndindex(*x.shape[:3]))[::3]  # a subset keeps skimage fast
    want = np.array([structural_similarity(x[i], y[i], **SK_SSIM) for i in idx])
    np.testing.assert_allclose(np.array([got[i] for i in idx]), want, atol=1e-4)
    assert 0.05 < want.mean() < 0.99  # a non-trivial case


def test_ssim_identical_and_non_square():
    rng = np.random.default_rng(2)
    x = rng.random((2, 40, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(metrics.ssim_per_frame(x, x)), 1.0, atol=1e-5)
    y = np.clip(x + 0.1, 0, 1)
    want = [structural_similarity(x[i], y[i], **SK_SSIM) for i in range(2)]
    np.testing.assert_allclose(np.asarray(metrics.ssim_per_frame(x, y)), want, atol=1e-4)


def test_gaussian_window_matches_scipy():
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(11)
    impulse[5] = 1.0
    want = gaussian_filter1d(impulse, 1.5, truncate=3.5, mode="constant")
    np.testing.assert_allclose(metrics.gaussian_window(), want[::-1], atol=1e-12)


def test_best_and_mean_of_n_constructed():
    # N=3 samples, B=2 sequences, T=3 frames.
    s = np.array(
        [
            [[10, 10, 10], [30, 1, 1]],   # sample 0: seq0 mean 10, seq1 mean 32/3
            [[20, 20, 5], [5, 5, 5]],     # sample 1: seq0 mean 15 (best), seq1 mean 5
            [[0, 0, 40], [12, 12, 12]],   # sample 2: seq0 mean 40/3, seq1 mean 12 (best)
        ],
        np.float32,
    )
    r = metrics.best_and_mean_of_n(s)
    np.testing.assert_array_equal(np.asarray(r["best_index"]), [1, 2])
    # the whole curve of the chosen sample, not the frame-wise max (seq0 would be [20, 20, 40])
    np.testing.assert_allclose(np.asarray(r["best_per_frame"]), [[20, 20, 5], [12, 12, 12]])
    np.testing.assert_allclose(np.asarray(r["best_curve"]), [16, 16, 8.5])
    np.testing.assert_allclose(float(r["best"]), (15 + 12) / 2)
    np.testing.assert_allclose(np.asarray(r["mean_per_frame"]), s.mean(0), rtol=1e-6)
    np.testing.assert_allclose(float(r["mean"]), s.mean(), rtol=1e-6)
    lower = metrics.best_and_mean_of_n(s, higher_is_better=False)
    np.testing.assert_array_equal(np.asarray(lower["best_index"]), [0, 1])
    jitted = jax.jit(metrics.best_and_mean_of_n)(jnp.asarray(s))
    np.testing.assert_array_equal(np.asarray(jitted["best_index"]), [1, 2])


def test_copy_last_baseline():
    frames = np.random.default_rng(3).random((2, 5, 8, 8, 3)).astype(np.float32)
    base = np.asarray(metrics.copy_last_baseline(frames[:, 1], 4))
    assert base.shape == (2, 4, 8, 8, 3)
    for t in range(4):
        np.testing.assert_array_equal(base[:, t], frames[:, 1])
    psnr = np.asarray(metrics.psnr_per_frame(base, frames[:, 1:5]))
    assert psnr.shape == (2, 4) and np.allclose(psnr[:, 0], metrics.PSNR_CAP)


# ----------------------------------------------------------------------------- moving pixels


def test_moving_mask_is_any_channel_over_the_threshold():
    ref = np.zeros((2, 4, 4, 3), np.float32)
    target = np.zeros((2, 3, 4, 4, 3), np.float32)
    target[0, 1, 2, 3, 2] = 0.06  # one channel over 0.05
    target[1, 2, 0, 0, :] = 0.05  # exactly the threshold: not moving
    target[1, 0, 1, 1, 0] = -0.2  # darker counts too
    mask = np.asarray(metrics.moving_mask(target, ref, 0.05))
    assert mask.shape == (2, 3, 4, 4)
    want = np.zeros_like(mask)
    want[0, 1, 2, 3] = want[1, 0, 1, 1] = True
    np.testing.assert_array_equal(mask, want)
    # data_range scales the threshold: uint8-like values
    np.testing.assert_array_equal(np.asarray(metrics.moving_mask(target * 255, ref, 0.05, data_range=255.0)), want)


def test_masked_psnr_against_numpy_and_full_mask(pairs):
    x, y = pairs["structured"]
    rng = np.random.default_rng(4)
    mask = rng.random(x.shape[:-1]) < 0.3
    mask[0, 0, 1] = False  # one frame with nothing to score
    got = np.asarray(metrics.psnr_masked_per_frame(x, y, mask))
    assert np.isnan(got[0, 0, 1]) and np.isfinite(np.delete(got.reshape(-1), 1)).all()
    for idx in np.ndindex(*x.shape[:3]):
        m = mask[idx]
        if not m.any():
            continue
        err = (x[idx][m] - y[idx][m]) ** 2  # [pixels, C]
        want = np.mean(10 * np.log10(1.0 / err.mean(axis=0)))
        np.testing.assert_allclose(got[idx], want, rtol=1e-4)
    full = np.asarray(metrics.psnr_masked_per_frame(x, y, np.ones(x.shape[:-1], bool)))
    np.testing.assert_allclose(full, np.asarray(metrics.psnr_per_frame(x, y)), rtol=1e-5)


def test_best_and_mean_of_n_skip_frames_without_a_score():
    nan = np.nan
    s = np.array([[[10, nan], [nan, nan]], [[12, nan], [nan, nan]], [[11, 30], [nan, nan]]], np.float32)
    r = metrics.best_and_mean_of_n(s)
    # seq 0: sample means 10, 12, 20.5 -> sample 2; seq 1 has no score at all
    assert int(r["best_index"][0]) == 2
    np.testing.assert_allclose(np.asarray(r["best_per_frame"])[0], [11, 30])
    np.testing.assert_allclose(np.asarray(r["mean_per_frame"])[0], [11, 30])
    assert np.isnan(np.asarray(r["mean_per_frame"])[1]).all()
    np.testing.assert_allclose(float(r["best"]), (11 + 30) / 2)
    np.testing.assert_allclose(float(r["mean"]), (11 + 30) / 2)


def test_replay_gain_in_closed_form():
    """Two replays of one frame, one exact and one off by an MSE of m in every channel: best of 2
    minus mean of 2 is (PSNR(f) - PSNR(m + f)) / 2 at an added floor MSE f; with no floor the exact
    replay scores the cap."""
    m = 0.01
    mse = np.array([[[[0.0, 0.0, 0.0]]], [[[m, m, m]]]])  # [N=2, B=1, T=1, C=3]
    for floor_db in (20.0, 30.0):
        f = 10 ** (-floor_db / 10)
        want = (floor_db - 10 * np.log10(1 / (m + f))) / 2
        assert metrics.replay_gain(mse, floor_db) == pytest.approx(want, abs=1e-4)
    assert metrics.replay_gain(mse) == pytest.approx((metrics.PSNR_CAP - 20.0) / 2, abs=1e-3)
    # The gain shrinks as the floor rises (the model's own error hides what chance changes).
    assert metrics.replay_gain(mse, 20.0) < metrics.replay_gain(mse, 30.0) < metrics.replay_gain(mse)
    # Frames without pixels to score (NaN) are left out.
    two = np.concatenate([mse, np.full_like(mse, np.nan)], axis=2)
    assert metrics.replay_gain(two, 20.0) == pytest.approx(metrics.replay_gain(mse, 20.0), abs=1e-5)
