"""Action fidelity: can the robot's actions be read back from the predicted videos?

The "action inference" evaluation of Serra Nunes et al., *Action-conditioned benchmarking of
robotic video prediction models* (arXiv:1910.02564): an **inverse model** -- a small conv net
given two consecutive frames (t, t+1) that outputs action t -- is trained on ground-truth
training videos, then reads the actions back from

* the ground-truth test videos (the ceiling: what the inverse model can recover at all),
* the model's predicted videos (what the predictions show of the actions they were given),
* the copy-last baseline (every predicted frame the last context frame: the floor).

Each is scored by R² (coefficient of determination per action component, averaged over the
components that vary) and the mean absolute error, on the transitions into the predicted frames:
``t = n_past - 1 .. n_eval - 2`` (the first pair is the last context frame and the first
predicted one). A model that draws the robot where its actions put it scores close to the
ceiling; one that blurs the robot away scores close to the floor, whatever its PSNR.

    python eval.py --workdir runs/pushbot --action_fidelity

Training is deterministic given the seed (the run's ``config.seed``): batches come from a
``numpy`` generator, the weights from a ``jax.random`` key.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vp_jax.data.pipeline import open_split
from vp_jax.errors import DataError

#: Defaults of the inverse model's training (docs/metrics.md gives the cost).
STEPS = 1000
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
ACTION_DIMS = 4


class InverseNet(nn.Module):
    """Two frames -> one action: the frames and their difference (9 channels), averaged over
    2x2 pixels (64 -> 32), three stride-2 4x4 convolutions (32, 64, 64 channels, ReLU), a
    128-unit hidden layer, a linear output."""

    outputs: int = ACTION_DIMS

    @nn.compact
    def __call__(self, first, second):
        x = jnp.concatenate([first, second, second - first], axis=-1)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        for width in (32, 64, 64):
            x = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.outputs)(nn.relu(nn.Dense(128)(x)))


def _float(frames):
    return jnp.asarray(frames, jnp.float32) / 255.0


@dataclasses.dataclass
class InverseModel:
    """A trained inverse model: ``params`` of :class:`InverseNet`; the actions' ``mean`` and
    ``std`` it was trained to output standardised; the training settings and the final loss."""

    params: dict
    mean: np.ndarray
    std: np.ndarray
    steps: int
    batch_size: int
    seed: int
    final_loss: float
    seconds: float

    def predict(self, videos, chunk: int = 512) -> np.ndarray:
        """Actions read from every transition of ``videos`` uint8 ``[M, T, H, W, 3]``: ``[M, T - 1, A]``
        in the data's units."""
        videos = np.asarray(videos)
        m, t = videos.shape[:2]
        first = videos[:, :-1].reshape(-1, *videos.shape[2:])
        second = videos[:, 1:].reshape(-1, *videos.shape[2:])
        apply = _apply_fn(len(self.mean))
        out = []
        for lo in range(0, len(first), chunk):
            out.append(np.asarray(apply(self.params, first[lo : lo + chunk], second[lo : lo + chunk])))
        standardised = np.concatenate(out).reshape(m, t - 1, -1)
        return standardised * self.std + self.mean


_APPLY = {}


def _apply_fn(outputs: int):
    if outputs not in _APPLY:
        net = InverseNet(outputs)
        _APPLY[outputs] = jax.jit(lambda params, a, b: net.apply({"params": params}, _float(a), _float(b)))
    return _APPLY[outputs]


def _initial_params(outputs: int, frame_shape: tuple, seed: int) -> dict:
    """He-normal kernels (std sqrt(2 / fan_in)), zero biases, drawn by numpy from ``seed``:
    the same weights on every machine, and no random-number program to compile."""
    frame = jax.ShapeDtypeStruct((1, *frame_shape), jnp.uint8)
    shapes = jax.eval_shape(lambda f: InverseNet(outputs).init(jax.random.key(0), _float(f), _float(f)), frame)["params"]
    rng = np.random.default_rng([int(seed), 1])

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['bias']"):
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _train_step(outputs: int, learning_rate: float):
    """(optimiser, jitted ``step(params, opt_state, first, second, target)``, jitted
    ``init(params) -> (params, opt_state)``), compiled once per process."""
    net = InverseNet(outputs)
    tx = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state, first, second, target):
        def loss_fn(p):
            return jnp.mean(jnp.square(net.apply({"params": p}, _float(first), _float(second)) - target))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def init(params):
        return params, tx.init(params)

    return tx, step, init


def train_inverse_model(frames, actions, *, steps: int = STEPS, batch_size: int = BATCH_SIZE,
                        learning_rate: float = LEARNING_RATE, seed: int = 0) -> InverseModel:
    """Train an :class:`InverseNet` on the transitions of ground-truth videos.

    ``frames`` uint8 ``[N, S, H, W, 3]`` (an array or a memory map: only the sampled frames are
    read), ``actions`` ``[N, S, A]`` (action t moves frame t to t+1). Each of the ``steps`` Adam
    steps draws ``batch_size`` (sequence, t) pairs at random; the loss is the mean squared error
    of the standardised actions.
    """
    actions = np.asarray(actions, np.float32)
    n, s = actions.shape[:2]
    if n < 1 or s < 2 or len(frames) != n:
        raise DataError(f"action fidelity: need sequences of at least 2 frames with one action each; got frames of "
                        f"{len(frames)} sequences, actions of shape {actions.shape}")
    flat = actions[:, :-1].reshape(-1, actions.shape[-1]).astype(np.float64)
    mean = flat.mean(0).astype(np.float32)
    std = flat.std(0)
    std = np.where(std < 1e-6, 1.0, std).astype(np.float32)
    rng = np.random.default_rng(seed)
    sample = np.asarray(frames[0, 0])[None]
    tx, step, init = _train_step(actions.shape[-1], float(learning_rate))
    params, opt_state = init(_initial_params(actions.shape[-1], sample.shape[1:], seed))
    start = time.perf_counter()
    loss = jnp.nan
    for _ in range(int(steps)):
        seq = np.sort(rng.integers(n, size=batch_size))  # sorted: a memory map reads forwards
        t = rng.integers(s - 1, size=batch_size)
        first = np.stack([frames[i, k] for i, k in zip(seq, t)])
        second = np.stack([frames[i, k + 1] for i, k in zip(seq, t)])
        target = (actions[seq, t] - mean) / std
        params, opt_state, loss = step(params, opt_state, first, second, target)
    return InverseModel(params=params, mean=mean, std=std, steps=int(steps), batch_size=int(batch_size), seed=int(seed),
                        final_loss=float(loss), seconds=time.perf_counter() - start)


def r2_per_dim(true, pred) -> np.ndarray:
    """R² of each component (last axis): ``1 - sum (y - ŷ)² / sum (y - mean y)²``; NaN for a
    component that does not vary."""
    y = np.asarray(true, np.float64).reshape(-1, np.shape(true)[-1])
    p = np.asarray(pred, np.float64).reshape(y.shape)
    total = np.sum(np.square(y - y.mean(0)), axis=0)
    residual = np.sum(np.square(y - p), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 1e-12, 1.0 - residual / np.where(total > 1e-12, total, 1.0), np.nan)


def score(model: InverseModel, videos, actions, first: int) -> dict:
    """How well ``model`` reads ``actions [M, T, A]`` back from ``videos [M, T, H, W, 3]`` on
    the transitions ``t = first .. T - 2``: ``r2`` (mean over the components that vary),
    ``mae`` (mean over components), and both per component."""
    actions = np.asarray(actions, np.float64)
    pred = model.predict(videos)[:, first:]
    true = actions[:, first : np.shape(videos)[1] - 1]
    r2 = r2_per_dim(true, pred)
    mae = np.mean(np.abs(true - pred).reshape(-1, true.shape[-1]), axis=0)
    return {
        "r2": float(np.nanmean(r2)) if np.any(np.isfinite(r2)) else None,
        "mae": float(np.mean(mae)),
        "r2_per_dim": [None if not np.isfinite(v) else float(v) for v in r2],
        "mae_per_dim": [float(v) for v in mae],
    }


def evaluate(run, source, scores: dict, *, steps: int = STEPS, seed: int | None = None,
             model: InverseModel | None = None) -> dict:
    """The ``action_fidelity`` entry of ``metrics.json``: an inverse model trained on the
    training split (or ``model``), scored on ``source``'s ground truth, the predictions in
    ``scores`` (``context``, ``target``, ``pred``: uint8 ``[S, T, ...]``, as evaluation keeps
    them) and the copy-last baseline."""
    dims = min(ACTION_DIMS, int(source.cond.shape[-1]))
    trained_on = "given"
    if model is None:
        train_source = open_split(run.data, "train")
        trained_on = train_source.name
        seed = int(run.seed if seed is None else seed)
        model = train_inverse_model(train_source.frames, train_source.cond[:, :, :dims], steps=steps, seed=seed)
    n_past = run.n_past
    context, target, pred = (np.asarray(scores[k]) for k in ("context", "target", "pred"))
    count, num_frames = len(pred), context.shape[1] + target.shape[1]
    actions = np.asarray(source.cond[:count, :num_frames, :dims], np.float64)
    copy = np.broadcast_to(context[:, -1:], target.shape)
    result = {
        name: score(model, np.concatenate([context, video], axis=1), actions, n_past - 1)
        for name, video in (("ground_truth", target), ("model", pred), ("copy_last", copy))
    }
    result["transitions"] = f"frames t -> t+1 for t = {n_past - 1}..{num_frames - 2}, {count} sequences"
    result["inverse_model"] = {
        "trained_on": trained_on, "steps": model.steps, "batch_size": model.batch_size,
        "learning_rate": LEARNING_RATE, "seed": model.seed, "final_loss": model.final_loss,
        "seconds": round(model.seconds, 1), "components": ["dx", "dy", "dz", "gripper"][:dims],
    }
    return result


def describe(result: dict) -> list[str]:
    """The lines eval.py prints."""
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [f"action fidelity (inverse model, {result['transitions']}):  R²  mean abs error"]
    for name, label in (("ground_truth", "ground truth (ceiling)"), ("model", "model"), ("copy_last", "copy last (floor)")):
        r = result[name]
        lines.append(f"  {label:<24} {fmt(r['r2']):>6} {r['mae']:.3f}")
    return lines
