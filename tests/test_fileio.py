"""fileio: complete files or none, with the permissions open() would give."""

import os
import stat

import pytest

from vp_jax import fileio


def test_atomic_write_is_complete_or_absent(tmp_path):
    path = str(tmp_path / "sub" / "out.json")
    fileio.write_json(path, {"a": 1})
    assert open(path).read() == '{\n  "a": 1\n}'
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == '{\n  "a": 1\n}'  # the old file, untouched
    assert os.listdir(tmp_path / "sub") == ["out.json"]  # no temporary left


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fileio.write_text(str(tmp_path / "a.txt"), "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == 0o644
