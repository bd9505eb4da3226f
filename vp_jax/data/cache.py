"""Packed cache of one split: decode PNGs (or TFDS/BAIR records) once, memory-map them every epoch.

A cache is a folder::

    CACHE/frames.npy      uint8   [N, S, 64, 64, 3]   (S = frames per sequence, 30 for BAIR)
    CACHE/cond.npy        float32 [N, S, 7]           [action (4), end-effector position (3)]
    CACHE/manifest.json   {"format_version", "source", "root", "split", "camera", "count",
                           "num_frames", "frames": {shape, dtype, sha256}, "cond": {...},
                           "skipped", "skipped_examples"}

It is written into a temporary sibling folder and renamed into place only when complete, so an
interrupted build never leaves a folder that :func:`open_cache` accepts. The manifest is written
last inside the temporary folder; :func:`open_cache` checks it against the ``.npy`` headers and
file sizes (cheap), :func:`verify_cache` recomputes the SHA-256 checksums (reads everything).

Build one with ``python -m vp_jax.data.prepare`` or let :func:`vp_jax.data.pipeline.open_split`
build it on first use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable

import numpy as np
from tqdm.auto import tqdm

from vp_jax.data.bair import BairRecords
from vp_jax.data.lab_folders import LabFolders
from vp_jax.data.tfds_bair import TfdsBair
from vp_jax.errors import DataError

FORMAT_VERSION = 1
FRAMES_FILE = "frames.npy"
COND_FILE = "cond.npy"
MANIFEST_FILE = "manifest.json"
_MAX_SKIPPED_EXAMPLES = 20
SOURCES = ("lab", "pushbot", "tfds", "bair")
CAMERA_SOURCES = ("tfds", "bair")  # sources with two cameras: the cache records which one


def sha256_file(path: str, chunk: int = 1 << 23) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def shrink_npy(path: str, count: int) -> None:
    """Cut a C-ordered ``.npy`` file to its first ``count`` rows in place (after skipped sequences).

    The header is rewritten for the new shape; numpy pads headers to 64 bytes, so the new one has
    the same length unless the shape's text crosses a padding boundary, and then the file is copied.
    """
    arr = np.load(path, mmap_mode="r")
    shape, dtype, offset = (count,) + arr.shape[1:], arr.dtype, arr.offset
    del arr
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if len(buf.getvalue()) == offset:
        with open(path, "r+b") as f:
            f.write(buf.getvalue())
            f.truncate(offset + count * row_bytes)
        return
    src = np.load(path, mmap_mode="r")
    tmp = path + ".shrink"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    for start in range(0, count, 256):
        out[start : start + 256] = src[start : min(start + 256, count)]
    out.flush()
    del out, src
    os.replace(tmp, path)


def write_cache(
    out: str,
    items: Iterable[tuple[str, tuple[np.ndarray, np.ndarray] | DataError]],
    count: int,
    num_frames: int,
    meta: dict,
    progress: bool = False,
) -> dict:
    """Write a cache folder at ``out`` from ``count`` items ``(name, (frames, cond))``.

    Args:
      items: in order; an item whose value is a :class:`DataError` is a skipped sequence
        (counted in the manifest's ``skipped``). frames uint8 ``[S, 64, 64, 3]``, cond float32 ``[S, 7]``.
      count: the number of items (the files are preallocated at this size and cut if some are skipped).
      num_frames: S.
      meta: extra manifest fields (source, root, split, camera).
      progress: show a progress bar (sequences/s) on stderr.
    Returns the manifest. An existing cache at ``out`` is replaced only once the new one is complete.
    """
    out = os.path.abspath(out)
    if os.path.lexists(out) and not (
        os.path.isfile(os.path.join(out, MANIFEST_FILE)) or (os.path.isdir(out) and not os.listdir(out))
    ):
        raise DataError(f"{out}: exists and is not a vp_jax cache; refusing to replace it (choose another output)")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished folder is ordinary data
    try:
        frames_path = os.path.join(tmp, FRAMES_FILE)
        frame_shape = (num_frames, 64, 64, 3)
        cond = np.empty((count, num_frames, 7), np.float32)
        n, skipped = 0, []
        bar = tqdm(items, total=count, desc=f"caching {meta.get('split', '')}", unit=" sequences", disable=None if progress else True, leave=False)
        # Appended row by row through a file, not a writable memory map: the process's resident
        # memory stays flat (a 16 GB split would otherwise count in full as written pages).
        with open(frames_path, "wb") as fh:
            header = {"descr": "|u1", "fortran_order": False, "shape": (count, *frame_shape)}
            np.lib.format.write_array_header_1_0(fh, header)
            offset = fh.tell()
            for name, value in bar:
                if isinstance(value, DataError):
                    skipped.append(str(value))
                    continue
                f, c = value
                if f.shape != frame_shape or c.shape != cond.shape[1:]:
                    raise DataError(f"{name}: expected frames {frame_shape} and cond {cond.shape[1:]}, got {f.shape} and {c.shape}")
                if n == count:
                    raise DataError(f"{name}: more sequences than the {count} counted (did the files change?)")
                fh.write(np.ascontiguousarray(f, np.uint8).data)
                cond[n] = c
                n += 1
            fh.truncate(offset + count * int(np.prod(frame_shape)))  # full size (sparse) for shrink_npy
        if n == 0:
            raise DataError(f"{meta.get('root')}/{meta.get('split')}: no readable sequences ({len(skipped)} skipped)")
        if n < count:
            shrink_npy(frames_path, n)
        cond_path = os.path.join(tmp, COND_FILE)
        np.save(cond_path, cond[:n])
        manifest = dict(
            format_version=FORMAT_VERSION,
            **meta,
            count=n,
            num_frames=num_frames,
            frames=dict(file=FRAMES_FILE, shape=[n, num_frames, 64, 64, 3], dtype="uint8", sha256=sha256_file(frames_path)),
            cond=dict(file=COND_FILE, shape=[n, num_frames, 7], dtype="float32", sha256=sha256_file(cond_path)),
            skipped=len(skipped),
            skipped_examples=skipped[:_MAX_SKIPPED_EXAMPLES],
        )
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as fh:
            json.dump(manifest, fh, indent=2)
        _move_into_place(tmp, out)
        return manifest
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: str, out: str) -> None:
    """Rename the finished folder ``tmp`` to ``out``, replacing an old ``out`` (never half of one)."""
    old = None
    if os.path.lexists(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
        os.rename(out, os.path.join(old, "x"))
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(cache_dir: str) -> dict:
    """The manifest of a complete cache; DataError naming the file if missing or unreadable."""
    path = os.path.join(cache_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing (not a complete vp_jax cache; rebuild it with python -m vp_jax.data.prepare)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise DataError(f"{path}: cache format version {got!r}, expected {FORMAT_VERSION} (rebuild the cache)")
    return manifest


def open_cache(cache_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Memory-map a cache: (frames uint8 ``[N, S, 64, 64, 3]``, cond float32 ``[N, S, 7]``, manifest).

    Checks the manifest against the arrays' headers (shape, dtype) and the files' sizes; the
    checksums are checked by :func:`verify_cache` only (they need a full read).
    """
    manifest = read_manifest(cache_dir)
    arrays = []
    for key in ("frames", "cond"):
        entry = manifest[key]
        path = os.path.join(cache_dir, entry["file"])
        try:
            arr = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise DataError(f"{path}: missing (the cache is incomplete; rebuild it)") from None
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable .npy ({err}); rebuild the cache") from None
        if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
            raise DataError(
                f"{path}: expected {entry['dtype']} {tuple(entry['shape'])} (manifest), got {arr.dtype} {arr.shape}"
            )
        if os.path.getsize(path) != arr.offset + arr.nbytes:
            raise DataError(f"{path}: file size does not match its header (truncated?); rebuild the cache")
        arrays.append(arr)
    return arrays[0], arrays[1], manifest


def verify_cache(cache_dir: str) -> dict:
    """Recompute the checksums of a cache; DataError naming the file that does not match."""
    manifest = read_manifest(cache_dir)
    open_cache(cache_dir)
    for key in ("frames", "cond"):
        path = os.path.join(cache_dir, manifest[key]["file"])
        if sha256_file(path) != manifest[key]["sha256"]:
            raise DataError(f"{path}: SHA-256 differs from {MANIFEST_FILE} (damaged; rebuild the cache)")
    return manifest


def normalize_root(root: str) -> str:
    """The root as recorded in a manifest: absolute, or '' (TFDS's default data dir)."""
    return os.path.abspath(os.path.expanduser(root)) if root else ""


@dataclasses.dataclass(frozen=True)
class Reading:
    """How :func:`build_cache` reads a source: the BAIR camera, frames per sequence (at least;
    BAIR's sequences keep all of theirs), whether bad sequences are skipped (else refused), the
    TFDS validation split's size, and the folder readers' threads."""

    camera: str = "image_aux1"
    num_frames: int = 30
    skip_bad: bool = False
    tfds_validate: int = 256
    workers: int = 2


def build_cache(source: str, root: str, split: str, out: str, reading: Reading = Reading(), progress: bool = False) -> dict:
    """Convert one split of ``source`` ('lab', 'pushbot', 'tfds' or 'bair') into a cache at ``out``.

    'lab' and 'pushbot' read the folder layout under ``root`` (pushbot data must exist already,
    see :func:`vp_jax.data.pushbot.ensure_pushbot`); 'tfds' reads ``bair_robot_pushing_small``
    from the TFDS data dir ``root`` (see :mod:`vp_jax.data.tfds_bair` for splits and camera);
    'bair' reads the release's TFRecords in ``root`` (``softmotion30_44k``, see
    :mod:`vp_jax.data.bair`). Returns the manifest.
    """
    meta = dict(source=source, root=normalize_root(root), split=split)
    camera, num_frames, skip_bad = reading.camera, reading.num_frames, reading.skip_bad
    if source in ("lab", "pushbot"):
        folders = LabFolders(root, split, num_frames)
        items = folders.iter_sequences(skip_bad=skip_bad, workers=reading.workers)
        count = len(folders)
    elif source in CAMERA_SOURCES:
        if source == "tfds":
            reader = TfdsBair(root, split, camera=camera, validate_count=reading.tfds_validate)
        else:
            reader = BairRecords(root, split, camera=camera)
        if num_frames > reader.num_frames:
            raise DataError(f"{reader.name}: sequences have {reader.num_frames} frames, {num_frames} needed")
        num_frames = reader.num_frames
        items = reader.iter_sequences(skip_bad=skip_bad)
        count = len(reader)
        meta["camera"] = camera
    else:
        raise DataError(f"source {source!r}: expected one of {SOURCES}")
    return write_cache(out, items, count, num_frames, meta, progress=progress)
