"""evaluation.summarize and derangement on constructed scores (closed forms, no model)."""

import json

import numpy as np
import pytest

from vp_jax.evaluation import derangement, summarize


def _scores(n=3, s=4, t=2):
    rng = np.random.default_rng(0)
    psnr = rng.uniform(20, 30, (n, s, t))
    moving = rng.uniform(10, 20, (n, s, t))
    moving[:, 0, 1] = np.nan  # a frame without moving pixels
    return {
        "psnr": psnr, "ssim": rng.uniform(0.5, 1.0, (n, s, t)), "psnr_moving": moving,
        "moving_fraction": rng.uniform(0, 0.2, (s, t)),
        "copy_psnr": np.full((s, t), 20.0), "copy_ssim": np.full((s, t), 0.8), "copy_psnr_moving": np.full((s, t), 11.0),
        "shuffled_psnr": psnr[0] - 1.5, "shuffled_ssim": np.full((s, t), 0.7), "shuffled_psnr_moving": moving[0] - 2.0,
        "post_psnr": psnr[0] + 0.5, "post_ssim": np.full((s, t), 0.9), "post_psnr_moving": moving[0] + 1.0,
        "post_kl": np.array([[0.0, 2.0]] * s),
    }


def test_summary_measures_in_closed_form():
    sc = _scores()
    m = summarize(sc, moving_threshold=0.05)
    assert m["psnr"] == pytest.approx(sc["psnr"][0].mean())
    # frames without moving pixels are left out, not counted as 0 or NaN
    assert m["psnr_moving"] == pytest.approx(np.nanmean(sc["psnr_moving"][0]))
    assert m["psnr_moving_per_frame"][1] == pytest.approx(np.nanmean(sc["psnr_moving"][0, :, 1]))
    assert m["action_sensitivity_db"] == pytest.approx(1.5)
    assert m["action_sensitivity_moving_db"] == pytest.approx(2.0)
    assert m["baseline_copy_last"]["psnr_moving"] == 11.0
    assert m["posterior"]["psnr"] == pytest.approx(m["psnr"] + 0.5)
    assert m["posterior"]["kl"] == pytest.approx(1.0) and m["posterior"]["kl_per_frame"] == [0.0, 2.0]
    assert m["num_samples"] == 3 and m["num_sequences"] == 4 and m["moving_threshold"] == 0.05
    # best of N >= mean of N, and the difference is reported as such
    for k in ("psnr", "psnr_moving"):
        assert m["best_of_n"][k] >= m["mean_of_n"][k]
        assert m["best_minus_mean_db"][k] == pytest.approx(m["best_of_n"][k] - m["mean_of_n"][k])
    json.loads(json.dumps(m, allow_nan=False))  # strict JSON: no NaN anywhere


def test_a_frame_no_sequence_moves_in_is_null_in_json():
    sc = _scores(n=1)
    for k in ("psnr_moving", "copy_psnr_moving", "shuffled_psnr_moving", "post_psnr_moving"):
        sc[k] = np.array(sc[k], dtype=float)
        sc[k][..., 1] = np.nan
    m = summarize(sc)
    assert m["psnr_moving_per_frame"][1] is None and m["baseline_copy_last"]["psnr_moving_per_frame"][1] is None
    assert "best_of_n" not in m  # one sample
    json.loads(json.dumps(m, allow_nan=False))


@pytest.mark.parametrize("n", [2, 5, 256])
def test_derangement_moves_every_sequence(n):
    perm = derangement(n, seed=3)
    assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))
    np.testing.assert_array_equal(perm, derangement(n, seed=3))
