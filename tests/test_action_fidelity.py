"""Action fidelity (vp_jax.evaluation.action_fidelity): R² in closed form; an inverse model trained on a small
pushbot set reads the actions back from ground-truth videos far better than from copy-last
videos; training is deterministic; evaluation's entry scores predictions equal to the truth as
the truth."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from vp_jax.data import pushbot
from vp_jax.data.pipeline import SequenceSource
from vp_jax.evaluation import action_fidelity as fidelity

STEPS = 300


def _videos(split: str, count: int, frames: int):
    made = [pushbot.generate_sequence(5, split, i, frames) for i in range(count)]
    return np.stack([m[0] for m in made]), np.stack([m[1] for m in made])


def test_r2_in_closed_form():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 3))
    y[:, 2] = 1.5  # a component that does not vary has no R²
    assert np.allclose(fidelity.r2_per_dim(y, y)[:2], 1.0)
    mean = np.broadcast_to(y.mean(0), y.shape)
    assert np.allclose(fidelity.r2_per_dim(y, mean)[:2], 0.0, atol=1e-12)
    half = y + 0.5 * (mean - y)  # residual half the deviation: R² = 1 - 1/4
    assert np.allclose(fidelity.r2_per_dim(y, half)[:2], 0.75)
    assert np.isnan(fidelity.r2_per_dim(y, y)[2])


@pytest.fixture(scope="module")
def trained():
    """64 training sequences of 30 frames (in memory, about a second), 300 Adam steps."""
    frames, cond = _videos("train", 64, 30)
    test = SequenceSource(*_videos("test", 16, 12), name="test")
    return test, fidelity.train_inverse_model(frames, cond[:, :, :4], steps=STEPS, seed=3), (frames, cond)


def test_ground_truth_reads_back_far_better_than_copy_last(trained):
    test, model, _ = trained
    n_past = 2
    frames, actions = np.asarray(test.frames), np.asarray(test.cond[:, :, :4])
    truth = fidelity.score(model, frames, actions, n_past - 1)
    copy = np.concatenate([frames[:, :n_past], np.repeat(frames[:, n_past - 1 : n_past], 12 - n_past, 1)], 1)
    floor = fidelity.score(model, copy, actions, n_past - 1)
    assert truth["r2"] > floor["r2"] + 0.5, (truth, floor)
    assert truth["mae"] < 0.85 * floor["mae"], (truth, floor)
    assert truth["r2_per_dim"][0] > 0.3 and truth["r2_per_dim"][1] > 0.3  # dx, dy: the gripper's motion


def test_training_is_deterministic(trained):
    _, _, (frames, cond) = trained
    a, b = (fidelity.train_inverse_model(frames[:8], cond[:8, :, :4], steps=3, seed=9) for _ in range(2))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    c = fidelity.train_inverse_model(frames[:8], cond[:8, :, :4], steps=3, seed=10)
    assert not np.array_equal(c.params["Dense_1"]["kernel"], a.params["Dense_1"]["kernel"])


def test_evaluation_entry_scores_the_truth_as_the_truth(trained):
    """Predictions equal to the target score exactly as the ground truth; copy-last as the floor."""
    test, model, _ = trained
    config = ml_collections.ConfigDict(dict(n_past=2, seed=3))
    frames = np.asarray(test.frames)
    scores = {"context": frames[:, :2], "target": frames[:, 2:], "pred": frames[:, 2:].copy()}
    result = fidelity.evaluate(config, dataclasses.replace(test), scores, model=model)
    assert result["model"] == result["ground_truth"] == fidelity.score(model, frames, test.cond[:, :, :4], 1)
    assert result["copy_last"]["r2"] < result["ground_truth"]["r2"] - 0.5
    scores["pred"] = np.broadcast_to(frames[:, 1:2], scores["target"].shape)
    assert fidelity.evaluate(config, test, scores, model=model)["model"] == result["copy_last"]
    assert "ceiling" in "\n".join(fidelity.describe(result))
