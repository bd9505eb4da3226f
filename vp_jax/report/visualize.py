"""Plots of a training run and of an evaluation, and GIFs of predictions beside ground truth.

Matplotlib runs on the non-interactive Agg backend; every file (PNG or GIF) is written to a
temporary name in the destination folder and renamed into place, so a reader never sees a
half-written file.  Nothing here imports JAX: inputs are NumPy arrays (JAX arrays convert).
"""

from __future__ import annotations

import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vp_jax.errors import DataError  # noqa: E402
from vp_jax.fileio import atomic_path  # noqa: E402

CONTEXT_COLOR = (0, 200, 0)  # border of context (ground-truth-fed) frames
PRED_COLOR = (220, 0, 0)  # border of predicted frames
HEADER_BG = (255, 255, 255)
HEADER_FG = (0, 0, 0)
PROGRESS_PX = 3  # height of the time bar under a GIF


# ----------------------------------------------------------------------------- files


def _write_atomically(path: str, suffix: str, write) -> str:
    """``write(tmp)`` into a temporary sibling of ``path``, renamed to ``path`` when complete."""
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)
    return path


def save_fig(fig, path: str) -> str:
    try:
        return _write_atomically(path, ".png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- training curves


def read_metrics_csv(path: str) -> pd.DataFrame:
    """A training ``metrics.csv`` as numbers ('' and 'nan' become NaN); DataError if unusable."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: metrics CSV not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable metrics CSV ({str(err).splitlines()[0]})") from None
    if len(df) == 0:
        raise DataError(f"{path}: metrics CSV has no rows")
    if "epoch" not in df.columns and "step" not in df.columns:
        raise DataError(f"{path}: expected an 'epoch' or 'step' column, got {list(df.columns)}")
    for col in df.columns:
        df[col] = pd.to_numeric(df[col], errors="coerce")  # '' / 'nan' -> NaN
    return df


def _x_axis(df: pd.DataFrame) -> str:
    """'epoch' when each row is one epoch, else 'step' (several rows per epoch)."""
    if "epoch" in df.columns and df["epoch"].notna().all() and df["epoch"].is_unique:
        return "epoch"
    return "step" if "step" in df.columns else "epoch"


def _plot_series(ax, df, x, col, **kw) -> bool:
    if col not in df.columns:
        return False
    d = df[[x, col]].dropna()
    d = d[np.isfinite(d[col])]
    if len(d) == 0:
        return False
    ax.plot(d[x], d[col], marker="." if len(d) < 60 else None, **kw)
    return True


def _maybe_log(ax, df, col):
    if col in df.columns:
        v = df[col].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if len(v) and (v > 0).all() and v.max() / v.min() > 20:
            ax.set_yscale("log")


def plot_training_curves(metrics_csv_path: str, out_dir: str) -> list[str]:
    """Plot a training ``metrics.csv`` into ``out_dir``; return the written paths.

    * ``loss.png``: total loss, reconstruction MSE and KL on three separate panels (log scale
      where they span more than a factor 20): early in training the KL rises while the MSE
      falls, which one shared axis would hide.
    * ``schedules.png``: KL weight β and teacher-forcing ratio tfr (top), learning rate (bottom).
    * ``val_psnr.png``: validation PSNR at the epochs that ran validation (NaN rows skipped; a
      run without any validation yet gets a panel saying so), beside the moving-pixel PSNR, the
      posterior reconstruction and copy-last when the CSV has them; below, the action sensitivity.

    The x axis is the epoch when the CSV has one row per epoch, the step otherwise.  Columns
    other than those named above are ignored; missing ones are left out of the plots.
    """
    df = read_metrics_csv(metrics_csv_path)
    x = _x_axis(df)
    os.makedirs(out_dir, exist_ok=True)
    figures = {"loss.png": _loss_figure, "schedules.png": _schedules_figure, "val_psnr.png": _validation_figure}
    return [save_fig(draw(df, x), os.path.join(out_dir, name)) for name, draw in figures.items()]


def _no_values(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _loss_figure(df, x):
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    for ax, col, label, color in (
        (axes[0], "loss", "loss (MSE + β·KL)", "k"),
        (axes[1], "mse", "MSE (reconstruction)", "tab:blue"),
        (axes[2], "kl", "KL(q ‖ p) per sequence", "tab:orange"),
    ):
        if _plot_series(ax, df, x, col, color=color):
            _maybe_log(ax, df, col)
        else:
            _no_values(ax, f"no '{col}' values")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(x)
    fig.suptitle("training loss")
    return fig


def _schedules_figure(df, x):
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    any_sched = _plot_series(axes[0], df, x, "beta", label="β (KL weight)", color="tab:purple")
    any_sched |= _plot_series(axes[0], df, x, "tfr", label="teacher forcing ratio", color="tab:green")
    if any_sched:
        axes[0].legend(loc="best")
    axes[0].set_ylabel("β, tfr")
    axes[0].grid(True, alpha=0.3)
    if _plot_series(axes[1], df, x, "lr", color="tab:red"):
        _maybe_log(axes[1], df, "lr")
    axes[1].set_ylabel("learning rate")
    axes[1].set_xlabel(x)
    axes[1].grid(True, alpha=0.3)
    fig.suptitle("schedules")
    return fig


def _validation_figure(df, x):
    fig, (ax, sens) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    if _plot_series(ax, df, x, "val_psnr", color="tab:blue", label="model (all pixels)"):
        d = df[[x, "val_psnr"]].dropna()
        i = d["val_psnr"].idxmax()
        ax.annotate(f"best {d.loc[i, 'val_psnr']:.2f} dB @ {x} {d.loc[i, x]:g}", (d.loc[i, x], d.loc[i, "val_psnr"]),
                    textcoords="offset points", xytext=(0, -15), ha="center", fontsize=8)
        for col, label, style in (
            ("val_psnr_moving", "model, moving pixels", dict(color="tab:red")),
            ("val_posterior_psnr", "posterior reconstruction", dict(color="tab:green", ls="-.")),
            ("val_copy_psnr", "copy last context frame", dict(color="gray", ls="--")),
        ):
            _plot_series(ax, df, x, col, label=label, **style)
        ax.legend(loc="best", fontsize=8)
    else:
        _no_values(ax, "no validation PSNR yet")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.set_title("validation PSNR")
    if not _plot_series(sens, df, x, "val_action_sensitivity_db", color="tab:purple"):
        _no_values(sens, "no action sensitivity yet")
    sens.axhline(0.0, color="gray", lw=0.8)
    sens.set_ylabel("PSNR true - shuffled\nconditions (dB)")
    sens.set_xlabel(x)
    sens.grid(True, alpha=0.3)
    sens.set_title("action sensitivity")
    return fig


# ----------------------------------------------------------------------------- per-frame metrics

_CURVE_STYLE = {
    "model": dict(color="tab:blue", lw=2),
    "best_of_n": dict(color="tab:green", lw=2),
    "mean_of_n": dict(color="tab:olive", lw=1.5, ls="-."),
    "baseline_copy_last": dict(color="gray", lw=1.5, ls="--"),
    "shuffled_condition": dict(color="tab:purple", lw=1.5, ls=":"),
    "posterior": dict(color="tab:red", lw=1.5, ls="-."),
}


def _curves(metrics: dict, metric: str) -> dict:
    """label -> 1-D per-frame array for ``metric`` ('psnr', 'psnr_moving' or 'ssim'); null -> NaN."""
    key = f"{metric}_per_frame"
    out = {}
    if key in metrics:
        out["model"] = metrics[key]
    for name, value in metrics.items():
        if isinstance(value, dict) and key in value:
            out[name] = value[key]
    res = {}
    for name, v in out.items():
        v = np.array([np.nan if e is None else e for e in np.ravel(v)] if np.ndim(v) == 1 else v, dtype=float)
        if v.ndim > 1:  # [B, T] or [N, B, T]: average over everything but frames
            v = v.reshape(-1, v.shape[-1]).mean(axis=0)
        res[name] = v
    return res


def _plot_diversity(ax, metrics: dict, n_past: int) -> None:
    """Per-frame spread of the samples inside and outside the pixels chance decides."""
    d = metrics.get("latent", {}).get("diversity")
    if not d:
        ax.text(0.5, 0.5, "one sample: no spread", ha="center", va="center", transform=ax.transAxes)
    else:
        for key, label, style in (("uncertain_per_frame", "pixels chance decides", dict(color="tab:red")),
                                  ("elsewhere_per_frame", "elsewhere", dict(color="tab:blue", ls="--"))):
            v = np.array([np.nan if e is None else e for e in d[key]], float)
            if np.isfinite(v).any():
                ax.plot(np.arange(n_past, n_past + len(v)), v, marker="o", ms=3, label=label, **style)
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("frame index (predicted frames)")
    ax.set_ylabel("std across samples")
    ax.grid(True, alpha=0.3)
    ax.set_title("sample spread per frame")


def write_samples(samples, context, target, n_past: int, out_dir: str, shown: int = 4) -> list[str]:
    """``samples.png`` (sequence 0: the truth above ``shown`` samples) and ``samples.gif`` (one row
    per kept sequence: truth, then the samples) from ``samples [N, k, T, H, W, C]``,
    ``context [S, n_past, ...]`` and ``target [S, T, ...]`` uint8."""
    samples = np.asarray(samples)[:shown]
    truth = [np.concatenate([context[j], target[j]]) for j in range(samples.shape[1])]
    videos = [[truth[j]] + [np.concatenate([context[j], s[j]]) for s in samples] for j in range(samples.shape[1])]
    labels = ["truth"] + [f"sample {i + 1}" for i in range(len(samples))]
    return [write_labelled_strip(videos[0], labels, n_past, os.path.join(out_dir, "samples.png")),
            write_labelled_gif(videos, [f"sequence {j}" for j in range(len(videos))], n_past,
                               os.path.join(out_dir, "samples.gif"), titles=labels)]


def plot_per_frame(metrics: dict, path: str, n_past: int | None = None) -> str:
    """Per-frame PSNR, moving-pixel PSNR, SSIM and the samples' spread (four panels) written to ``path`` (PNG).

    ``metrics`` layout (what ``evaluation.py`` writes to ``metrics.json``)::

        {"n_past": 2,                                   # x axis starts at frame n_past
         "psnr_per_frame": [T], "psnr_moving_per_frame": [T], "ssim_per_frame": [T],  # the model
         "baseline_copy_last": {...}, "shuffled_condition": {...}, "posterior": {...},
         "best_of_n": {...}, "mean_of_n": {...}}   # optional

    Every top-level dict holding ``<metric>_per_frame`` becomes one curve
    labelled with its key; multi-dimensional values are averaged down to ``[T]``.  A metric
    that no entry has gets an empty panel with a note.  The first plotted frame index is the
    ``n_past`` argument, else ``metrics["n_past"]``, else 0.
    """
    n_past = int(metrics.get("n_past", 0) if n_past is None else n_past)
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
    _plot_diversity(axes[3], metrics, n_past)
    panels = ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "psnr_moving", "PSNR on moving pixels (dB)"), (axes[2], "ssim", "SSIM"))
    for ax, metric, unit in panels:
        curves = _curves(metrics, metric)
        for name, v in curves.items():
            frames = np.arange(n_past, n_past + len(v))
            label = f"{name} (mean {np.nanmean(v):.3g})" if len(v) else name
            ax.plot(frames, v, marker="o", ms=3, label=label, **_CURVE_STYLE.get(name, {}))
        if curves:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {metric} per frame", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("frame index (predicted frames)")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.set_title(unit.split(" (")[0] + " per frame")
    return save_fig(fig, path)


# ----------------------------------------------------------------------------- GIFs


def _to_uint8(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return (np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.clip(x, 0, 255).astype(np.uint8)


def _full_sequences(pred, target, n_past, context):
    """Return (pred_full, target) uint8 ``[B, T, H, W, 3]``; context frames are prepended to
    ``pred`` when it holds only the ``T - n_past`` predicted frames."""
    pred = _to_uint8(pred)
    target = _to_uint8(target)
    if target.ndim != 5 or target.shape[-1] != 3:
        raise ValueError(f"write_gif: target must be [T, H, W, 3] frames, got shape {target.shape}")
    t = target.shape[1]
    if not 0 <= n_past <= t:
        raise ValueError(f"write_gif: n_past = {n_past} outside [0, {t}]")
    if pred.shape[1] == t - n_past and n_past > 0:
        ctx = target[:, :n_past] if context is None else _to_uint8(context)
        if ctx.ndim == 4:
            ctx = ctx[None]
        ctx = np.broadcast_to(ctx, (pred.shape[0], n_past, *pred.shape[2:]))
        pred = np.concatenate([ctx, pred], axis=1)
    elif context is not None:
        ctx = _to_uint8(context)
        if ctx.ndim == 4:
            ctx = ctx[None]
        pred = pred.copy()
        pred[:, :n_past] = ctx[:, :n_past]
    if pred.shape != target.shape:
        raise ValueError(
            f"write_gif: pred {pred.shape} must match target {target.shape} "
            f"(or hold only the {t - n_past} predicted frames)"
        )
    return pred, target


def _label_strip(width: int, height: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), HEADER_BG)
    ImageDraw.Draw(img).text((3, max(0, (height - 11) // 2)), text, fill=HEADER_FG)
    return np.asarray(img)


def panel_geometry(h: int, w: int, scale: int, border: int, header: int):
    """Pixel offsets of the two panels of one sequence row, for tests and readers.

    Returns ``dict(pred=(y0, x0), truth=(y0, x0), size=(h*scale, w*scale), border=border,
    header=header)``: the top-left corner of the upscaled prediction / ground-truth image
    inside a row (a row of a grid GIF starts at ``row * row_height``)."""
    ph, pw = h * scale, w * scale
    y0 = header + border
    return {
        "pred": (y0, border),
        "truth": (y0, pw + 3 * border),
        "size": (ph, pw),
        "border": border,
        "header": header,
        "row_height": header + ph + 2 * border,
        "width": 2 * pw + 4 * border,
    }


def compose_frames(pred, target, n_past: int, *, context=None, scale: int = 2, border: int = 3,
                   labels: bool = True) -> np.ndarray:
    """Build the GIF frames ``uint8 [T, rows*row_h, W, 3]`` for sequences ``[B, T, H, W, 3]``.

    Each row is one sequence: prediction (left) beside ground truth (right), each upscaled
    ``scale``× (nearest) inside a ``border``-pixel frame: green on context frames
    (``t < n_past``, the model saw ground truth), red on predicted frames.  With ``labels``
    a white strip above each row reads ``pred | truth  t=k``.  A ``PROGRESS_PX``-pixel bar
    along the bottom grows with t (gray over context frames, black after): it shows where the
    loop is and makes every GIF frame distinct, since Pillow's GIF writer silently merges
    identical consecutive frames (e.g. a static scene), which would change the frame count.
    """
    pred, target = _full_sequences(pred, target, n_past, context)
    b, t, h, w, _ = target.shape
    header = 14 if labels else 0
    g = panel_geometry(h, w, scale, border, header)
    ph, pw = g["size"]
    out = np.full((t, b * g["row_height"] + PROGRESS_PX, g["width"], 3), 255, np.uint8)
    for k in range(t):  # progress bar: distinct lengths as long as width >= T
        n = int(np.ceil((k + 1) * g["width"] / t))
        out[k, -PROGRESS_PX:, :n] = 128 if k < n_past else 0
    for k in range(t):
        color = np.array(CONTEXT_COLOR if k < n_past else PRED_COLOR, np.uint8)
        for r in range(b):
            oy = r * g["row_height"]
            if labels:
                kind = "context" if k < n_past else "predicted"
                text = f"pred | truth   t={k} {kind}" if r == 0 else f"#{r}"
                out[k, oy : oy + header] = _label_strip(g["width"], header, text)
            for name, src in (("pred", pred), ("truth", target)):
                y0, x0 = g[name]
                y0 += oy
                out[k, y0 - border : y0 + ph + border, x0 - border : x0 + pw + border] = color
                img = src[r, k].repeat(scale, axis=0).repeat(scale, axis=1)
                out[k, y0 : y0 + ph, x0 : x0 + pw] = img
    return out


def _write_gif_frames(frames: np.ndarray, path: str, fps: float) -> str:
    import imageio.v2 as imageio

    return _write_atomically(
        path, ".gif", lambda tmp: imageio.mimsave(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    )


def write_gif(pred, target, n_past: int, path: str, fps: float = 4, context=None, *,
              scale: int = 2, labels: bool = True) -> str:
    """Write one sequence as an animated GIF: prediction beside ground truth.

    ``target``: ``[T, H, W, 3]`` ground truth (uint8, or float in [0, 1]).  ``pred``: either
    ``[T, H, W, 3]`` (its first ``n_past`` frames are shown as context) or only the
    ``[T - n_past, H, W, 3]`` predicted frames, in which case the context shown is
    ``context`` (``[n_past, H, W, 3]``) or else ``target[:n_past]``.  Context frames have a
    green border, predicted frames a red one (see :func:`compose_frames`).  Frames are
    upscaled ``scale``× and played at ``fps`` frames per second, looping; the file is written
    atomically.  GIF stores at most 256 colours per frame, so busy images are quantised.
    """
    frames = compose_frames(np.asarray(pred)[None], np.asarray(target)[None], n_past,
                            context=None if context is None else np.asarray(context)[None],
                            scale=scale, labels=labels)
    return _write_gif_frames(frames, path, fps)


def write_strip(pred, target, n_past: int, path: str, context=None, *, scale: int = 2, gap: int = 2) -> str:
    """Write sequences as one still PNG: for each sequence a row of ground-truth frames above a
    row of predicted frames, time running left to right; context frames (``t < n_past``, the
    same in both rows) framed green, predicted frames red.

    ``pred`` / ``target`` / ``context`` as :func:`write_gif` (``[B, T, H, W, 3]``, or the
    ``T - n_past`` predicted frames only).  Frames are upscaled ``scale``x; the file is written
    atomically.
    """
    from PIL import Image

    pred, target = _full_sequences(np.asarray(pred), np.asarray(target), n_past,
                                   None if context is None else np.asarray(context))
    b, t, h, w, _ = target.shape
    ph, pw = h * scale, w * scale
    cell_h, cell_w = ph + 2 * gap, pw + 2 * gap
    out = np.full((b * (2 * cell_h + 2 * gap), t * cell_w, 3), 255, np.uint8)
    for r in range(b):
        for row, src in enumerate((target, pred)):
            oy = r * (2 * cell_h + 2 * gap) + row * cell_h
            for k in range(t):
                ox = k * cell_w
                out[oy : oy + cell_h, ox : ox + cell_w] = CONTEXT_COLOR if k < n_past else PRED_COLOR
                out[oy + gap : oy + gap + ph, ox + gap : ox + gap + pw] = src[r, k].repeat(scale, 0).repeat(scale, 1)
    return _write_atomically(path, ".png", lambda tmp: Image.fromarray(out).save(tmp, format="PNG"))


# ----------------------------------------------------------------------------- labelled rows


def _text_block(width: int, height: int, lines) -> np.ndarray:
    """White ``[height, width, 3]`` with ``lines`` of black text from the top left."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), HEADER_BG)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((3, 2 + 12 * i), line, fill=HEADER_FG)
    return np.asarray(img)


def _wrap(text: str, width_px: int) -> list[str]:
    """``text`` on lines of at most ``width_px`` pixels of the default 6-px font; a word longer
    than a line (a run's name of ``field=value`` settings) is broken, not cut off."""
    return textwrap.wrap(text.replace(",", ", "), width=max(4, (width_px - 6) // 6))


def write_labelled_strip(rows, labels, n_past: int, path: str, *, scale: int = 1, gap: int = 2,
                         label_width: int = 110) -> str:
    """Several videos of one scene as one still PNG: one row each, its label on the left, time
    left to right; context frames (``t < n_past``) framed green, predicted frames red (as
    :func:`write_strip`). ``rows``: uint8 (or float in [0, 1]) ``[T, H, W, 3]`` each, all of one
    shape. Written atomically."""
    from PIL import Image

    rows = [_to_uint8(r) for r in rows]
    if len(rows) != len(labels) or not rows:
        raise ValueError(f"write_labelled_strip: {len(rows)} rows, {len(labels)} labels")
    t, h, w, _ = rows[0].shape
    if any(r.shape != rows[0].shape for r in rows):
        raise ValueError(f"write_labelled_strip: rows of shapes {[r.shape for r in rows]}; expected one shape")
    ph, pw = h * scale, w * scale
    cell_h, cell_w = ph + 2 * gap, pw + 2 * gap
    header = 14
    out = np.full((header + len(rows) * (cell_h + gap), label_width + t * cell_w, 3), 255, np.uint8)
    for k in range(t):
        out[:header, label_width + k * cell_w : label_width + (k + 1) * cell_w] = _label_strip(cell_w, header, f"t={k}")
    for r, (frames, label) in enumerate(zip(rows, labels)):
        oy = header + r * (cell_h + gap)
        out[oy : oy + cell_h, :label_width] = _text_block(label_width, cell_h, _wrap(label, label_width))
        for k in range(t):
            ox = label_width + k * cell_w
            out[oy : oy + cell_h, ox : ox + cell_w] = CONTEXT_COLOR if k < n_past else PRED_COLOR
            out[oy + gap : oy + gap + ph, ox + gap : ox + gap + pw] = frames[k].repeat(scale, 0).repeat(scale, 1)
    return _write_atomically(path, ".png", lambda tmp: Image.fromarray(out).save(tmp, format="PNG"))


#: Frame around each panel of :func:`write_labelled_gif` and the width of its label column, in pixels.
GIF_BORDER, GIF_LABEL_WIDTH = 3, 110


def write_labelled_gif(panels, labels, n_past: int, path: str, *, titles=("prediction", "truth"), fps: float = 4,
                       scale: int = 2) -> str:
    """An animated GIF of several videos of one scene: one row per entry of ``panels`` (a list
    of ``[T, H, W, 3]`` videos, or None for an empty panel), its label on the left, the columns
    headed by ``titles``; every panel framed green on context frames and red on predicted ones,
    with the time bar of :func:`compose_frames` along the bottom. Written atomically."""
    if len(panels) != len(labels) or not panels:
        raise ValueError(f"write_labelled_gif: {len(panels)} rows, {len(labels)} labels")
    videos = [[None if v is None else _to_uint8(v) for v in row] for row in panels]
    first = next(v for row in videos for v in row if v is not None)
    border, label_width = GIF_BORDER, GIF_LABEL_WIDTH
    t, h, w, _ = first.shape
    cols = max(len(row) for row in videos)
    ph, pw = h * scale, w * scale
    cell_h, cell_w = ph + 2 * border, pw + 2 * border
    header = 14
    height = header + len(videos) * (cell_h + border) + PROGRESS_PX
    width = label_width + cols * (cell_w + border)
    out = np.full((t, height, width, 3), 255, np.uint8)
    for c, title in enumerate(list(titles)[:cols]):
        x0 = label_width + c * (cell_w + border)
        out[:, :header, x0 : x0 + cell_w] = _label_strip(cell_w, header, title)
    for k in range(t):
        out[k, :header, :label_width] = _label_strip(label_width, header, f"t={k} {'context' if k < n_past else 'predicted'}")
        n = int(np.ceil((k + 1) * width / t))
        out[k, -PROGRESS_PX:, :n] = 128 if k < n_past else 0
        color = np.array(CONTEXT_COLOR if k < n_past else PRED_COLOR, np.uint8)
        for r, (row, label) in enumerate(zip(videos, labels)):
            oy = header + r * (cell_h + border)
            out[k, oy : oy + cell_h, :label_width] = _text_block(label_width, cell_h, _wrap(label, label_width))
            for c, video in enumerate(row):
                if video is None:
                    continue
                ox = label_width + c * (cell_w + border)
                out[k, oy : oy + cell_h, ox : ox + cell_w] = color
                out[k, oy + border : oy + border + ph, ox + border : ox + border + pw] = video[k].repeat(scale, 0).repeat(scale, 1)
    return _write_gif_frames(out, path, fps)
