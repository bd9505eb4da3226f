"""BAIR robot pushing as released (``softmotion30_44k`` TFRecords), read without TensorFlow.

    python -m vp_jax.data.bair --tar bair_robot_pushing_dataset_v0.tar --out data/bair
    python -m vp_jax.data.bair --dir softmotion30_44k --out data/bair [--camera image_main] [--skip-bad]
    python -m vp_jax.data.bair --verify data/bair

    # or train on the TFRecords directly (a packed cache is built on first use):
    python train.py --config configs/lab_bair.py --config.data.source=bair --config.data.root=softmotion30_44k

The release holds ``softmotion30_44k/{train,test}/traj_<a>_to_<b>.tfrecords``, 256 sequences a
file (43,264 train, 256 test). Each record is a ``tf.train.Example`` with, for t = 0..29::

    {t}/image_aux1/encoded   bytes     64x64x3 uint8, raw row-major RGB (not PNG): camera 'aux1'
    {t}/image_main/encoded   bytes     the same from the other camera, 'main'
    {t}/action               4 floats  commanded end-effector motion (dx, dy, dz), gripper command
    {t}/endeffector_pos      3 floats  measured end-effector position (x, y, z), robot frame

A sequence is ``frames`` uint8 ``[30, 64, 64, 3]`` from one camera (``image_aux1`` by default,
the one SVG and later papers use) and ``cond`` float32 ``[30, 7]`` = ``[action, endeffector_pos]``.

Splits, as in the lab's converted data::

    train    = release train/ except traj_256_to_511.tfrecords     (43,008)
    validate = release train/traj_256_to_511.tfrecords              (256)
    test     = release test/                                        (256)

Conversion (``--tar`` or ``--dir``) writes the lab's folder layout, which
:mod:`vp_jax.data.lab_folders` reads::

    OUT/{train,validate,test}/<file name>/<record index>/{0..29}.png    64x64 RGB (the camera's frames)
                                                        actions.csv, endeffector_positions.csv
    OUT/manifest.json     camera, counts, skipped records, a SHA-256 per file of the release

A tar is read as a stream (``tarfile`` mode ``'r|*'``): nothing is extracted first. Work goes
into ``OUT.partial``; each file of the release is written to a hidden temporary folder there and
renamed when complete, so running the same command after an interruption keeps the files done
and redoes the one that was half-written. The manifest is written last and ``OUT.partial`` is
then renamed to ``OUT``: ``OUT`` exists only when complete. CSV values are written exactly (the
reader gets back the same float32 numbers); PNGs are lossless.

Bad input (a truncated record, a CRC mismatch, a missing feature, an image of the wrong size, a
NaN) stops with one line naming the file and the record index; ``--skip-bad`` (``data.skip_bad``
for training) skips such records and counts them in the manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from vp_jax.data.lab_folders import natural_key, sequence_files, write_sequence
from vp_jax.data.records import (
    count_records,
    feature_values,
    parse_example,
    read_records,
)
from vp_jax.errors import DataError, cli_main
from vp_jax.fileio import write_json

CAMERAS = ("image_aux1", "image_main")
NUM_FRAMES = 30
IMAGE_SHAPE = (64, 64, 3)
IMAGE_BYTES = 64 * 64 * 3
RELEASE_DIR = "softmotion30_44k"
RELEASE_SPLITS = ("train", "test")
VALIDATE_FILE = "traj_256_to_511.tfrecords"  # the train file held out as 'validate', as in the lab's data
SPLITS = ("train", "validate", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_SHARD_INFO = ".shard.json"  # inside a converted file's folder (hidden: the lab reader skips it)
_PROGRESS = ".progress.json"  # inside OUT.partial: the camera the work was started with
_MAX_EXAMPLES = 20


# ----------------------------------------------------------------------------- records -> arrays


def sequence_from_features(features, camera: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A parsed BAIR example -> (frames uint8 ``[30, 64, 64, 3]``, cond float32 ``[30, 7]``).

    DataError naming ``name`` and the feature for a missing feature, an image that is not
    64x64x3 bytes, a condition of the wrong length or one that is NaN or infinite.
    """
    images, cond = [], np.empty((NUM_FRAMES, 7), np.float32)
    for t in range(NUM_FRAMES):
        key = f"{t}/{camera}/encoded"
        values = feature_values(features, key, "bytes_list", name, f"{IMAGE_BYTES} bytes: 64x64x3 uint8")
        if len(values) != 1 or len(values[0]) != IMAGE_BYTES:
            got = f"{len(values)} values" if len(values) != 1 else f"{len(values[0])} bytes"
            raise DataError(f"{name}: feature {key!r} has {got}, expected one of {IMAGE_BYTES} bytes (64x64x3 uint8)")
        images.append(values[0])
        for key, lo, hi, what in ((f"{t}/action", 0, 4, "dx, dy, dz, gripper"), (f"{t}/endeffector_pos", 4, 7, "x, y, z")):
            values = feature_values(features, key, "float_list", name, f"{hi - lo} floats: {what}")
            if len(values) != hi - lo:
                raise DataError(f"{name}: feature {key!r} has {len(values)} floats, expected {hi - lo} ({what})")
            cond[t, lo:hi] = values
    if not np.isfinite(cond).all():  # one check for the whole record; find the culprit only then
        t, col = (int(i) for i in np.argwhere(~np.isfinite(cond))[0])
        key, row = (f"{t}/action", cond[t, :4]) if col < 4 else (f"{t}/endeffector_pos", cond[t, 4:])
        shown = ", ".join(f"{v:g}" for v in row)
        raise DataError(f"{name}: feature {key!r} holds {shown}; expected finite numbers")
    frames = np.frombuffer(b"".join(images), np.uint8).reshape(NUM_FRAMES, *IMAGE_SHAPE)
    return frames, cond


def read_file(
    f: BinaryIO, label: str, camera: str = "image_aux1", skip_bad: bool = False
) -> Iterator[tuple[int, str, tuple[np.ndarray, np.ndarray] | DataError]]:
    """Yield ``(record index, name, (frames, cond))`` for each record of an open TFRecord file.

    ``label`` names the file in messages (a path, or ``TAR:member``). The first bad record
    raises its DataError, or with ``skip_bad`` is yielded as ``(index, name, DataError)``.
    """
    for index, record in read_records(f, label):
        name = f"{label}: record {index}"
        if isinstance(record, DataError):
            value = record
        else:
            try:
                value = sequence_from_features(parse_example(record, name), camera, name)
            except DataError as err:
                value = err
        if isinstance(value, DataError) and not skip_bad:
            raise value
        yield index, name, value


def check_camera(camera: str) -> None:
    if camera not in CAMERAS:
        raise DataError(f"camera {camera!r}: expected one of {CAMERAS} (image_aux1 is the camera SVG uses)")


# ----------------------------------------------------------------------------- the release's files


def _tfrecords(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    names = sorted((n for n in os.listdir(folder) if n.endswith(".tfrecords") and not n.startswith(".")), key=natural_key)
    # Files only: the lab layout's folders carry the same names (train/traj_0_to_255.tfrecords/0/...).
    return [p for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p)]


def release_root(root: str) -> str:
    """The folder holding ``train/`` and ``test/`` TFRecords: ``root`` or ``root/softmotion30_44k``."""
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: not found (expected the {RELEASE_DIR} folder of the BAIR release)")
    for candidate in (root, os.path.join(root, RELEASE_DIR)):
        if any(_tfrecords(os.path.join(candidate, s)) for s in RELEASE_SPLITS):
            return candidate
    raise DataError(
        f"{root}: no TFRecords found (expected {root}/train/traj_*.tfrecords and {root}/test/traj_*.tfrecords, "
        f"the {RELEASE_DIR} folder of the BAIR release)"
    )


def output_split(release_split: str, file_name: str) -> str:
    """The vp_jax split of a release file: 'validate' for train/traj_256_to_511, else its folder's."""
    return "validate" if release_split == "train" and file_name == VALIDATE_FILE else release_split


def split_files(root: str, split: str) -> list[str]:
    """The TFRecord files of a vp_jax split ('train', 'validate', 'test'), in natural order."""
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {SPLITS}")
    root = release_root(root)
    release_split = "test" if split == "test" else "train"
    files = [p for p in _tfrecords(os.path.join(root, release_split)) if output_split(release_split, os.path.basename(p)) == split]
    if not files:
        where = os.path.join(root, release_split, VALIDATE_FILE if split == "validate" else "traj_*.tfrecords")
        raise DataError(f"{where}: not found (split {split!r} needs it)")
    return files


class BairRecords:
    """One vp_jax split of the release's TFRecords: ``len`` and :meth:`iter_sequences` (streamed).

    Args:
      root: the ``softmotion30_44k`` folder (or the folder holding it).
      split: 'train', 'validate' or 'test' (see the module docstring).
      camera: 'image_aux1' (default) or 'image_main'.
    """

    def __init__(self, root: str, split: str, camera: str = "image_aux1"):
        check_camera(camera)
        self.camera, self.split = camera, split
        self.paths = split_files(root, split)
        self.name = f"bair:{release_root(root)}/{split}"
        self.num_frames = NUM_FRAMES
        self.counts = [count_records(p) for p in self.paths]  # headers only: one seek per record

    def __len__(self) -> int:
        return sum(self.counts)

    def iter_sequences(self, skip_bad: bool = False) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray] | DataError]]:
        """Yield ``(name, (frames, cond))`` in order; with ``skip_bad`` a bad record is ``(name, DataError)``."""
        for path in self.paths:
            try:
                f = open(path, "rb", buffering=1 << 20)
            except OSError as err:
                raise DataError(f"{path}: unreadable ({err.strerror or err})") from None
            with f:
                for _, name, value in read_file(f, path, self.camera, skip_bad):
                    yield name, value


# ----------------------------------------------------------------------------- conversion inputs


@dataclasses.dataclass
class ReleaseFile:
    """One TFRecord file of the release, as the converter meets it."""

    split: str  # the release's folder: 'train' or 'test'
    name: str  # 'traj_0_to_255.tfrecords'
    label: str  # for messages: a path, or 'TAR:member'
    open: Callable[[], BinaryIO]


class DirRelease:
    """The files of an extracted ``softmotion30_44k`` folder; ``total`` = their record count."""

    def __init__(self, root: str):
        self.root = release_root(root)
        self.files = [
            ReleaseFile(split, os.path.basename(p), p, lambda p=p: open(p, "rb", buffering=1 << 20))
            for split in RELEASE_SPLITS
            for p in _tfrecords(os.path.join(self.root, split))
        ]
        self.total = sum(count_records(f.label) for f in self.files)

    def __iter__(self) -> Iterator[ReleaseFile]:
        return iter(self.files)

    def fraction_read(self) -> float | None:
        return None


class TarRelease:
    """The TFRecord files of the release tar, read as one stream (``tarfile`` mode ``'r|*'``).

    Members are met in the tar's order; each must be read before the next is reached. Members
    ``.../{train,test}/*.tfrecords`` are used, anything else is passed over.
    """

    def __init__(self, path: str):
        self.path = path
        self.total = None
        try:
            self._size = os.path.getsize(path)
        except OSError as err:
            raise DataError(f"{path}: {err.strerror or err} (expected the BAIR release tar)") from None
        self._raw: BinaryIO | None = None

    def fraction_read(self) -> float | None:
        """How much of the tar file has been read so far (for a time estimate)."""
        return self._raw.tell() / self._size if self._raw is not None and self._size else None

    def __iter__(self) -> Iterator[ReleaseFile]:
        with open(self.path, "rb") as raw:
            self._raw = raw
            try:
                tar = tarfile.open(fileobj=raw, mode="r|*")
                with tar:
                    for member in tar:
                        parts = member.name.split("/")
                        if not (member.isfile() and parts[-1].endswith(".tfrecords") and len(parts) >= 2):
                            continue
                        if parts[-2] not in RELEASE_SPLITS:
                            continue
                        f = tar.extractfile(member)
                        yield ReleaseFile(parts[-2], parts[-1], f"{self.path}:{member.name}", lambda f=f: f)
            except (tarfile.TarError, OSError, EOFError) as err:
                raise DataError(f"{self.path}: not a readable tar ({type(err).__name__}: {err}); is the download complete?") from None
            finally:
                self._raw = None


# ----------------------------------------------------------------------------- conversion


def _write_one(folder: str, index: int, frames: np.ndarray, cond: np.ndarray) -> str:
    """Write one sequence folder; return its lines of the file's checksum list (sha256sum format)."""
    files = sequence_files(frames, cond[:, :4], cond[:, 4:])
    write_sequence(os.path.join(folder, str(index)), files)
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {index}/{name}\n" for name, data in files)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None


def _write_json(path: str, value) -> None:
    write_json(path, value)


def _shard_info(folder: str) -> dict:
    """The record a converted file's folder carries (written just before it was renamed into place)."""
    info = _read_json(os.path.join(folder, _SHARD_INFO))
    if not isinstance(info, dict):
        raise DataError(f"{folder}: not a converted release file (no {_SHARD_INFO}); remove it and run again")
    return info


def file_checksums(folder: str) -> str:
    """The checksum list of a converted file's folder, recomputed from the files on disk:
    ``<sha256>  <index>/<file>`` lines, sequences in natural order, each sequence's files in
    the written order (frames, actions.csv, endeffector_positions.csv). Its SHA-256 is the
    manifest's per-file ``sha256``."""
    lines = []
    for seq in sorted((e for e in os.listdir(folder) if not e.startswith(".")), key=natural_key):
        names = sorted(os.listdir(os.path.join(folder, seq)), key=lambda n: (not n.endswith(".png"), natural_key(n)))
        for name in names:
            with open(os.path.join(folder, seq, name), "rb") as f:
                lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {seq}/{name}\n")
    return "".join(lines)


class _Converter:
    """Converts release files into ``work`` (OUT.partial), one file's folder at a time."""

    def __init__(self, work: str, camera: str, skip_bad: bool, workers: int, bar):
        self.work, self.camera, self.skip_bad, self.workers, self.bar = work, camera, skip_bad, max(1, workers), bar
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vp_jax-bair")
        self.skipped = 0

    def convert_file(self, item: ReleaseFile) -> None:
        split = output_split(item.split, item.name)
        target = os.path.join(self.work, split, item.name)
        if os.path.isdir(target):  # converted before an interruption: renamed into place only when complete
            self.bar.update(_shard_info(target)["sequences"])
            return
        tmp = os.path.join(self.work, split, f".{item.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        pending: deque = deque()
        checksums, skipped = [], []
        try:
            with item.open() as f:
                for index, _, value in read_file(f, item.label, self.camera, self.skip_bad):
                    if isinstance(value, DataError):
                        skipped.append(str(value))
                        self.skipped += 1
                        self.bar.set_postfix(skipped=self.skipped, refresh=False)
                        continue
                    # Threads encode and write while this one reads on (zlib and file writes
                    # release the GIL); a short queue keeps memory flat.
                    pending.append(self.pool.submit(_write_one, tmp, index, *value))
                    while len(pending) > 2 * self.workers:
                        checksums.append(pending.popleft().result())
                        self.bar.update(1)
                while pending:
                    checksums.append(pending.popleft().result())
                    self.bar.update(1)
        except DataError:
            # Bad input: leave nothing of this file behind (files done before are complete and kept).
            for fut in pending:
                fut.cancel()
            wait(pending)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        listing = "".join(checksums)
        info = dict(
            source=f"{item.split}/{item.name}",
            split=split,
            sequences=len(checksums),
            skipped=len(skipped),
            skipped_examples=skipped[:_MAX_EXAMPLES],
            sha256=hashlib.sha256(listing.encode()).hexdigest(),
        )
        _write_json(os.path.join(tmp, _SHARD_INFO), info)
        os.rename(tmp, target)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _start_work(work: str, camera: str) -> None:
    """Create ``OUT.partial`` or check that an existing one is ours with the same camera; drop the
    temporary folders an interrupted run left."""
    marker = os.path.join(work, _PROGRESS)
    progress = _read_json(marker) if os.path.isdir(work) else None
    if progress is None:
        if os.path.lexists(work) and (not os.path.isdir(work) or os.listdir(work)):
            raise DataError(f"{work}: exists and is not an unfinished BAIR conversion; remove it or choose another --out")
        os.makedirs(work, exist_ok=True)
        _write_json(marker, dict(generator="vp_jax.data.bair", format_version=FORMAT_VERSION, camera=camera))
    elif progress.get("camera") != camera:
        raise DataError(
            f"{work}: an unfinished conversion with camera {progress.get('camera')!r}, not {camera!r}; "
            "run it with that --camera, or remove it"
        )
    for split in SPLITS:
        folder = os.path.join(work, split)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".tmp"):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _finish(work: str, camera: str) -> dict:
    """Gather the converted files' records into the manifest (written last); DataError if a split is empty."""
    files, splits, examples = {}, {}, []
    for split in SPLITS:
        names = sorted((n for n in os.listdir(os.path.join(work, split)) if not n.startswith(".")), key=natural_key)
        count = 0
        for name in names:
            info = _shard_info(os.path.join(work, split, name))
            files[f"{split}/{name}"] = {k: info[k] for k in ("source", "sequences", "skipped", "sha256")}
            count += info["sequences"]
            examples += info["skipped_examples"]
        if count == 0:
            wanted = f"train/{VALIDATE_FILE}" if split == "validate" else f"{'test' if split == 'test' else 'train'}/traj_*.tfrecords"
            raise DataError(f"{work}: no sequences for split {split!r} (the input holds no readable {wanted})")
        splits[split] = dict(files=len(names), sequences=count)
    manifest = dict(
        generator="vp_jax.data.bair",
        format_version=FORMAT_VERSION,
        camera=camera,
        validate_file=VALIDATE_FILE,
        splits=splits,
        skipped=sum(f["skipped"] for f in files.values()),
        skipped_examples=examples[:_MAX_EXAMPLES],
        checksums="sha256 of each file's list of '<sha256>  <index>/<file>' lines (see vp_jax.data.bair.file_checksums)",
        files=files,
    )
    _write_json(os.path.join(work, MANIFEST), manifest)
    return manifest


def finished_manifest(out: str) -> dict | None:
    """The manifest of a finished conversion at ``out``, or None."""
    manifest = _read_json(os.path.join(out, MANIFEST)) if os.path.isdir(out) else None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == "vp_jax.data.bair" else None


def convert(
    release: Iterable[ReleaseFile],
    out: str,
    *,
    camera: str = "image_aux1",
    skip_bad: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Convert a release (:class:`DirRelease` or :class:`TarRelease`) into the lab layout at ``out``.

    Resumes an unfinished conversion in ``out + '.partial'``; returns the manifest (that of the
    existing conversion if ``out`` is finished already). See the module docstring.
    """
    check_camera(camera)
    out = os.path.abspath(os.path.expanduser(out))
    done = finished_manifest(out)
    if done is not None:
        if done["camera"] != camera:
            raise DataError(f"{out}: converted already with camera {done['camera']!r}; choose another --out for {camera!r}")
        return done
    if os.path.lexists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DataError(f"{out}: exists and is not a finished BAIR conversion; remove it or choose another --out")
    work = out + ".partial"
    _start_work(work, camera)
    total = getattr(release, "total", None)
    fraction = getattr(release, "fraction_read", lambda: None)
    with tqdm(total=total, desc="converting", unit=" sequences", disable=None if progress else True, smoothing=0.05) as bar:
        converter = _Converter(work, camera, skip_bad, workers, bar)
        try:
            for item in release:
                converter.convert_file(item)
                read = fraction()
                if read:  # a tar: estimate the total from the share of the tar read so far
                    bar.total = max(bar.n, round(bar.n / read))
                    bar.refresh()
        finally:
            converter.close()
    manifest = _finish(work, camera)
    os.remove(os.path.join(work, _PROGRESS))
    if os.path.isdir(out):
        os.rmdir(out)  # an empty folder (checked above)
    os.rename(work, out)
    return manifest


def verify(out: str) -> dict:
    """Recompute the checksums of a finished conversion; DataError naming the first folder that differs."""
    manifest = finished_manifest(out)
    if manifest is None:
        raise DataError(f"{os.path.join(out, MANIFEST)}: missing (not a finished BAIR conversion)")
    found = {
        f"{split}/{name}"
        for split in SPLITS
        if os.path.isdir(os.path.join(out, split))
        for name in os.listdir(os.path.join(out, split))
        if not name.startswith(".")
    }
    if found != set(manifest["files"]):
        extra, missing = sorted(found - set(manifest["files"])), sorted(set(manifest["files"]) - found)
        raise DataError(f"{out}: folders differ from {MANIFEST} (missing: {missing or 'none'}, unexpected: {extra or 'none'})")
    for key, info in manifest["files"].items():
        folder = os.path.join(out, key)
        if hashlib.sha256(file_checksums(folder).encode()).hexdigest() != info["sha256"]:
            raise DataError(f"{folder}: contents differ from the SHA-256 in {MANIFEST} (damaged or changed)")
    return manifest


# ----------------------------------------------------------------------------- command line


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vp_jax.data.bair", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tar", help="the release tar (bair_robot_pushing_dataset_v0.tar), read as a stream")
    src.add_argument("--dir", help="the extracted softmotion30_44k folder")
    src.add_argument("--verify", metavar="OUT", help="only check the checksums of a finished conversion")
    p.add_argument("--out", help="output folder (the lab layout)")
    p.add_argument("--camera", default="image_aux1", choices=CAMERAS, help="frames of this camera (SVG: image_aux1)")
    p.add_argument("--skip-bad", action="store_true", help="skip damaged records (counted) instead of stopping")
    p.add_argument("--workers", type=int, default=2, help="threads encoding PNGs")
    args = p.parse_args(argv)
    if args.verify:
        manifest = verify(args.verify)
        counts = ", ".join(f"{s} {v['sequences']}" for s, v in manifest["splits"].items())
        print(f"{args.verify}: ok ({counts} sequences; checksums match)")
        return
    if not args.out:
        p.error("--out is required with --tar or --dir")
    done = finished_manifest(args.out)
    if done is not None and done["camera"] == args.camera:
        print(f"{args.out}: conversion already complete, nothing to do")
        return
    release = TarRelease(args.tar) if args.tar else DirRelease(args.dir)
    start = time.perf_counter()
    manifest = convert(release, args.out, camera=args.camera, skip_bad=args.skip_bad, workers=args.workers)
    secs = time.perf_counter() - start
    n = sum(v["sequences"] for v in manifest["splits"].values())
    counts = ", ".join(f"{s} {v['sequences']}" for s, v in manifest["splits"].items())
    k = manifest["skipped"]
    skipped = f"; skipped {k} bad record{'s' * (k != 1)} (first: {manifest['skipped_examples'][0]})" if k else ""
    print(f"wrote {args.out}: {counts} sequences ({args.camera}){skipped} in {secs:.1f} s ({n / secs:.0f} sequences/s)")


if __name__ == "__main__":
    main()
