"""Reader of TFDS ``bair_robot_pushing_small`` (2.0.0) through ``tfds.data_source``, no TensorFlow.

Each example is a 30-step sequence with ``image_main`` and ``image_aux1`` (64, 64, 3) uint8,
``action`` (4,) float32 and ``endeffector_pos`` (3,) float32. A sequence is returned as
``frames`` uint8 ``[30, 64, 64, 3]`` from one camera (``image_aux1`` by default, the camera SVG
and later papers use; ``config.data.camera = 'image_main'`` selects the other) and ``cond``
float32 ``[30, 7]`` = ``concat([action, endeffector_pos], -1)``, as the lab folders give them.

Splits. TFDS has ``train`` (43,264) and ``test`` (256) only. vp_jax holds out the **last
``validate_count`` (256) examples of TFDS train** as ``validate`` and trains on the rest:

    train    = TFDS train[: -validate_count]      (43,008)
    validate = TFDS train[-validate_count:]       (256, the lab's validate size)
    test     = TFDS test                          (256)

Preparing the ArrayRecord copy (once, on a machine with TensorFlow and network access)::

    pip install tensorflow tensorflow-datasets
    tfds build bair_robot_pushing_small --file_format=array_record --data_dir ~/tensorflow_datasets
    # or in Python:
    #   import tensorflow_datasets as tfds
    #   tfds.builder('bair_robot_pushing_small', data_dir='~/tensorflow_datasets',
    #                file_format='array_record').download_and_prepare()

then copy ``~/tensorflow_datasets/bair_robot_pushing_small/`` to the training machine and point
``config.data.root`` at the folder that contains it. Reading needs only ``tensorflow-datasets``
and ``array_record``. A TFRecord-format copy (the TFDS default) cannot be read at random and
is refused with a message saying so.

Random access decodes both cameras' PNGs for every example (~2 ms a sequence): for training,
pack a split once with ``python -m vp_jax.data.prepare --source tfds`` or set
``config.data.cache_dir``.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator

import numpy as np

from vp_jax.errors import DataError

DATASET = "bair_robot_pushing_small"
CAMERAS = ("image_aux1", "image_main")
VALIDATE_COUNT = 256
NUM_FRAMES = 30


def _open_data_source(data_dir: str, tfds_split: str):
    """``tfds.data_source`` for one TFDS split, with a one-line DataError when it is not there."""
    import tensorflow_datasets as tfds  # imported here: ~0.5 s, and only this source needs it

    data_dir = os.path.expanduser(data_dir) if data_dir else None
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # tfds warns about missing dataset_info.json before failing
    try:
        return tfds.data_source(DATASET, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as err:  # tfds raises AssertionError, NotImplementedError, DatasetNotFoundError...
        shown = data_dir or "~/tensorflow_datasets"
        where = os.path.join(os.path.expanduser(shown), DATASET)
        if not os.path.isdir(where):
            reason = "not found"
        elif not glob.glob(os.path.join(where, "*", f"*{tfds_split}.array_record*")):
            reason = f"holds no ArrayRecord files of split {tfds_split!r} (a TFRecord copy cannot be read at random)"
        else:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"{where}: {reason}; prepare an ArrayRecord copy of {DATASET} once with TensorFlow: "
            f"tfds build {DATASET} --file_format=array_record --data_dir {shown}"
        ) from None
    finally:
        absl_log.setLevel(level)


def example_to_arrays(example: dict, camera: str = "image_aux1", name: str = DATASET) -> tuple[np.ndarray, np.ndarray]:
    """One TFDS example → (frames uint8 ``[T, 64, 64, 3]``, cond float32 ``[T, 7]``).

    Accepts each sequence feature either stacked (an array with a leading T axis, as
    ``tfds.testing.mock_data`` returns it) or as a list of T per-step arrays (as a real
    ArrayRecord read returns it).
    """
    try:
        frames = np.asarray(np.stack(example[camera]) if isinstance(example[camera], (list, tuple)) else example[camera])
        action = np.asarray(np.stack(example["action"]) if isinstance(example["action"], (list, tuple)) else example["action"])
        pos = example["endeffector_pos"]
        pos = np.asarray(np.stack(pos) if isinstance(pos, (list, tuple)) else pos)
    except KeyError as err:
        raise DataError(f"{name}: example has no feature {err} (expected {camera}, action, endeffector_pos)") from None
    t = len(frames)
    if frames.shape != (t, 64, 64, 3) or frames.dtype != np.uint8:
        raise DataError(f"{name}: {camera} is {frames.dtype} {frames.shape}, expected uint8 ({t}, 64, 64, 3)")
    if action.shape != (t, 4) or pos.shape != (t, 3):
        raise DataError(f"{name}: action {action.shape} / endeffector_pos {pos.shape}, expected ({t}, 4) / ({t}, 3)")
    cond = np.concatenate([action, pos], axis=1).astype(np.float32)
    if not np.isfinite(cond).all():
        raise DataError(f"{name}: action or endeffector_pos holds NaN or inf")
    return frames, cond


class TfdsBair:
    """Random-access view of one vp_jax split of TFDS BAIR: ``len``, ``[i] -> (frames, cond)``.

    Args:
      data_dir: the TFDS data dir holding ``bair_robot_pushing_small/2.0.0`` (ArrayRecord).
      split: 'train', 'validate' or 'test' (see the module docstring for the mapping).
      camera: 'image_aux1' (default, SVG's) or 'image_main'.
      validate_count: examples at the end of TFDS train held out as 'validate'.
    """

    def __init__(self, data_dir: str, split: str, camera: str = "image_aux1", validate_count: int = VALIDATE_COUNT):
        if camera not in CAMERAS:
            raise DataError(f"camera {camera!r}: expected one of {CAMERAS}")
        if split not in ("train", "validate", "test"):
            raise DataError(f"split {split!r}: expected 'train', 'validate' or 'test'")
        self.camera, self.split = camera, split
        self.name = f"{DATASET}:{split}"
        self.source = _open_data_source(data_dir, "test" if split == "test" else "train")
        n = len(self.source)
        if split == "test":
            self.start, self.stop = 0, n
        else:
            if not 0 < validate_count < n:
                raise DataError(
                    f"data.tfds_validate = {validate_count}: expected 1 .. {n - 1} (TFDS train has {n} examples)"
                )
            self.start, self.stop = (0, n - validate_count) if split == "train" else (n - validate_count, n)
        self.num_frames = NUM_FRAMES

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        # Element by element: the mocked source (tfds.testing.mock_data) has no working __getitems__.
        return example_to_arrays(self.source[self.start + i], self.camera, f"{self.name}[{i}]")

    def iter_sequences(self, skip_bad: bool = False) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray] | DataError]]:
        """Yield ``(name, (frames, cond))`` in order; with ``skip_bad`` a bad example is ``(name, DataError)``."""
        for i in range(len(self)):
            name = f"{self.name}[{i}]"
            try:
                yield name, self[i]
            except DataError as err:
                if not skip_bad:
                    raise
                yield name, err


class LazyArray:
    """Read-only array-like over a :class:`TfdsBair` field ('frames' or 'cond'), decoded on access.

    Supports ``len``, ``shape``, ``dtype`` and indexing whose first index is an int, a slice or
    an integer array; e.g. ``frames[i, :12]``.
    """

    def __init__(self, reader: TfdsBair, field: str):
        self.reader, self.field = reader, field
        tail = (reader.num_frames, 64, 64, 3) if field == "frames" else (reader.num_frames, 7)
        self.shape = (len(reader),) + tail
        self.dtype = np.dtype(np.uint8 if field == "frames" else np.float32)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _row(self, i: int) -> np.ndarray:
        frames, cond = self.reader[int(i)]
        return frames if self.field == "frames" else cond

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            return self._row(first if first >= 0 else first + len(self))[rest]
        idx = np.atleast_1d(np.arange(len(self))[first])
        rows = [self._row(i) for i in idx]
        out = np.stack(rows) if rows else np.empty((0,) + self.shape[1:], self.dtype)
        return out[(slice(None), *rest)]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)
