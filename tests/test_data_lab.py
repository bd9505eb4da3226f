"""Lab folder reader, packed cache, bad inputs (one-line DataError naming the file), prepare CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from data_support import SEED, assert_one_line_error, copy_set, make_pushbot, run_module
from PIL import Image

from vp_jax.data import cache, pushbot
from vp_jax.data.lab_folders import LabFolders, list_sequences, natural_key, read_sequence
from vp_jax.errors import DataError


@pytest.fixture(scope="module")
def pb_root(tmp_path_factory):
    return make_pushbot(str(tmp_path_factory.mktemp("lab") / "set"))


@pytest.fixture
def bad_root(pb_root, tmp_path):
    """A private copy of the set to damage."""
    return copy_set(pb_root, str(tmp_path / "copy"))


def first_seq(root, split="test"):
    return list_sequences(root, split)[0]


def test_reader_returns_what_pushbot_rendered(pb_root):
    folders = LabFolders(pb_root, "train")
    for i in (0, 7):
        frames, cond = folders[i]
        f_ref, c_ref, _ = pushbot.generate_sequence(SEED, "train", i)
        assert frames.dtype == np.uint8 and frames.shape == (30, 64, 64, 3)
        assert cond.dtype == np.float32 and cond.shape == (30, 7)
        np.testing.assert_array_equal(frames, f_ref)  # PNG round trip is lossless
        np.testing.assert_allclose(cond, c_ref, atol=1e-6)  # CSV keeps 6 decimals


def test_natural_order():
    names = ["traj_256_to_511.tfrecords", "traj_0_to_255.tfrecords", "10", "9", "b", "a2", "a10"]
    assert sorted(names, key=natural_key) == ["9", "10", "a2", "a10", "b", "traj_0_to_255.tfrecords", "traj_256_to_511.tfrecords"]


def test_cache_equals_reader_and_verifies(pb_root, tmp_path):
    out = str(tmp_path / "cache")
    manifest = cache.build_cache("pushbot", pb_root, "train", out)
    frames, cond, m = cache.open_cache(out)
    assert isinstance(frames, np.memmap) and frames.dtype == np.uint8 and frames.shape == (10, 30, 64, 64, 3)
    assert cond.dtype == np.float32 and cond.shape == (10, 30, 7)
    assert m == manifest and m["count"] == 10 and m["skipped"] == 0 and m["format_version"] == cache.FORMAT_VERSION
    folders = LabFolders(pb_root, "train")
    for i in range(len(folders)):
        f, c = folders[i]
        np.testing.assert_array_equal(frames[i], f)
        np.testing.assert_array_equal(cond[i], c)
    assert cache.verify_cache(out)["count"] == 10
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # no temporary folder left behind
    # A flipped byte fails verification; a truncated file fails opening.
    path = os.path.join(out, "frames.npy")
    with open(path, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DataError, match="frames.npy: SHA-256"):
        cache.verify_cache(out)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    with pytest.raises(DataError, match="frames.npy"):
        cache.open_cache(out)


def test_incomplete_cache_is_not_accepted(tmp_path):
    d = tmp_path / "half"
    d.mkdir()
    np.save(d / "frames.npy", np.zeros((1, 30, 64, 64, 3), np.uint8))
    with pytest.raises(DataError, match="manifest.json: missing"):
        cache.open_cache(str(d))
    (d / "manifest.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(DataError, match="format version 0"):
        cache.open_cache(str(d))


@pytest.mark.parametrize("count", [9, 99_999])  # same header length / header shrinks (copy path)
def test_shrink_npy(tmp_path, count):
    n = 10 if count == 9 else 100_000
    path = str(tmp_path / "a.npy")
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3))
    arr[:] = (np.arange(n)[:, None] % 251).astype(np.uint8)
    arr.flush()
    del arr
    cache.shrink_npy(path, count)
    out = np.load(path)
    assert out.shape == (count, 3)
    np.testing.assert_array_equal(out[:, 0], (np.arange(count) % 251).astype(np.uint8))


# ----------------------------------------------------------------------------- bad inputs


def _damage_png(seq, how):
    path = os.path.join(seq, "5.png")
    if how == "missing":
        os.remove(path)
    elif how == "garbage":
        with open(path, "wb") as f:
            f.write(b"this is not a png")
    elif how == "truncated":
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif how == "size":
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(path)
    elif how == "rgba":
        Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(path)
    elif how == "gray":
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "how, expect",
    [
        ("missing", "5.png: missing \\(expected frames 0.png ... 29.png\\)"),
        ("garbage", "not a readable PNG"),
        ("truncated", "not a readable PNG"),
        ("size", "expected 64x64 pixels, got 64x32"),
        ("rgba", "expected 3 channels \\(RGB\\), got 4"),
        ("gray", "expected 3 channels \\(RGB\\), got 1"),
    ],
)
def test_bad_png(bad_root, how, expect):
    seq = first_seq(bad_root)
    path = _damage_png(seq, how)
    with pytest.raises(DataError, match=expect) as err:
        read_sequence(seq)
    msg = str(err.value)
    assert path in msg and "\n" not in msg


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("actions.csv", "0,0,0,0\n" * 29, "expected 30 rows x 4 columns, got 29 rows"),
        ("actions.csv", "0,0,0,0\n" * 31, "got 31 rows"),
        ("actions.csv", "0,0,0\n" * 30, "line 1: expected 4 comma-separated numbers, got 3"),
        ("endeffector_positions.csv", "0,0,0\n" * 10 + "0,abc,0\n" + "0,0,0\n" * 19, "line 11: 'abc' is not a number"),
        ("endeffector_positions.csv", "0,0,0\n" * 3 + "0,nan,0\n" + "0,0,0\n" * 26, "line 4: 'nan' is not a finite"),
        ("endeffector_positions.csv", None, "missing"),
    ],
)
def test_bad_csv(bad_root, name, content, expect):
    seq = first_seq(bad_root)
    path = os.path.join(seq, name)
    if content is None:
        os.remove(path)
    else:
        with open(path, "w") as f:
            f.write(content)
    with pytest.raises(DataError, match=expect) as err:
        read_sequence(seq)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_missing_split_root_and_empty_folders(bad_root, tmp_path):
    with pytest.raises(DataError, match="split folder not found") as err:
        list_sequences(str(tmp_path), "train")
    assert os.path.join(str(tmp_path), "train") in str(err.value)
    with pytest.raises(DataError, match="data root not found"):
        list_sequences(str(tmp_path / "nowhere"), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no sequences found"):
        list_sequences(str(tmp_path), "train")
    with pytest.raises(DataError, match="expected one of"):
        list_sequences(str(tmp_path), "valid")
    # An empty sequence folder: its CSV is missing.
    empty = os.path.join(bad_root, "test", "pushbot_test_000", "99")
    os.makedirs(empty)
    with pytest.raises(DataError, match="actions.csv: missing") as err:
        read_sequence(empty)
    assert empty in str(err.value)


def test_fewer_frames_than_needed(bad_root):
    seq = first_seq(bad_root)
    with pytest.raises(DataError, match=r"30.png: missing: the sequence has only 30 frames, 32 needed"):
        # Ask for more frames than the folder has (CSVs made to match so the frame check fires).
        for name, cols in (("actions.csv", 4), ("endeffector_positions.csv", 3)):
            with open(os.path.join(seq, name), "w") as f:
                f.write(("0," * (cols - 1) + "0\n") * 32)
        read_sequence(seq, num_frames=32)


def test_skip_bad_counts_and_strict_mode_stops(bad_root, tmp_path):
    seqs = list_sequences(bad_root, "train")
    _damage_png(seqs[2], "garbage")
    os.remove(os.path.join(seqs[5], "actions.csv"))
    with pytest.raises(DataError, match="5.png: not a readable PNG"):
        cache.build_cache("lab", bad_root, "train", str(tmp_path / "strict"))
    assert not os.path.exists(tmp_path / "strict")
    m = cache.build_cache("lab", bad_root, "train", str(tmp_path / "lenient"), cache.Reading(skip_bad=True))
    assert m["count"] == len(seqs) - 2 and m["skipped"] == 2
    assert "5.png" in m["skipped_examples"][0] and "actions.csv" in m["skipped_examples"][1]
    frames, cond, _ = cache.open_cache(str(tmp_path / "lenient"))
    good = [s for i, s in enumerate(seqs) if i not in (2, 5)]
    for i in (0, 2, 7):
        f, c = read_sequence(good[i])
        np.testing.assert_array_equal(frames[i], f)
        np.testing.assert_array_equal(cond[i], c)


def test_prepare_cli(pb_root, bad_root, tmp_path):
    out = str(tmp_path / "c")
    proc = run_module("vp_jax.data.prepare", "--source", "lab", "--root", pb_root, "--split", "validate", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "3 sequences" in proc.stdout and cache.open_cache(out)[2]["count"] == 3
    proc = run_module("vp_jax.data.prepare", "--verify", out)
    assert proc.returncode == 0 and "ok" in proc.stdout
    # Bad data: exit status 2, one line naming the file, no traceback, no cache.
    seq = first_seq(bad_root)
    path = _damage_png(seq, "size")
    proc = run_module("vp_jax.data.prepare", "--source", "lab", "--root", bad_root, "--split", "test", "--out", out + "2")
    assert_one_line_error(proc, path, "64x64")
    assert not os.path.exists(out + "2")
    proc = run_module("vp_jax.data.prepare", "--source", "lab", "--root", str(tmp_path / "none"), "--split", "test", "--out", out + "3")
    assert_one_line_error(proc, str(tmp_path / "none"))


def test_cache_never_replaces_a_foreign_folder(pb_root, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="is not a vp_jax cache"):
        cache.build_cache("lab", pb_root, "test", str(foreign))
    assert (foreign / "thesis.tex").read_text() == "precious"
    # An existing cache is replaced only by a complete new one.
    out = str(tmp_path / "c")
    cache.build_cache("lab", pb_root, "test", out)
    cache.build_cache("lab", pb_root, "validate", out)
    assert cache.open_cache(out)[2]["split"] == "validate"
    assert sorted(os.listdir(tmp_path)) == ["c", "mine"]
