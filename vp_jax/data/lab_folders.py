"""Reader of the NYCU lab's folder layout of BAIR robot pushing (docs/model.md).

Layout::

    ROOT/{train,validate,test}/<d1>/<d2>/
        0.png ... 29.png            64x64 RGB, one per frame
        actions.csv                 30 rows x 4 floats, comma separated, no header
        endeffector_positions.csv   30 rows x 3 floats, comma separated, no header

``<d1>`` is the source tfrecord's name (``traj_0_to_255.tfrecords``), ``<d2>`` the example index.
A sequence is returned as ``frames`` uint8 ``[T, 64, 64, 3]`` and ``cond`` float32 ``[T, 7]`` =
``concat([actions, positions], -1)`` (the lab's condition, raw, no normalisation).

Sequences are listed in *natural* order of ``(<d1>, <d2>)`` (``traj_256_to_511`` after
``traj_0_to_255``, ``10`` after ``9``), independent of the filesystem's listing order, so an
index means the same sequence on every machine.

Every problem with the input raises :class:`~vp_jax.errors.DataError` with one line that names
the file and what was expected. The pushbot generator and the BAIR converter write this same
layout through :func:`write_sequence`, so this reader serves all three.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import (
    Image,  # imageio's own PNG backend; used directly because it is ~2x faster to open
)

from vp_jax.errors import DataError

SPLITS = ("train", "validate", "test")
NUM_FRAMES = 30  # frames per sequence in the lab's data
IMAGE_SIZE = 64
ACTION_DIM = 4
POSITION_DIM = 3
COND_DIM = ACTION_DIM + POSITION_DIM
ACTIONS_CSV = "actions.csv"
POSITIONS_CSV = "endeffector_positions.csv"

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically: ``a2 < a10``, ``9 < 10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name) if part)


def split_dir(root: str, split: str) -> str:
    """``ROOT/<split>``, checked to exist (DataError otherwise)."""
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {SPLITS}")
    path = os.path.join(root, split)
    if not os.path.isdir(root):
        raise DataError(f"{root}: data root not found (expected folders {', '.join(SPLITS)} in it)")
    if not os.path.isdir(path):
        raise DataError(f"{path}: split folder not found (expected {path}/<d1>/<d2>/0.png ...)")
    return path


def list_sequences(root: str, split: str) -> list[str]:
    """Sequence folders ``ROOT/<split>/<d1>/<d2>`` in natural order.

    Hidden entries (``.cache``, ``.tmp``) are ignored. An empty split is an error.
    """
    base = split_dir(root, split)
    out = []
    for d1 in sorted((e for e in os.listdir(base) if not e.startswith(".")), key=natural_key):
        p1 = os.path.join(base, d1)
        if not os.path.isdir(p1):
            continue
        for d2 in sorted((e for e in os.listdir(p1) if not e.startswith(".")), key=natural_key):
            p2 = os.path.join(p1, d2)
            if os.path.isdir(p2):
                out.append(p2)
    if not out:
        raise DataError(f"{base}: no sequences found (expected {base}/<d1>/<d2>/0.png ... and CSVs)")
    return out


def read_png(path: str) -> np.ndarray:
    """One frame as uint8 ``[64, 64, 3]``; DataError if missing, unreadable, wrongly sized or not RGB."""
    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            if size == (IMAGE_SIZE, IMAGE_SIZE) and mode == "RGB":
                arr = np.asarray(img)  # decodes; a truncated file fails here
    except FileNotFoundError:
        raise DataError(f"{path}: missing (expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNG)") from None
    except Exception as err:  # PIL raises many types for damaged files (OSError, SyntaxError, zlib.error)
        raise DataError(f"{path}: not a readable PNG ({type(err).__name__}: {err})".replace("\n", " ")) from None
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path}: expected {IMAGE_SIZE}x{IMAGE_SIZE} pixels, got {size[0]}x{size[1]}")
    if mode != "RGB":
        channels = {"L": 1, "LA": 2, "RGBA": 4, "P": "palette", "I": 1, "I;16": 1, "1": 1}.get(mode, mode)
        raise DataError(f"{path}: expected 3 channels (RGB), got {channels} (mode {mode})")
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):  # paranoia: PIL and numpy disagree on nothing here
        raise DataError(f"{path}: expected shape (64, 64, 3), got {arr.shape}")
    return arr


def read_csv(path: str, rows: int, cols: int) -> np.ndarray:
    """A headerless comma-separated float table as float32 ``[rows, cols]``.

    Hand-parsed (not ``np.loadtxt``/pandas) because it is ~10x faster on 30-line files and lets
    the error name the offending line. Blank lines are ignored; NaN and inf are refused.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (expected {rows} rows x {cols} comma-separated numbers)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != rows:
        raise DataError(f"{path}: expected {rows} rows x {cols} columns, got {len(lines)} rows")
    out = np.empty((rows, cols), np.float32)
    for i, line in enumerate(lines):
        fields = line.split(",")
        if len(fields) != cols:
            raise DataError(f"{path}: line {i + 1}: expected {cols} comma-separated numbers, got {len(fields)}")
        for j, field in enumerate(fields):
            try:
                value = float(field)
            except ValueError:
                raise DataError(f"{path}: line {i + 1}: {field.strip()!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{path}: line {i + 1}: {field.strip()!r} is not a finite number")
            out[i, j] = value
    return out


def read_sequence(seq_dir: str, num_frames: int = NUM_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """One sequence folder → (frames uint8 ``[T, 64, 64, 3]``, cond float32 ``[T, 7]``), T = num_frames.

    The CSVs must have exactly ``num_frames`` rows (one per frame).
    """
    # CSVs first: they are cheap, and a bad one should fail before 30 PNG decodes.
    actions = read_csv(os.path.join(seq_dir, ACTIONS_CSV), num_frames, ACTION_DIM)
    positions = read_csv(os.path.join(seq_dir, POSITIONS_CSV), num_frames, POSITION_DIM)
    frames = np.empty((num_frames, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for t in range(num_frames):
        path = os.path.join(seq_dir, f"{t}.png")
        if t > 0 and not os.path.exists(path):
            if os.path.exists(os.path.join(seq_dir, f"{t + 1}.png")):
                raise DataError(f"{path}: missing (expected frames 0.png ... {num_frames - 1}.png)")
            raise DataError(
                f"{path}: missing: the sequence has only {t} frames, {num_frames} needed (0.png ... {num_frames - 1}.png)"
            )
        frames[t] = read_png(path)
    return frames, np.concatenate([actions, positions], axis=1)


class LabFolders:
    """Random-access view of one split: ``len``, ``[i] -> (frames [T,64,64,3] uint8, cond [T,7] f32)``.

    Reads PNGs on every access: use the packed cache (:mod:`vp_jax.data.cache`) for training.
    """

    def __init__(self, root: str, split: str, num_frames: int = NUM_FRAMES):
        self.root, self.split, self.num_frames = root, split, num_frames
        self.paths = list_sequences(root, split)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return read_sequence(self.paths[i], self.num_frames)

    def iter_sequences(
        self, skip_bad: bool = False, workers: int = 2
    ) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray] | DataError]]:
        """Yield ``(path, (frames, cond))`` in order; bad sequences raise, or with ``skip_bad``
        are yielded as ``(path, DataError)`` so the caller can count and report them.

        ``workers`` threads decode ahead (PIL and zlib release the GIL while decoding).
        """

        def load(path):
            try:
                return read_sequence(path, self.num_frames)
            except DataError as err:
                if not skip_bad:
                    raise
                return err

        if workers <= 1:
            for path in self.paths:
                yield path, load(path)
            return
        with ThreadPoolExecutor(workers) as pool:
            # Bounded look-ahead keeps memory flat on a 43k-sequence split.
            window = 4 * workers
            futures = [pool.submit(load, p) for p in self.paths[:window]]
            for i, path in enumerate(self.paths):
                result = futures[i].result()
                futures[i] = None
                if i + window < len(self.paths):
                    futures.append(pool.submit(load, self.paths[i + window]))
                yield path, result


# ----------------------------------------------------------------------------- writing


def encode_png(image: np.ndarray) -> bytes:
    """A standard 8-bit RGB PNG of uint8 ``[H, W, 3]`` (no row filter, zlib level 1).

    Written by hand because PNG encoding is most of a writer's time: this takes ~0.18 ms a
    frame against ~0.6 ms through imageio/Pillow at the same compression (files within 3 %), and
    its bytes depend only on zlib, not on the imaging library's version.
    """
    h, w, _ = image.shape
    raw = np.empty((h, 1 + 3 * w), np.uint8)
    raw[:, 0] = 0  # filter type None for every row
    raw[:, 1:] = image.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit, colour type 2 (RGB), no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + chunk(b"IEND", b"")


def exact_number(value) -> str:
    """A float as text that :func:`read_csv` reads back to the same float32 (shortest float64 repr)."""
    return repr(float(value))


def encode_csv(table: np.ndarray, number: Callable[[float], str] = exact_number) -> bytes:
    """A headerless comma-separated table, one line per row."""
    return "".join(",".join(number(v) for v in row) + "\n" for row in table).encode()


def sequence_files(
    frames: np.ndarray, actions: np.ndarray, positions: np.ndarray, number: Callable[[float], str] = exact_number
) -> list[tuple[str, bytes]]:
    """The files of one sequence folder as ``(name, bytes)`` in a fixed order: ``0.png`` ...
    ``{T-1}.png``, ``actions.csv``, ``endeffector_positions.csv``.

    frames uint8 ``[T, 64, 64, 3]``, actions ``[T, 4]``, positions ``[T, 3]``; ``number`` formats
    the CSV values (default: exact, so the reader returns the same float32 values).
    """
    files = [(f"{t}.png", encode_png(frame)) for t, frame in enumerate(frames)]
    files.append((ACTIONS_CSV, encode_csv(actions, number)))
    files.append((POSITIONS_CSV, encode_csv(positions, number)))
    return files


def write_sequence(seq_dir: str, files: list[tuple[str, bytes]]) -> None:
    """Write :func:`sequence_files` into ``seq_dir`` (created, with its parents)."""
    os.makedirs(seq_dir, exist_ok=True)
    for name, data in files:
        with open(os.path.join(seq_dir, name), "wb") as f:
            f.write(data)


def contact_sheet(videos: list[np.ndarray], frames=None, scale: int = 2) -> np.ndarray:
    """uint8 ``[H, W, 3]`` image: one row per video (uint8 ``[T, 64, 64, 3]``), the chosen frames
    (default every third) across, each framed by a 1-pixel white border, enlarged ``scale`` times."""
    if frames is None:
        frames = range(0, len(videos[0]), 3)
    rows = [
        np.concatenate([np.pad(video[t], ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in frames], axis=1)
        for video in videos
    ]
    grid = np.concatenate(rows, axis=0)
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
