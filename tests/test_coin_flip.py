"""The latent end to end: a square that, after the context, moves left or right by a fair coin.

Nothing in the context or the conditions tells which way: a model whose samples come from a
latent that learned the coin puts about half of them on each side, and each one is a sharp
square on one side; a model without a usable latent can only draw the average, a faded square on
both sides, which counts for neither. The tiny model is trained in-process with the library's
iterator, train step and generation (about 2 min on a 2-core CPU); the same training with the
latent cut off (a KL weight so large that the posterior collapses onto the prior) fails the same
decision. Both are marked slow (``VP_JAX_SLOW=1``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vp_jax.config import run_config
from vp_jax.data.pipeline import BatchIterator, SequenceSource
from vp_jax.models.generation import make_generate_fn
from vp_jax.store.state import create_train_state
from vp_jax.training.step import make_train_step

SIZE, SIDE, SPEED, FRAMES = 64, 12, 5, 5
YELLOW, GREY = np.array([230, 200, 60]), np.array([60, 70, 90])


def coin_sequences(num: int, seed: int):
    """``(frames uint8 [N, 5, 64, 64, 3], cond [N, 5, 7], side [N], column [N])``: a square still
    in the two context frames, then ``SPEED`` pixels a frame to the ``side`` (-1 left, +1 right)
    of a fair coin; the conditions are noise that says nothing about it."""
    rng = np.random.default_rng(seed)
    side = rng.choice([-1, 1], size=num)
    row, col0 = rng.uniform(18, 46, size=num), rng.uniform(26, 38, size=num)
    col = col0[:, None] + side[:, None] * SPEED * np.maximum(np.arange(FRAMES) - 1, 0)[None]
    grid = np.arange(SIZE) + 0.5
    in_row = np.abs(grid[None, None, :] - row[:, None, None]) < SIDE / 2  # [N, 1, H]
    in_col = np.abs(grid[None, None, :] - col[..., None]) < SIDE / 2  # [N, T, W]
    square = in_row[:, :, :, None] & in_col[:, :, None, :]
    frames = np.where(square[..., None], YELLOW, GREY).astype(np.uint8)
    return frames, rng.normal(size=(num, FRAMES, 7)).astype(np.float32), side, col0


def sides(pred, col0) -> np.ndarray:
    """The side of each sample ``pred [N, B, T, H, W, 3]`` in [0, 1], from its last frame: -1 or +1
    where a square-sized patch of the square's colour lies beyond a square's width on that side
    and hardly any on the other, 0 (undecided) otherwise -- a faded average is undecided."""
    last = np.asarray(pred)[:, :, -1]
    yellow = np.linalg.norm(last * 255 - YELLOW, axis=-1) < 60  # [N, B, H, W]
    cols = np.arange(SIZE)[None, None, None, :] + 0.5
    left = (yellow & (cols < col0[None, :, None, None] - SIDE)).sum(axis=(-2, -1))
    right = (yellow & (cols > col0[None, :, None, None] + SIDE)).sum(axis=(-2, -1))
    area = SIDE * SIDE
    return np.where((left > area / 3) & (right < area / 12), -1, np.where((right > area / 3) & (left < area / 12), 1, 0))


def coin_config(tiny_config, beta: float):
    c = tiny_config.copy_and_resolve_references()
    c.n_future, c.n_eval, c.data.seq_len = FRAMES - 2, FRAMES, FRAMES
    c.model.output = "composite"
    c.model.transforms = 2
    c.model.transform_size = 11
    c.model.skip_frame = "last_context"
    c.model.predictor_bn_head = False
    c.train.batch_size = 8
    c.train.lr = 0.004
    c.train.kl.schedule = "constant"
    c.train.kl.beta_max = beta
    return c


def train_and_sample(config, steps: int, seed: int = 0):
    """Train ``steps`` steps on 1,024 coin sequences; return the sides of 10 samples of 64 new ones."""
    run = run_config(config)
    frames, cond, _, _ = coin_sequences(1024, seed)
    batches = BatchIterator(SequenceSource(frames, cond, name="coin"), config.train.batch_size, FRAMES, seed=seed, prefetch=0)
    state, step = create_train_state(run, jax.random.key(seed)), make_train_step(run)
    for _ in range(steps):
        state, _ = step(state, next(batches), jax.random.key(seed))
    test, test_cond, truth, col0 = coin_sequences(64, seed + 1)
    generate = make_generate_fn(run.model, run.n_past, num_samples=10)
    pred = generate(state.params, state.batch_stats, jnp.asarray(test), jnp.asarray(test_cond), jax.random.key(5))
    assert np.all(sides(test[None, :, 2:] / 255.0, col0) == truth)  # the decision reads the truth right
    return sides(pred, col0)


@pytest.mark.slow  # ~2.5 min each on a 2-core CPU: VP_JAX_SLOW=1
@pytest.mark.parametrize("beta,learns", [(1e-4, True), (3.0, False)], ids=["latent", "latent-cut-off"])
def test_samples_take_both_sides_of_the_coin(tiny_config, beta, learns):
    s = train_and_sample(coin_config(tiny_config, beta), steps=300)
    left, right = np.mean(s == -1), np.mean(s == 1)
    fair = 0.3 <= left <= 0.7 and 0.3 <= right <= 0.7
    assert fair == learns, dict(left=left, right=right, undecided=np.mean(s == 0))
