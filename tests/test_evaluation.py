"""evaluation.summarize and derangement on constructed scores (closed forms, no model)."""

import json

import numpy as np
import pytest

from vp_jax.evaluation.scoring import derangement, summarize


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


def _replayed_world(n_past=2, t=3, num=4, seed=0):
    """A sequence whose futures differ only in an 8x8 patch: (frames [1, n_past + t, 16, 16, 3],
    replays(index, num) as vp_jax.data.pushbot.replay_futures gives them)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (1, n_past + t, 16, 16, 3), dtype=np.uint8)
    futures = np.repeat(frames[:, n_past:], num, axis=0)  # [num, t, 16, 16, 3]
    futures[:, :, 4:12, 4:12] = rng.integers(0, 256, (num, t, 8, 8, 3))
    return frames, lambda index, k: (frames[0], None, futures[:k])


def test_latent_scorer_spread_sits_where_the_replays_differ():
    from vp_jax.evaluation.latent import LatentScorer

    frames, replays = _replayed_world()
    futures = replays(0, 4)[2]
    perfect = LatentScorer(2, 0.05, replays)
    perfect.update(futures[:, None], frames, keep=1)  # samples = the replays: a model that knows chance
    r = perfect.result()
    inside = futures[..., 4:12, 4:12, :].astype(np.float32) / 255
    assert r["spread_uncertain"][0] == pytest.approx(inside.std(0).mean(-1).mean(axis=(1, 2)), rel=1e-5)
    assert np.all(r["spread_elsewhere"] == 0)  # the samples agree outside the patch
    err = (futures.astype(np.float64) / 255 - frames[0, 2:] / 255) ** 2
    np.testing.assert_allclose(r["replay_mse"][:, 0], err.mean(axis=(2, 3)), rtol=1e-5)
    # A deterministic model: no spread at all.
    same = LatentScorer(2, 0.05, replays)
    same.update(np.repeat(frames[None, :, 2:], 4, axis=0), frames, keep=1)
    assert np.all(same.result()["spread_uncertain"] == 0)
    # Stored frames that are not the generator's: no replays, every pixel "elsewhere".
    other = LatentScorer(2, 0.05, replays)
    other.update(futures[:, None], 255 - frames, keep=1)
    assert "replay_mse" not in other.result() and np.all(np.isnan(other.result()["spread_uncertain"]))
