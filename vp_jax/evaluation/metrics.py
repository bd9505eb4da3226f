"""Frame-quality metrics (pure ``jnp``, jittable) and the best-of-N / mean-of-N protocol.

All image functions take channels-last arrays ``[..., T, H, W, C]`` with values in
``[0, data_range]`` and return one score per frame, ``[..., T]``; any leading batch dims
(samples ``N``, sequences ``B``) are kept.  Computation is in float32 (inputs of other dtypes,
uint8 included, are cast; pass ``data_range=255`` for uint8 pixels).

PSNR (the lab metric, docs/model.md)::

    MSE_c    = mean_{h,w} (pred[..., h, w, c] - target[..., h, w, c])^2
    PSNR     = mean_c 10 * log10(data_range^2 / max(MSE_c, data_range^2 * 10^(-PSNR_CAP/10)))

i.e. the per-channel PSNR averaged over the channels (not the PSNR of the all-channel MSE).
A channel with zero error would give +inf; it is capped at ``PSNR_CAP`` = 100 dB, so identical
frames score exactly 100 dB and averages stay finite.

SSIM (Wang et al. 2004, as in the SVG paper protocol, docs/model.md)::

    mu_x = G * x,  mu_y = G * y                      (G: 11x11 Gaussian, sigma 1.5, sum 1)
    s_x2 = G * x^2 - mu_x^2,  s_y2 = G * y^2 - mu_y^2,  s_xy = G * (x y) - mu_x mu_y
    C1 = (0.01 L)^2,  C2 = (0.03 L)^2                 (L = data_range)
    S    = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x2 + s_y2 + C2))
    SSIM = mean_c mean_{valid h,w} S

``*`` is a 'valid' correlation (no padding: a 64x64 frame gives a 54x54 map), computed as two
separable 1-D passes (banded-matrix products).  This equals
``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=L, channel_axis=-1)``: skimage filters with
``mode='reflect'`` and then crops ``(11 - 1) // 2 = 5`` pixels from every border before
averaging, which removes exactly the pixels whose window touched the padding.  The
variances are population variances (``use_sample_covariance=False``).  Differences to skimage
are float32 rounding only (~1e-6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PSNR_CAP = 100.0  # dB: the PSNR of a channel with zero error
SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_uint8(x):
    """Frames in [0, 1] -> uint8, rounded to the nearest level (how predictions are scored and saved)."""
    return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)


def psnr_per_frame(pred, target, data_range: float = 1.0):
    """Per-frame PSNR in dB, ``[..., T, H, W, C] -> [..., T]``.

    ``mean_c 10 log10(data_range^2 / MSE_c)`` with ``MSE_c`` the mean squared error of channel
    ``c`` over H and W (the lab metric).  Zero-error channels are capped at ``PSNR_CAP`` dB.
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    mse = jnp.mean(jnp.square(pred - target), axis=(-3, -2))  # [..., T, C]
    floor = data_range**2 * 10.0 ** (-PSNR_CAP / 10.0)
    psnr_c = 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, floor))
    return jnp.mean(psnr_c, axis=-1)


#: A pixel "moves" when the target frame differs from the last context frame by more than this
#: in any channel (values in [0, 1]; 0.05 = 12.75 of 255 grey levels).
MOVING_THRESHOLD = 0.05


def moving_mask(target, reference, threshold: float = MOVING_THRESHOLD, data_range: float = 1.0):
    """Bool ``[..., T, H, W]``: pixels of ``target [..., T, H, W, C]`` that differ from
    ``reference [..., H, W, C]`` (the last context frame) by more than ``threshold * data_range``
    in any channel -- the pixels where "nothing moves" (copying the reference) is wrong."""
    target = jnp.asarray(target, jnp.float32)
    reference = jnp.asarray(reference, jnp.float32)[..., None, :, :, :]
    return jnp.any(jnp.abs(target - reference) > threshold * data_range, axis=-1)


def psnr_masked_per_frame(pred, target, mask, data_range: float = 1.0):
    """Per-frame PSNR over the pixels of ``mask [..., T, H, W]`` only: ``[..., T]`` in dB.

    As :func:`psnr_per_frame` with the channel MSE taken over the masked pixels
    (``MSE_c = sum_mask err_c^2 / |mask|``), so an all-True mask gives exactly
    :func:`psnr_per_frame`.  A frame with an empty mask has no score: NaN.
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)[..., None]
    count = jnp.sum(m, axis=(-3, -2))  # [..., T, 1]
    mse = jnp.sum(jnp.square(pred - target) * m, axis=(-3, -2)) / jnp.maximum(count, 1.0)  # [..., T, C]
    floor = data_range**2 * 10.0 ** (-PSNR_CAP / 10.0)
    psnr = jnp.mean(10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, floor)), axis=-1)
    return jnp.where(count[..., 0] > 0, psnr, jnp.nan)


def gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian taps (as ``scipy.ndimage`` with radius ``size // 2``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _valid_filter_matrix(n: int, taps: np.ndarray) -> np.ndarray:
    """``[n - k + 1, n]`` banded matrix M with ``(M @ x)[i] = sum_j taps[j] x[i + j]``."""
    k = len(taps)
    m = np.zeros((n - k + 1, n), np.float32)
    for i in range(n - k + 1):
        m[i, i : i + k] = taps
    return m


def _filter2d_valid(x, taps: np.ndarray):
    """Separable 'valid' Gaussian filter of ``x [M, H, W, C]`` -> ``[M, H-k+1, W-k+1, C]``."""
    mh = jnp.asarray(_valid_filter_matrix(x.shape[-3], taps))
    mw = jnp.asarray(_valid_filter_matrix(x.shape[-2], taps))
    hi = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on GPU: variances are differences
    x = jnp.einsum("ih,mhwc->miwc", mh, x, precision=hi)
    return jnp.einsum("jw,miwc->mijc", mw, x, precision=hi)


def ssim_per_frame(pred, target, data_range: float = 1.0):
    """Per-frame SSIM, ``[..., T, H, W, C] -> [..., T]`` (see the module docstring).

    11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, population covariances, mean over
    the 'valid' region, per channel then averaged over channels.  H and W must be >= 11.
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"ssim_per_frame: shapes differ {pred.shape} vs {target.shape}")
    if pred.ndim < 3:
        raise ValueError(f"ssim_per_frame: expected [..., H, W, C], got shape {pred.shape}")
    *lead, h, w, c = pred.shape
    if h < SSIM_WIN or w < SSIM_WIN:
        raise ValueError(f"ssim_per_frame: frames {h}x{w} are smaller than the {SSIM_WIN}x{SSIM_WIN} window")
    m = int(np.prod(lead)) if lead else 1
    x = pred.reshape(m, h, w, c)
    y = target.reshape(m, h, w, c)
    # One filter pass over the five moments stacked along the batch axis.
    stack = jnp.concatenate([x, y, x * x, y * y, x * y], axis=0)
    f = _filter2d_valid(stack, gaussian_window())
    mu_x, mu_y, xx, yy, xy = jnp.split(f, 5, axis=0)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_channel = jnp.mean(s, axis=(1, 2))  # [M, C]
    return jnp.mean(per_channel, axis=-1).reshape(tuple(lead))


def best_and_mean_of_n(per_frame_scores, higher_is_better: bool = True) -> dict:
    """Paper protocol over N samples, ``per_frame_scores [N, B, T]`` -> dict of arrays.

    For every sequence ``b`` the best sample is the one with the best *mean over frames*
    score; its whole per-frame curve is reported (not the frame-wise maximum over samples,
    which would mix samples).  NaN entries (frames without a score, e.g. no moving pixels) are
    left out of every mean.  The choice is made **per metric**: call this once for PSNR and
    once for SSIM; the two may pick different samples, as in the SVG paper.  The mean-of-N
    average over samples is reported beside it.

    Returns
      ``best_index`` int32 ``[B]``: the chosen sample per sequence;
      ``best_per_frame`` ``[B, T]`` and ``mean_per_frame`` ``[B, T]``;
      ``best_curve`` / ``mean_curve`` ``[T]``: averaged over sequences;
      ``best`` / ``mean``: scalars, averaged over sequences and frames.
    """
    s = jnp.asarray(per_frame_scores, jnp.float32)
    if s.ndim != 3:
        raise ValueError(f"best_and_mean_of_n: expected [N, B, T] scores, got shape {s.shape}")
    per_sample = jnp.nanmean(s, axis=-1)  # [N, B]
    per_sample = jnp.where(jnp.isnan(per_sample), -jnp.inf if higher_is_better else jnp.inf, per_sample)
    idx = jnp.argmax(per_sample, axis=0) if higher_is_better else jnp.argmin(per_sample, axis=0)
    best = jnp.take_along_axis(s, idx[None, :, None], axis=0)[0]  # [B, T]
    mean = jnp.nanmean(s, axis=0)  # [B, T]
    return {
        "best_index": idx.astype(jnp.int32),
        "best_per_frame": best,
        "mean_per_frame": mean,
        "best_curve": jnp.nanmean(best, axis=0),
        "mean_curve": jnp.nanmean(mean, axis=0),
        "best": jnp.nanmean(best),
        "mean": jnp.nanmean(mean),
    }


def copy_last_baseline(context_last_frame, T: int):
    """Repeat the last context frame ``[..., H, W, C]`` T times -> ``[..., T, H, W, C]``.

    The "nothing moves" baseline printed beside the model (docs/model.md).  For frames
    ``[..., S, H, W, C]`` use ``copy_last_baseline(frames[..., n_past - 1, :, :, :], T)``.
    """
    x = jnp.asarray(context_last_frame)
    return jnp.broadcast_to(x[..., None, :, :, :], (*x.shape[:-3], T, *x.shape[-3:]))


def psnr_from_mse(mse_per_channel, floor_db: float = float("inf")):
    """``mean_c 10 log10(1 / (MSE_c + 10^(-floor_db/10)))`` over the last axis (channels), data range 1.

    With a finite ``floor_db`` a second, independent error of that PSNR is added to every
    channel: the score of a prediction that errs as ``mse_per_channel`` says *and* as a model at
    ``floor_db`` does. NaN MSEs (frames without pixels to score) give NaN.
    """
    mse = np.asarray(mse_per_channel, np.float64)
    floor = 0.0 if np.isinf(floor_db) else 10.0 ** (-float(floor_db) / 10.0)
    cap = 10.0 ** (-PSNR_CAP / 10.0)
    with np.errstate(invalid="ignore"):
        return np.mean(10.0 * np.log10(1.0 / np.maximum(mse + floor, cap)), axis=-1)


def replay_gain(replay_mse, floor_db: float = float("inf")) -> float:
    """Best-of-N minus mean-of-N PSNR (dB) of exact replays of the hidden randomness.

    ``replay_mse [N, B, T, C]``: per-channel MSE of N replays of each sequence (the same context
    and conditions, the randomness the conditions leave open drawn again) against the truth,
    NaN for frames without pixels to score. A replay is a model that is exact but for what
    cannot be known; its best-of-N minus mean-of-N is the most a latent that models that
    randomness can gain. At a model's own error floor ``floor_db`` (its PSNR) the gain shrinks:
    scored with :func:`psnr_from_mse` at that floor, as :func:`best_and_mean_of_n` scores samples.
    """
    bm = best_and_mean_of_n(psnr_from_mse(replay_mse, floor_db))
    return float(bm["best"] - bm["mean"])


def nanmean(x, axis=None):
    """NumPy mean ignoring NaN (frames without moving pixels); NaN when everything is NaN, no warning."""
    x = np.asarray(x, np.float64)
    count = np.sum(~np.isnan(x), axis=axis)
    total = np.nansum(x, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count
