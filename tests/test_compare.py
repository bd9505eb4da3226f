"""compare.py: the table names exactly the differing settings; bad dirs exit 2 with one line."""

import os
import subprocess
import sys

import imageio.v3 as iio
import ml_collections
import pytest

from vp_jax.config import flat_fields, save_config_json
from vp_jax.errors import DataError, VPError
from vp_jax.tools import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(schedule="cyclical"):
    return ml_collections.ConfigDict(
        {
            "seed": 1,
            "n_past": 2,
            "n_future": 10,
            "model": {"enc_widths": (64, 128, 256, 512), "g_dim": 128, "learned_prior": True},
            "train": {"lr": 0.002, "kl": {"schedule": schedule, "cycles": 3, "ratio": 0.5}},
        }
    )


def _workdir(root, name, schedule, val_psnrs, final_loss, measures=False):
    """A workdir whose metrics.csv has the given validation PSNRs; with ``measures`` also the other
    validation columns, each epoch e holding moving = psnr - 8, sensitivity = e, posterior = psnr + 1."""
    d = root / name
    d.mkdir()
    save_config_json(_config(schedule), str(d / "config.json"))
    extra = ",val_psnr_moving,val_action_sensitivity_db,val_posterior_psnr,val_copy_psnr" if measures else ""
    lines = ["step,epoch,loss,mse,kl,beta,tfr,lr,val_psnr" + extra + ",seconds"]
    for e, v in enumerate(val_psnrs):
        loss = final_loss if e == len(val_psnrs) - 1 else final_loss + 1.0
        more = "" if not measures else ("," * 4 if v is None else f",{v - 8},{e},{v + 1},20.0")
        lines.append(f"{(e + 1) * 10},{e + 1},{loss},0.01,1.0,0.5,1.0,0.002,{'' if v is None else v}{more},3.0")
    (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    return str(d)


@pytest.fixture
def two_runs(tmp_path):
    a = _workdir(tmp_path, "run_a", "cyclical", [20.0, None, 24.5, 24.0], 0.031, measures=True)
    b = _workdir(tmp_path, "run_b", "monotonic", [21.0, 22.0, None, 23.25], 0.042)
    return a, b


def test_table_names_only_the_differing_setting(two_runs, tmp_path):
    out = str(tmp_path / "cmp.png")
    table = compare.compare(list(two_runs), out)
    measures = list(compare.BEST_EPOCH_COLUMNS.values())
    fixed = ("run", "best_val_psnr", "best_epoch", *measures, "final_loss", "epochs")
    settings = [c for c in table.columns if c not in fixed]
    assert settings == ["train.kl.schedule"]
    # run_a's measures come from its best epoch (3); run_b's CSV predates them
    assert table.loc[0, measures[:4]].tolist() == [16.5, 2.0, 25.5, 20.0]
    assert table.loc[0, measures[4:]].isna().all()  # the latent's measures: not in this CSV
    assert table.loc[1, measures].isna().all()
    assert list(table["run"]) == ["run_a", "run_b"]
    assert list(table["train.kl.schedule"]) == ["cyclical", "monotonic"]
    assert list(table["best_val_psnr"]) == [24.5, 23.25]
    assert list(table["best_epoch"]) == [3, 4]
    assert list(table["final_loss"]) == [0.031, 0.042]
    assert list(table["epochs"]) == [4, 4]  # epochs run (metrics.csv counts from 1)
    assert iio.imread(out).ndim == 3


def test_differing_settings_flatten_and_numbers():
    a = flat_fields({"a": {"b": 1, "c": [1, 2]}, "d": True})
    assert a == {"a.b": 1, "a.c": (1, 2), "d": True}
    b = {"a.b": 1.0, "a.c": (1, 3), "d": True, "e": "x"}
    assert compare.differing_settings([a, b]) == ["a.c", "e"]


def test_cli_prints_table_and_writes_plot(two_runs, tmp_path):
    out = tmp_path / "plot.png"
    r = subprocess.run(
        [sys.executable, "-m", "vp_jax.tools.compare", *two_runs, "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "train.kl.schedule" in r.stdout and "24.5" in r.stdout and "23.25" in r.stdout
    assert "seed" not in r.stdout
    assert out.is_file()


def test_cli_missing_dir_exit_2_one_line(two_runs, tmp_path):
    missing = str(tmp_path / "nope")
    r = subprocess.run(
        [sys.executable, "-m", "vp_jax.tools.compare", two_runs[0], missing, "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "x.png").exists()


def test_invalid_workdirs(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    with pytest.raises(VPError, match="config.json"):
        compare.load_run(str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(VPError, match="config.json"):
        compare.load_run(str(d))
    (d / "config.json").write_text("{}")
    with pytest.raises(DataError, match="metrics.csv"):
        compare.load_run(str(d))
    (d / "metrics.csv").write_text("")
    with pytest.raises(DataError, match="metrics.csv"):
        compare.load_run(str(d))
