"""Small BAIR releases for tests (not a test module), in the release's exact TFRecord schema.

Records are written by the ``tfrecord`` package's writer: framing, CRCs (the ``crc32c``
package) and the Example message class are all independent of vp_jax's reader, so reading them
back checks vp_jax's framing and parsing against another implementation. Frames come from the
pushbot renderer (camera 'aux1'; 'main' is the same mirrored), conditions from its simulation
plus noise so that they use every bit of a float32.
"""

from __future__ import annotations

import os
import struct
import tarfile

import numpy as np
from tfrecord.writer import TFRecordWriter

from vp_jax.data import pushbot

SEED = 11
# The release's folders -> file -> records. traj_256_to_511 of train is vp_jax's 'validate'.
LAYOUT = {
    "train": {"traj_0_to_255.tfrecords": 3, "traj_256_to_511.tfrecords": 2, "traj_512_to_767.tfrecords": 3},
    "test": {"traj_0_to_255.tfrecords": 2},
}
SPLIT_FILES = {  # vp_jax split -> (release folder, file) in natural order
    "train": [("train", "traj_0_to_255.tfrecords"), ("train", "traj_512_to_767.tfrecords")],
    "validate": [("train", "traj_256_to_511.tfrecords")],
    "test": [("test", "traj_0_to_255.tfrecords")],
}
DAMAGED_FILE = ("train", "traj_512_to_767.tfrecords")  # where damage() puts its damage: record 1


def sequence(folder: str, file: str, index: int) -> dict:
    """One fixture sequence: image_aux1 / image_main uint8 [30, 64, 64, 3], action float32 [30, 4],
    endeffector_pos float32 [30, 3]; a pure function of (folder, file, index)."""
    number = int(file.split("_")[1]) // 256 * 16 + index + (1000 if folder == "test" else 0)
    frames, cond, _ = pushbot.generate_sequence(SEED, "train", number)
    noise = np.random.default_rng(number).normal(0.0, 1e-3, cond.shape)
    cond = (cond + noise).astype(np.float32)
    return dict(image_aux1=frames, image_main=frames[:, :, ::-1].copy(), action=cond[:, :4], endeffector_pos=cond[:, 4:])


def datum(seq: dict, damage: str | None = None) -> dict:
    """The ``tfrecord`` writer's input for one record: ``{key: (value, 'byte' | 'float')}``.

    ``damage``: 'missing' drops 7/endeffector_pos, 'image_size' cuts 3/image_aux1/encoded by a
    byte, 'nan' puts a NaN in 2/action, 'kind' writes 5/action as bytes.
    """
    out = {}
    for t in range(30):
        out[f"{t}/image_aux1/encoded"] = (seq["image_aux1"][t].tobytes(), "byte")
        out[f"{t}/image_main/encoded"] = (seq["image_main"][t].tobytes(), "byte")
        out[f"{t}/action"] = (seq["action"][t].tolist(), "float")
        out[f"{t}/endeffector_pos"] = (seq["endeffector_pos"][t].tolist(), "float")
    if damage == "missing":
        del out["7/endeffector_pos"]
    elif damage == "image_size":
        out["3/image_aux1/encoded"] = (seq["image_aux1"][3].tobytes()[:-1], "byte")
    elif damage == "nan":
        out["2/action"] = ([0.1, float("nan"), 0.2, 1.0], "float")
    elif damage == "kind":
        out["5/action"] = (b"\x00" * 16, "byte")
    return out


def write_file(path: str, seqs: list[dict], damage_record: int | None = None, damage: str | None = None) -> None:
    writer = TFRecordWriter(path)
    for i, seq in enumerate(seqs):
        writer.write(datum(seq, damage if i == damage_record else None))
    writer.close()


def write_release(root: str, damage: str | None = None) -> str:
    """A release at ``root/softmotion30_44k`` (returned), with ``damage`` in record 1 of DAMAGED_FILE.

    Damage kinds: those of :func:`datum`, and byte-level 'crc' (a flipped pixel byte inside the
    record, so only the data CRC can tell), 'length_crc' (a flipped byte in the record's length
    CRC) and 'truncated' (the file ends inside the record's data).
    """
    release = os.path.join(root, "softmotion30_44k")
    for folder, files in LAYOUT.items():
        os.makedirs(os.path.join(release, folder), exist_ok=True)
        for file, n in files.items():
            seqs = [sequence(folder, file, i) for i in range(n)]
            here = (folder, file) == DAMAGED_FILE
            path = os.path.join(release, folder, file)
            write_file(path, seqs, 1 if here else None, damage if here else None)
            if here and damage in ("crc", "length_crc", "truncated"):
                damage_bytes(path, damage, seqs[1])
    return release


def record_offsets(path: str) -> list[int]:
    """Byte offsets of the records of a TFRecord file (read with struct, not vp_jax)."""
    data = open(path, "rb").read()
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 12 + struct.unpack("<Q", data[pos : pos + 8])[0] + 4
    return offsets


def damage_bytes(path: str, how: str, seq: dict) -> None:
    """Damage record 1 of ``path`` in place (see :func:`write_release`)."""
    data = bytearray(open(path, "rb").read())
    start = record_offsets(path)[1]
    if how == "crc":
        pixels = seq["image_aux1"][4].tobytes()
        at = data.index(pixels[:64], start)
        data[at + 10] ^= 0x01  # a pixel one level off: a well-formed record, only the CRC differs
    elif how == "length_crc":
        data[start + 9] ^= 0xFF
    elif how == "truncated":
        data = data[: start + 12 + 5000]
    open(path, "wb").write(bytes(data))


def expected(split: str, camera: str = "image_aux1", skip: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """(frames [N, 30, 64, 64, 3], cond [N, 30, 7]) of a vp_jax split, in order, leaving out the
    ``(folder, file, index)`` in ``skip``."""
    frames, cond = [], []
    for folder, file in SPLIT_FILES[split]:
        for i in range(LAYOUT[folder][file]):
            if (folder, file, i) in skip:
                continue
            seq = sequence(folder, file, i)
            frames.append(seq[camera])
            cond.append(np.concatenate([seq["action"], seq["endeffector_pos"]], axis=1))
    return np.stack(frames), np.stack(cond)


def make_tar(release: str, path: str) -> str:
    """The release folder as a tar (``softmotion30_44k/...``), members in an order unlike the
    folder's (test first, train files reversed), as a download might hold them."""
    with tarfile.open(path, "w") as tar:
        tar.add(release, arcname="softmotion30_44k", recursive=False)
        for folder in ("test", "train"):
            tar.add(os.path.join(release, folder), arcname=f"softmotion30_44k/{folder}", recursive=False)
            for file in sorted(LAYOUT[folder], reverse=True):
                tar.add(os.path.join(release, folder, file), arcname=f"softmotion30_44k/{folder}/{file}")
    return path


def read_tree(root: str) -> dict:
    """``{relative path: bytes}`` of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out
