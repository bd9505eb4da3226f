"""The BAIR release read without TensorFlow: TFRecord framing and CRCs, conversion to the lab
layout (folder and tar stream, resumed after a crash), damaged records, data.source='bair'."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from bair_support import (
    DAMAGED_FILE,
    LAYOUT,
    SPLIT_FILES,
    datum,
    expected,
    make_tar,
    read_tree,
    sequence,
    write_release,
)
from data_support import assert_one_line_error, data_config, run_module
from tfrecord.writer import TFRecordWriter

from vp_jax.data import bair, cache, records
from vp_jax.data.lab_folders import LabFolders
from vp_jax.data.pipeline import open_split
from vp_jax.errors import DataError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A sound release: softmotion30_44k/{train (3 files), test (1 file)}, 10 sequences."""
    return write_release(str(tmp_path_factory.mktemp("bair")))


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    """The release converted from its folder (the reference output)."""
    out = str(tmp_path_factory.mktemp("conv") / "out")
    bair.convert(bair.DirRelease(release), out, progress=False)
    return out


# ----------------------------------------------------------------------------- framing


def test_crc_matches_the_standard_and_an_independent_writer():
    # CRC-32C check value of the standard (RFC 3720), then TFRecord's masking against tfrecord's own.
    from google_crc32c import value

    assert value(b"123456789") == 0xE3069283
    rng = np.random.default_rng(0)
    for n in (0, 1, 8, 1000, 12345):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert records.masked_crc32c(data).to_bytes(4, "little") == TFRecordWriter.masked_crc(data)


def test_records_written_by_the_tfrecord_package_read_back(tmp_path):
    seqs = [sequence("train", "traj_0_to_255.tfrecords", i) for i in range(3)]
    payloads = [TFRecordWriter.serialize_tf_example(d) for d in [*map(datum, seqs), {}]]  # and an empty Example
    path = str(tmp_path / "a.tfrecords")
    writer = TFRecordWriter(path)
    for s in seqs:
        writer.write(datum(s))
    writer.write({})
    writer.close()
    with open(path, "rb") as f:
        got = list(records.read_records(f, path))
    assert [i for i, _ in got] == [0, 1, 2, 3]
    assert [bytes(d) for _, d in got] == payloads
    assert records.count_records(path) == 4
    # The same bytes through a stream that returns short reads (as a tar member or a pipe may).
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data, self.pos = data, 0

        def readable(self):
            return True

        def read(self, n=-1):
            n = min(n if n >= 0 else len(self.data), 7, len(self.data) - self.pos)
            out = self.data[self.pos : self.pos + n]
            self.pos += n
            return out

    assert [bytes(d) for _, d in records.read_records(Trickle(open(path, "rb").read()), path)] == payloads


def test_reader_returns_each_split_exactly(release):
    for split in ("train", "validate", "test"):
        reader = bair.BairRecords(release, split)
        assert [os.path.basename(p) for p in reader.paths] == [f for _, f in SPLIT_FILES[split]]
        got = [value for _, value in reader.iter_sequences()]
        frames, cond = expected(split)
        assert len(reader) == len(got) == len(frames)
        np.testing.assert_array_equal(np.stack([f for f, _ in got]), frames)
        np.testing.assert_array_equal(np.stack([c for _, c in got]), cond)
    main = [f for _, (f, _) in bair.BairRecords(os.path.dirname(release), "test", "image_main").iter_sequences()]
    np.testing.assert_array_equal(np.stack(main), expected("test", "image_main")[0])  # root above works too
    with pytest.raises(DataError, match="camera 'image_side'"):
        bair.BairRecords(release, "test", "image_side")


# ----------------------------------------------------------------------------- conversion


def test_conversion_reproduces_pixels_and_conditions_exactly(converted):
    for split in ("train", "validate", "test"):
        folders = LabFolders(converted, split)
        frames, cond = expected(split)
        assert len(folders) == len(frames)
        for i in range(len(folders)):
            f, c = folders[i]
            np.testing.assert_array_equal(f, frames[i])
            np.testing.assert_array_equal(c, cond[i])  # float32 values come back bit for bit
    manifest = bair.verify(converted)
    assert {s: v["sequences"] for s, v in manifest["splits"].items()} == {"train": 6, "validate": 2, "test": 2}
    assert manifest["camera"] == "image_aux1" and manifest["skipped"] == 0
    assert sorted(os.listdir(converted)) == ["manifest.json", "test", "train", "validate"]
    assert not os.path.exists(converted + ".partial")


def test_verify_notices_a_changed_file(converted, tmp_path):
    out = shutil.copytree(converted, str(tmp_path / "copy"))
    path = os.path.join(out, "validate", "traj_256_to_511.tfrecords", "1", "actions.csv")
    text = open(path).read()
    open(path, "w").write(text.replace("e", "E", 1) if "e" in text else text + "\n")
    with pytest.raises(DataError, match="validate/traj_256_to_511.tfrecords: contents differ"):
        bair.verify(out)


def test_tar_stream_gives_the_same_bytes_as_the_folder(release, converted, tmp_path):
    tar = make_tar(release, str(tmp_path / "bair.tar"))
    out = str(tmp_path / "from_tar")
    bair.convert(bair.TarRelease(tar), out, progress=False)
    assert read_tree(out) == read_tree(converted)


def test_interrupted_conversion_resumes_to_the_same_bytes(release, converted, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    real, calls = bair._write_one, []

    def crash_after_four(*args):
        calls.append(args[1])
        if len(calls) > 4:  # train/traj_0_to_255 (3 sequences) is done, train/traj_256_to_511 half-written
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(bair, "_write_one", crash_after_four)
    with pytest.raises(RuntimeError, match="simulated crash"):
        bair.convert(bair.DirRelease(release), out, workers=1, progress=False)
    assert not os.path.exists(out)
    work = out + ".partial"
    assert os.listdir(os.path.join(work, "train")) == ["traj_0_to_255.tfrecords"]
    assert os.listdir(os.path.join(work, "validate")) == [".traj_256_to_511.tfrecords.tmp"]
    assert os.listdir(os.path.join(work, "validate", ".traj_256_to_511.tfrecords.tmp")) == ["0"]  # half-written
    done_before = os.stat(os.path.join(work, "train", "traj_0_to_255.tfrecords", "0", "0.png")).st_mtime_ns

    calls.clear()
    monkeypatch.setattr(bair, "_write_one", lambda *args: calls.append(args[1]) or real(*args))
    bair.convert(bair.DirRelease(release), out, progress=False)
    assert len(calls) == 10 - 3  # the finished file is kept, the half-written one redone
    assert os.stat(os.path.join(out, "train", "traj_0_to_255.tfrecords", "0", "0.png")).st_mtime_ns == done_before
    assert read_tree(out) == read_tree(converted)
    assert not os.path.exists(work)
    # A finished conversion is left alone; another camera into it is refused.
    assert bair.convert(bair.DirRelease(release), out, progress=False)["camera"] == "image_aux1"
    with pytest.raises(DataError, match="converted already with camera 'image_aux1'"):
        bair.convert(bair.DirRelease(release), out, camera="image_main", progress=False)


def test_output_folder_that_is_not_a_conversion_is_refused(release, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="is not a finished BAIR conversion"):
        bair.convert(bair.DirRelease(release), str(mine), progress=False)
    assert (mine / "notes.txt").read_text() == "keep"
    with pytest.raises(DataError, match="no TFRecords found"):
        bair.DirRelease(str(tmp_path))


# ----------------------------------------------------------------------------- damaged input

DAMAGE = [
    ("crc", "record 1: data CRC mismatch"),
    ("length_crc", "record 1: length CRC mismatch"),
    ("truncated", "record 1: truncated"),
    ("missing", "record 1: missing feature '7/endeffector_pos'"),
    ("image_size", "record 1: feature '3/image_aux1/encoded' has 12287 bytes, expected one of 12288"),
    ("nan", "record 1: feature '2/action' holds 0.1, nan, 0.2, 1; expected finite"),
    ("kind", "record 1: feature '5/action' is a bytes_list, expected float_list"),
]


@pytest.mark.parametrize("damage, message", DAMAGE, ids=[d for d, _ in DAMAGE])
def test_damaged_record_is_refused_in_one_line_or_skipped(tmp_path, damage, message):
    release = write_release(str(tmp_path / "src"), damage)
    bad_file = os.path.join(release, *DAMAGED_FILE)
    out = str(tmp_path / "out")
    with pytest.raises(DataError) as err:
        bair.convert(bair.DirRelease(release), out, progress=False)
    text = str(err.value)
    assert text.startswith(bad_file + ": ") and message in text and "\n" not in text
    assert not os.path.exists(out)  # nothing half-written: no output, no temporary folder left
    assert not any(n.startswith(".") and n.endswith(".tmp") for n in os.listdir(os.path.join(out + ".partial", "train")))

    manifest = bair.convert(bair.DirRelease(release), out, skip_bad=True, progress=False)
    lost = 2 if damage in ("length_crc", "truncated") else 1  # framing damage loses the records after it
    assert manifest["skipped"] == 1 and message in manifest["skipped_examples"][0]
    assert manifest["splits"]["train"]["sequences"] == 6 - lost
    skip = {(*DAMAGED_FILE, i) for i in range(1, 1 + lost)}
    folders = LabFolders(out, "train")
    frames, cond = expected("train", skip=skip)
    assert len(folders) == len(frames)
    for i in range(len(folders)):
        np.testing.assert_array_equal(folders[i][0], frames[i])
        np.testing.assert_array_equal(folders[i][1], cond[i])


def test_damaged_record_through_training_data(tmp_path):
    """data.source='bair': the packed cache refuses a damaged record, or skips it with data.skip_bad."""
    release = write_release(str(tmp_path / "src"), "crc")
    strict = data_config(release, source="bair")
    with pytest.raises(DataError, match=r"traj_512_to_767.tfrecords: record 1: data CRC mismatch"):
        open_split(strict, "train")
    assert not os.path.exists(os.path.join(release, ".cache", "image_aux1-train"))
    src = open_split(data_config(release, source="bair", skip_bad=True), "train")
    frames, cond = expected("train", skip={(*DAMAGED_FILE, 1)})
    assert src.skipped == 1 and len(src) == 5
    np.testing.assert_array_equal(np.asarray(src.frames), frames)
    np.testing.assert_array_equal(np.asarray(src.cond), cond)


def test_cli_damaged_input_is_one_line(tmp_path):
    release = write_release(str(tmp_path / "src"), "truncated")
    out = str(tmp_path / "out")
    proc = run_module("vp_jax.data.bair", "--dir", release, "--out", out)
    assert_one_line_error(proc, os.path.join(release, *DAMAGED_FILE), "record 1: truncated")
    assert not os.path.exists(out)


def test_cli_in_process(release, converted, tmp_path, capsys):
    tar = make_tar(release, str(tmp_path / "bair.tar"))
    out = str(tmp_path / "out")
    bair.main(["--tar", tar, "--out", out, "--workers", "1"])
    assert "wrote" in capsys.readouterr().out and read_tree(out) == read_tree(converted)
    bair.main(["--tar", tar, "--out", out])
    assert "already complete" in capsys.readouterr().out
    bair.main(["--verify", out])
    assert "ok (train 6, validate 2, test 2 sequences" in capsys.readouterr().out
    open(tar, "r+b").truncate(30_000)  # a download cut short
    with pytest.raises(SystemExit) as exit_:
        bair.main(["--tar", tar, "--out", str(tmp_path / "out2")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tar}") and "\n" not in err


# ----------------------------------------------------------------------------- data.source = 'bair'


def test_training_data_from_tfrecords_equals_the_converted_folders(release, converted, tmp_path):
    for split in ("train", "validate", "test"):
        src = open_split(data_config(release, source="bair", cache_dir=str(tmp_path / "c")), split)
        assert src.manifest["camera"] == "image_aux1" and src.manifest["source"] == "bair"
        lab = open_split(data_config(converted, source="lab"), split)
        frames, cond = expected(split)
        np.testing.assert_array_equal(np.asarray(src.frames), frames)
        np.testing.assert_array_equal(np.asarray(src.cond), cond)
        np.testing.assert_array_equal(np.asarray(lab.frames), frames)
        np.testing.assert_array_equal(np.asarray(lab.cond), cond)
    assert sorted(os.listdir(tmp_path / "c")) == ["bair-image_aux1-test", "bair-image_aux1-train", "bair-image_aux1-validate"]
    # The other camera gets a cache of its own, with its own frames.
    main = open_split(data_config(release, source="bair", camera="image_main"), "test")
    np.testing.assert_array_equal(np.asarray(main.frames), expected("test", "image_main")[0])
    assert os.path.isdir(os.path.join(release, ".cache", "image_main-test"))
    shutil.rmtree(os.path.join(release, ".cache"))  # the module's release stays as written


def test_prepare_builds_a_bair_cache(release, tmp_path):
    out = str(tmp_path / "c")
    manifest = cache.build_cache("bair", release, "validate", out)
    assert manifest["count"] == LAYOUT["train"]["traj_256_to_511.tfrecords"] and manifest["camera"] == "image_aux1"
    np.testing.assert_array_equal(cache.open_cache(out)[0], expected("validate")[0])
