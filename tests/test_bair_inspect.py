"""python -m vp_jax.data.inspect on pushbot, the lab layout and the BAIR TFRecords: counts,
condition statistics against the data's own generators, the contact sheet, the first problem."""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
import pytest
from bair_support import expected, write_release
from data_support import COUNTS, SEED, make_pushbot

from vp_jax.data import bair, pushbot
from vp_jax.data.inspect import COLUMNS, detect_source, inspect, main
from vp_jax.errors import DataError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(str(tmp_path_factory.mktemp("bair")))


def column_stats(cond: np.ndarray) -> dict:
    c = cond.reshape(-1, 7).astype(np.float64)
    return dict(min=c.min(0), max=c.max(0), mean=c.mean(0), std=c.std(0))


def check_columns(report: dict, cond: np.ndarray, atol: float) -> None:
    want = column_stats(cond)
    assert [(c["feature"], c["column"]) for c in report["columns"]] == [(f, c) for f, c, _ in COLUMNS]
    for key in ("min", "max", "mean", "std"):
        np.testing.assert_allclose([c[key] for c in report["columns"]], want[key], atol=atol, rtol=0)


def test_bair_tfrecords_and_their_conversion(release, tmp_path):
    all_cond = np.concatenate([expected(s)[1] for s in ("train", "validate", "test")])
    report = inspect(release)
    assert report["source"] == "bair" and report["camera"] == "image_aux1" and report["first_problem"] is None
    counts = {s: (v["sequences"], v["read"], v["frames"], v["bad"]) for s, v in report["splits"].items()}
    assert counts == {"train": (6, 6, 30, 0), "validate": (2, 2, 30, 0), "test": (2, 2, 30, 0)}
    check_columns(report, all_cond, atol=1e-9)
    assert report["columns"][3]["meaning"] == "gripper command" and "robot frame" in report["columns"][4]["unit"]

    out = str(tmp_path / "lab")
    bair.convert(bair.DirRelease(release), out, progress=False)
    lab = inspect(out)
    assert lab["source"] == "lab" and lab["camera"] == "image_aux1"
    assert {s: (v["sequences"], v["bad"]) for s, v in lab["splits"].items()} == {s: (c[0], 0) for s, c in counts.items()}
    assert lab["columns"] == report["columns"]  # the conversion keeps every condition value

    limited = inspect(release, limit=2, sheet_sequences=2, camera="image_main")
    assert [v["read"] for v in limited["splits"].values()] == [2, 2, 2]
    np.testing.assert_array_equal(np.stack(limited["sheet"]), expected("train", "image_main")[0][:2])


def test_pushbot_statistics_match_the_generator(tmp_path):
    root = make_pushbot(str(tmp_path / "pb"))
    assert detect_source(root) == "pushbot"
    report = inspect(root)
    assert {s: v["sequences"] for s, v in report["splits"].items()} == COUNTS
    cond = np.stack([pushbot.generate_sequence(SEED, s, i)[1] for s, n in COUNTS.items() for i in range(n)])
    check_columns(report, cond, atol=2e-6)  # the CSVs keep 6 decimals
    assert report["columns"][0]["unit"] == "0.05 world units/frame"


def test_cli_sheet_and_first_problem(release, tmp_path, capsys):
    sheet = str(tmp_path / "sheet.png")
    main([release, "--sheet", sheet, "--sheet-sequences", "3"])
    out = capsys.readouterr().out
    assert "no problems found" in out and "endeffector_pos z" in out and "wrote" in out
    img = iio.imread(sheet)
    frames = expected("train")[0]
    assert img.shape == (3 * 66 * 2, 10 * 66 * 2, 3)
    for row, col, t in ((0, 0, 0), (2, 9, 27)):  # sequence `row`, frame t = 3 * col, 2x enlarged
        tile = img[row * 132 + 2 : row * 132 + 130, col * 132 + 2 : col * 132 + 130]
        np.testing.assert_array_equal(tile, np.repeat(np.repeat(frames[row, t], 2, 0), 2, 1))

    damaged = write_release(str(tmp_path / "bad"), "nan")
    with pytest.raises(SystemExit) as exit_:
        main([damaged])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "first problem: " in captured.out
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("error: " + os.path.join(damaged, "train", "traj_512_to_767.tfrecords"))
    assert "record 1: feature '2/action'" in err and "(1 bad sequence in what was read)" in err


def test_unknown_folder_is_one_line(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="not a data set vp_jax reads"):
        detect_source(str(tmp_path / "x"))
    with pytest.raises(DataError, match="not found"):
        inspect(str(tmp_path / "nowhere"))
