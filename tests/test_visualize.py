"""visualize.py: plots decode as PNGs, GIFs round-trip through imageio."""

import os

import imageio.v3 as iio
import numpy as np
import pytest

from vp_jax.errors import DataError
from vp_jax.report import visualize

CSV_HEADER = "step,epoch,loss,mse,kl,beta,tfr,lr,val_psnr,seconds,rss_mb\n"


def _write_csv(path, n=6, val_every=2):
    rows = []
    for e in range(n):
        val = f"{20 + e * 0.5:.3f}" if e % val_every == val_every - 1 else ""
        rows.append(f"{(e + 1) * 600},{e},{0.05 / (e + 1)},{0.01 / (e + 1)},{0.5 * e},{min(1, e / 3)},1.0,0.002,{val},12.5,900")
    path.write_text(CSV_HEADER + "\n".join(rows) + "\n")
    return str(path)


def _assert_png(path):
    assert os.path.isfile(path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = iio.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_training_curves_pngs(tmp_path):
    csv = _write_csv(tmp_path / "metrics.csv")
    out = tmp_path / "plots"
    written = visualize.plot_training_curves(csv, str(out))
    assert sorted(os.path.basename(p) for p in written) == ["loss.png", "schedules.png", "val_psnr.png"]
    for p in written:
        _assert_png(p)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]  # no temp files left


def test_training_curves_all_nan_val_and_missing_columns(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,epoch,loss,mse,kl,val_psnr\n600,0,0.1,0.01,0.0,\n1200,1,0.08,0.009,nan,\n")
    for f in visualize.plot_training_curves(str(p), str(tmp_path)):
        _assert_png(f)


def test_training_curves_bad_csv(tmp_path):
    with pytest.raises(DataError, match="missing.csv"):
        visualize.plot_training_curves(str(tmp_path / "missing.csv"), str(tmp_path))
    p = tmp_path / "empty.csv"
    p.write_text("")
    with pytest.raises(DataError, match="empty.csv"):
        visualize.plot_training_curves(str(p), str(tmp_path))


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, by file name, captured before they are written."""
    captured = {}
    save = visualize.save_fig

    def keep(fig, path):
        captured[os.path.basename(path)] = [
            {
                "title": ax.get_title(),
                "ylabel": ax.get_ylabel(),
                "yscale": ax.get_yscale(),
                "lines": {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
                          for ln in ax.get_lines() if not ln.get_label().startswith("_")},
                "unlabelled": [np.asarray(ln.get_ydata(), float) for ln in ax.get_lines() if ln.get_label().startswith("_")],
                "xs": [np.asarray(ln.get_xdata(), float) for ln in ax.get_lines()],
                "texts": [t.get_text() for t in ax.texts],
            }
            for ax in fig.axes
        ]
        return save(fig, path)

    monkeypatch.setattr(visualize, "save_fig", keep)
    return captured


def test_training_curves_plot_the_csv_values(tmp_path, figures):
    """Each panel draws its CSV column against the epoch (validation only where it ran), the best
    validation PSNR is annotated, and a column spanning more than a factor 20 goes on a log axis."""
    import pandas as pd

    csv = _write_csv(tmp_path / "metrics.csv", n=8, val_every=3)
    df = pd.read_csv(csv)
    visualize.plot_training_curves(csv, str(tmp_path / "plots"))
    loss, mse, kl = figures["loss.png"]
    np.testing.assert_allclose(loss["unlabelled"][0], df["loss"])
    np.testing.assert_array_equal(loss["xs"][0], np.arange(8))  # one row per epoch: the epoch axis
    np.testing.assert_allclose(mse["unlabelled"][0], df["mse"])
    np.testing.assert_allclose(kl["unlabelled"][0], df["kl"])
    assert loss["yscale"] == "linear"  # 0.05 .. 0.00625: a factor 8
    sched, lr = figures["schedules.png"]
    np.testing.assert_allclose(sched["lines"]["β (KL weight)"][1], df["beta"])
    np.testing.assert_allclose(sched["lines"]["teacher forcing ratio"][1], df["tfr"])
    val, sens = figures["val_psnr.png"]
    vx, vy = val["lines"]["model (all pixels)"]
    ran = df["val_psnr"].notna()
    np.testing.assert_allclose(vx, df.loc[ran, "epoch"])
    np.testing.assert_allclose(vy, df.loc[ran, "val_psnr"])
    assert list(vx) == [2, 5]
    assert val["texts"] == [f"best {df['val_psnr'].max():.2f} dB @ epoch 5"]
    assert sens["texts"] == ["no action sensitivity yet"]

    spread = tmp_path / "spread.csv"  # KL over five orders of magnitude: log axis
    spread.write_text("epoch,loss,mse,kl\n0,1,1,1e-5\n1,1,1,1e-3\n2,1,1,1\n")
    visualize.plot_training_curves(str(spread), str(tmp_path / "plots2"))
    assert [ax["yscale"] for ax in figures["loss.png"]] == ["linear", "linear", "log"]


def test_per_frame_curves_are_the_metrics(tmp_path, figures):
    """One curve per entry on frames n_past.., multi-sample arrays averaged over samples, the mean
    in the legend; a metric nobody has gets a note."""
    t = 10
    model = 25 - 0.3 * np.arange(t)
    best = np.stack([model + 1, model + 3])  # [N, T]: averaged to model + 2
    m = {
        "n_past": 2,
        "model": {"psnr_per_frame": list(model), "ssim_per_frame": list(0.9 - 0.01 * np.arange(t))},
        "baseline_copy_last": {"psnr_per_frame": [None] + list(22 - 0.5 * np.arange(1, t))},
        "best_of_n": {"psnr_per_frame": best},
        "latent": {"diversity": {"uncertain_per_frame": list(0.01 * np.arange(t)), "elsewhere_per_frame": [None] * t}},
    }
    visualize.plot_per_frame(m, str(tmp_path / "per_frame.png"))
    psnr, moving, ssim, spread = figures["per_frame.png"]
    # The samples' spread per frame: the pixels chance decides; "elsewhere" has no value and no curve.
    assert list(spread["lines"]) == ["pixels chance decides"]
    np.testing.assert_allclose(spread["lines"]["pixels chance decides"][1], 0.01 * np.arange(t))
    lines = psnr["lines"]
    assert sorted(lines) == sorted([f"model (mean {model.mean():.3g})", f"best_of_n (mean {model.mean() + 2:.3g})",
                                    f"baseline_copy_last (mean {np.mean(22 - 0.5 * np.arange(1, t)):.3g})"])
    x, y = lines[f"model (mean {model.mean():.3g})"]
    np.testing.assert_array_equal(x, np.arange(2, 2 + t))
    np.testing.assert_allclose(y, model)
    np.testing.assert_allclose(lines[f"best_of_n (mean {model.mean() + 2:.3g})"][1], model + 2)
    assert moving["texts"] == ["no psnr_moving per frame"] and not moving["lines"]
    assert len(ssim["lines"]) == 1


def test_plot_per_frame(tmp_path):
    t = 10
    m = {
        "n_past": 2,
        "model": {"psnr_per_frame": list(25 - 0.3 * np.arange(t)), "ssim_per_frame": list(0.9 - 0.01 * np.arange(t))},
        "baseline_copy_last": {"psnr_per_frame": list(22 - 0.5 * np.arange(t)), "ssim_per_frame": list(0.8 - 0.02 * np.arange(t))},
        "best_of_n": {"psnr_per_frame": np.full((3, t), 26.0), "ssim_per_frame": np.full((3, t), 0.92)},
        "mean_of_n": {"psnr_per_frame": np.full(t, 24.0)},  # no SSIM: still fine
    }
    _assert_png(visualize.plot_per_frame(m, str(tmp_path / "per_frame.png")))
    _assert_png(visualize.plot_per_frame({"psnr_per_frame": np.arange(t)}, str(tmp_path / "flat.png"), n_past=2))


def _frames(rng, t, h=16, w=16, levels=4):
    """Few distinct colours, so GIF palette quantisation is lossless."""
    return (rng.integers(0, levels, (t, h, w, 3)) * (255 // (levels - 1))).astype(np.uint8)


def _panels(frame, g, row=0):
    ph, pw = g["size"]
    out = {}
    for name in ("pred", "truth"):
        y0, x0 = g[name]
        y0 += row * g["row_height"]
        out[name] = frame[y0 : y0 + ph, x0 : x0 + pw, :3]
    return out


def _down(img, scale):
    return img[::scale, ::scale]


@pytest.mark.parametrize("labels", [True, False])
def test_gif_round_trip(tmp_path, labels):
    rng = np.random.default_rng(0)
    t, n_past, scale = 6, 2, 2
    target = _frames(rng, t)
    pred = _frames(rng, t - n_past)  # predictions only: context comes from target
    path = str(tmp_path / "seq.gif")
    visualize.write_gif(pred, target, n_past, path, fps=4, scale=scale, labels=labels)
    back = iio.imread(path, index=None)
    g = visualize.panel_geometry(16, 16, scale, 3, 14 if labels else 0)
    assert back.shape[0] == t
    assert back.shape[1:3] == (g["row_height"] + visualize.PROGRESS_PX, g["width"])
    for k in range(t):
        p = _panels(back[k], g)
        np.testing.assert_array_equal(_down(p["truth"], scale), target[k])
        np.testing.assert_array_equal(_down(p["pred"], scale), target[k] if k < n_past else pred[k - n_past])
        # border colour: green on context frames, red on predicted ones (left and right panel)
        for name in ("pred", "truth"):
            y0, x0 = g[name]
            border_px = back[k, y0 - 1, x0 + 5, :3]
            want = visualize.CONTEXT_COLOR if k < n_past else visualize.PRED_COLOR
            np.testing.assert_array_equal(border_px, want)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_gif_float_input_identical_frames_and_context(tmp_path):
    # A static scene (all frames equal) must still give T GIF frames.
    t, n_past = 5, 2
    target = np.zeros((t, 16, 16, 3), np.float32)
    target[:, 4:8, 4:8, 0] = 1.0
    ctx = np.ones((n_past, 16, 16, 3), np.float32)
    path = str(tmp_path / "static.gif")
    visualize.write_gif(target, target, n_past, path, context=ctx, labels=False)
    back = iio.imread(path, index=None)
    assert back.shape[0] == t
    g = visualize.panel_geometry(16, 16, 2, 3, 0)
    p0 = _panels(back[0], g)
    assert (p0["pred"] == 255).all()  # the explicit context replaced pred's first frames
    p4 = _panels(back[4], g)
    np.testing.assert_array_equal(_down(p4["pred"], 2), (target[4] * 255).astype(np.uint8))


def test_gif_shape_errors(tmp_path):
    with pytest.raises(ValueError, match="match target"):
        visualize.write_gif(np.zeros((3, 8, 8, 3)), np.zeros((6, 8, 8, 3)), 2, str(tmp_path / "x.gif"))


def test_strip_rows_are_truth_then_prediction(tmp_path):
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    pred = rng.integers(0, 256, (2, 2, 8, 8, 3), dtype=np.uint8)  # frames 2, 3 only
    path = visualize.write_strip(pred, target, 2, str(tmp_path / "strip.png"), scale=2, gap=1)
    img = iio.imread(path)
    cell_h, cell_w = 16 + 2, 16 + 2
    assert img.shape == (2 * (2 * cell_h + 2), 4 * cell_w, 3)
    for r in range(2):
        for row, want in enumerate((target[r], np.concatenate([target[r, :2], pred[r]]))):
            for k in range(4):
                oy, ox = r * (2 * cell_h + 2) + row * cell_h, k * cell_w
                np.testing.assert_array_equal(img[oy + 1 : oy + 17 : 2, ox + 1 : ox + 17 : 2], want[k])
                border = visualize.CONTEXT_COLOR if k < 2 else visualize.PRED_COLOR
                assert tuple(img[oy, ox]) == border


def test_a_long_run_name_is_wrapped_not_cut_off(tmp_path):
    """A study run's name (``field=value`` settings joined by commas, no spaces) longer than the
    label column goes on as many lines as it needs: ink on each of them, none past the last."""
    name = "train.kl.schedule=cyclical,train.kl.cycles=2"  # 44 characters, 17 fit on a line of 110 px
    frames = np.full((3, 64, 64, 3), 128, np.uint8)
    path = visualize.write_labelled_strip([frames], [name], 1, str(tmp_path / "s.png"), label_width=110)
    label = iio.imread(path)[14:14 + 68, :110].min(axis=-1) < 128  # the row's label cell, dark = text
    ink_per_line = [label[2 + 12 * i : 2 + 12 * (i + 1)].sum() for i in range(5)]
    assert all(n > 20 for n in ink_per_line[:3]) and ink_per_line[3] == ink_per_line[4] == 0, ink_per_line
