"""Input pipeline: open a split as arrays, cut it into batches (shuffled, restorable, prefetched).

    source = open_split(config.data, "train")            # SequenceSource: frames/cond arrays
    stats = condition_stats(source) if config.data.normalize_condition else None
    it = BatchIterator(source, config.train.batch_size, config.n_past + config.n_future, config.seed,
                       Sampling(random_offset=config.data.random_offset), cond_stats=stats)
    batch = next(it)      # {'frames': uint8 [B, T, 64, 64, 3], 'cond': float32 [B, T, 7]}
    state = it.get_state()   # {'epoch': e, 'position': p}: save with the checkpoint
    it.set_state(state)      # later: continues with exactly the batch that would have come next

    for batch in eval_batches(open_split(config.data, "test"), 32, config.n_eval):
        ...                  # every sequence once, in order; the last batch padded, with 'mask'

Sources. 'lab' and 'pushbot' read the folder layout through a packed cache
(:mod:`vp_jax.data.cache`) built on first use at ``<data.cache_dir>/<source>-<split>``, or at
``<data.root>/.cache/<split>`` when ``data.cache_dir`` is empty, so PNGs are decoded once, not
every epoch; 'pushbot' first generates the set if ``data.root`` lacks it. 'bair' reads the BAIR
release's TFRecords (:mod:`vp_jax.data.bair`) into a packed cache the same way, at
``<data.cache_dir>/bair-<camera>-<split>`` or ``<data.root>/.cache/<camera>-<split>``. 'tfds'
reads the ArrayRecord copy at random (decoding as it goes) unless ``data.cache_dir`` is set, in
which case it is packed too. A cache is reused as long as its manifest names the same source,
root, split (and camera); delete it to rebuild after changing the files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
from typing import Any

import numpy as np

from vp_jax.data import cache, pushbot
from vp_jax.data.tfds_bair import LazyArray, TfdsBair
from vp_jax.errors import DataError

log = logging.getLogger(__name__)

_END = object()


@dataclasses.dataclass
class SequenceSource:
    """One split as arrays.

    Attributes:
      frames: uint8 ``[N, S, 64, 64, 3]`` array-like (a read-only memory map for a cache).
      cond: float32 ``[N, S, 7]`` array-like: ``[action (4), end-effector position (3)]``, raw.
      name: what it is, for messages (``lab:/data/processed_data/train``).
      skipped: bad sequences left out (``data.skip_bad``).
      manifest: the cache manifest, or None for a source read directly.
      reader: optional ``reader[i] -> (frames [S, ...], cond [S, 7])`` that reads both at once
        (avoids decoding a TFDS record twice); None for arrays.
    """

    frames: Any
    cond: Any
    name: str = ""
    skipped: int = 0
    manifest: dict | None = None
    reader: Any = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def num_frames(self) -> int:
        """S, the frames stored per sequence."""
        return int(self.frames.shape[1])

    def window(self, i: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``[length, 64, 64, 3]`` and cond ``[length, 7]`` of sequence i from frame ``start``."""
        if self.reader is not None:
            f, c = self.reader[int(i)]
            return f[start : start + length], c[start : start + length]
        return self.frames[i, start : start + length], self.cond[i, start : start + length]


# ----------------------------------------------------------------------------- opening a split


def cache_path(data_cfg, split: str) -> str:
    """Where the packed cache of ``split`` lives for this data config ('' for uncached TFDS)."""
    if data_cfg.cache_dir:
        tag = f"{data_cfg.source}-{data_cfg.camera}" if data_cfg.source in cache.CAMERA_SOURCES else data_cfg.source
        return os.path.join(os.path.expanduser(data_cfg.cache_dir), f"{tag}-{split}")
    if data_cfg.source == "tfds":
        return ""
    name = f"{data_cfg.camera}-{split}" if data_cfg.source in cache.CAMERA_SOURCES else split
    return os.path.join(os.path.expanduser(data_cfg.root), ".cache", name)


def _get(cfg, key, default):
    """A config field that older configs may lack."""
    try:
        return cfg[key]
    except (KeyError, AttributeError):
        return default


def open_split(data_cfg, split: str) -> SequenceSource:
    """Open ``split`` ('train', 'validate' or 'test') of ``config.data`` as a :class:`SequenceSource`.

    Builds the packed cache on first use (and generates pushbot data if missing); see the module
    docstring. With ``data.skip_bad`` bad sequences are left out and counted in ``.skipped``
    (logged as a warning); without it the first bad one raises :class:`DataError`.
    """
    source, root = data_cfg.source, os.path.expanduser(data_cfg.root)
    skip_bad = bool(_get(data_cfg, "skip_bad", False))
    tfds_validate = int(_get(data_cfg, "tfds_validate", 256))
    if source not in cache.SOURCES:
        raise DataError(f"config.data.source = {source!r}: expected one of {cache.SOURCES}")
    if source == "pushbot":
        if pushbot.ensure_pushbot(root, pushbot.Spec(**data_cfg.pushbot)):
            log.info("generated pushbot data at %s", root)

    path = cache_path(data_cfg, split)
    if not path:  # TFDS read directly
        reader = TfdsBair(root, split, camera=data_cfg.camera, validate_count=tfds_validate)
        src = SequenceSource(
            LazyArray(reader, "frames"), LazyArray(reader, "cond"), name=f"tfds:{reader.name}", reader=reader
        )
    else:
        src = _open_cached(data_cfg, split, path, skip_bad, tfds_validate)
    seq_len = int(_get(data_cfg, "seq_len", src.num_frames))
    if src.num_frames < seq_len:
        raise DataError(f"{src.name}: sequences have {src.num_frames} frames, config.data.seq_len = {seq_len} needed")
    return src


def _open_cached(data_cfg, split: str, path: str, skip_bad: bool, tfds_validate: int) -> SequenceSource:
    """Open (building on first use) the packed cache of a split at ``path``."""
    source, root = data_cfg.source, os.path.expanduser(data_cfg.root)
    expected = dict(source=source, root=cache.normalize_root(root), split=split)
    if source in cache.CAMERA_SOURCES:
        expected["camera"] = data_cfg.camera
    if not os.path.isfile(os.path.join(path, cache.MANIFEST_FILE)):
        log.info("building the %s cache of %s/%s at %s (once)", source, root, split, path)
        try:
            reading = cache.Reading(camera=data_cfg.camera, skip_bad=skip_bad, tfds_validate=tfds_validate)
            cache.build_cache(source, root, split, path, reading, progress=True)
        except PermissionError as err:  # e.g. a read-only data root and no data.cache_dir
            raise DataError(f"{path}: cannot write the cache ({err.strerror}); set data.cache_dir to a writable folder") from None
    frames, cond, manifest = cache.open_cache(path)
    found = {k: manifest.get(k) for k in expected}
    if found != expected:
        raise DataError(
            f"{os.path.join(path, cache.MANIFEST_FILE)}: cache built from {found}, config wants {expected}; "
            "delete the cache or set data.cache_dir elsewhere"
        )
    if manifest["skipped"] and not skip_bad:
        raise DataError(
            f"{os.path.join(path, cache.MANIFEST_FILE)}: {manifest['skipped']} bad sequences were skipped when the "
            f"cache was built (first: {manifest['skipped_examples'][0]}); set data.skip_bad=True or fix the data"
        )
    if manifest["skipped"]:
        log.warning("%s/%s: skipped %d bad sequences (first: %s)", root, split, manifest["skipped"], manifest["skipped_examples"][0])
    return SequenceSource(frames, cond, name=f"{source}:{root}/{split}", skipped=manifest["skipped"], manifest=manifest)


# ----------------------------------------------------------------------------- condition statistics


def condition_stats(source: SequenceSource, chunk: int = 4096) -> dict:
    """Per-dimension mean and std of ``cond`` over all frames of ``source`` (use the training split).

    Returns ``{'mean': float32 [7], 'std': float32 [7]}``; a constant dimension gets std 1 so
    standardising leaves it at 0 instead of dividing by zero.
    """
    n = len(source)
    total = np.zeros(source.cond.shape[-1])
    total_sq = np.zeros_like(total)
    count = 0
    for start in range(0, n, chunk):
        c = np.asarray(source.cond[start : start + chunk], np.float64).reshape(-1, total.shape[0])
        total += c.sum(0)
        total_sq += (c * c).sum(0)
        count += len(c)
    if count == 0:
        raise DataError(f"{source.name}: no sequences to compute condition statistics on")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return dict(mean=mean.astype(np.float32), std=std.astype(np.float32))


# ----------------------------------------------------------------------------- batches


def standardize(cond: np.ndarray, cond_stats: dict | None, out: np.ndarray | None = None) -> np.ndarray:
    """``(cond - mean) / std`` with the training split's :func:`condition_stats` (float32, as
    every batch gets it); ``cond`` itself when ``cond_stats`` is None. ``out``: write in place."""
    if cond_stats is None:
        return cond
    mean, inv_std = _mean_and_inverse_std(cond_stats)
    out = np.subtract(cond, mean, out=out, dtype=np.float32)
    return np.multiply(out, inv_std, out=out)


def _mean_and_inverse_std(cond_stats: dict) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(cond_stats["mean"], np.float32),
            np.float32(1.0) / np.asarray(cond_stats["std"], np.float32))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Which windows a :class:`BatchIterator` draws, in which order.

    shuffle: reshuffle each epoch; False visits sequences in order.
    drop_remainder: drop the last ``N % B`` sequences of an epoch (training); False keeps a
      smaller last batch (or a padded one, see ``pad_last``).
    random_offset: start each window at a random frame in ``[0, S - seq_len]``.
    start: first frame of each window when ``random_offset`` is False.
    pad_last: with ``drop_remainder=False``, pad the last batch to B by repeating its last
      sequence and add ``'mask'`` (True = real sequence) to every batch.
    rows: a ``slice`` of each batch's B rows: only these sequences are read and yielded (one
      process's share of a global batch in a multi-process run,
      :func:`vp_jax.runtime.parallel.process_batch_slice`); the order, the epochs and the state are
      those of the whole batch, so :meth:`BatchIterator.get_state` / ``set_state`` carry over
      between runs with different numbers of processes.
    """

    shuffle: bool = True
    drop_remainder: bool = True
    random_offset: bool = False
    start: int = 0
    pad_last: bool = False
    rows: slice | None = None


#: Every sequence once, in order, from its first frame; the last batch padded (with ``'mask'``).
EVALUATION = Sampling(shuffle=False, drop_remainder=False, pad_last=True)


class _BatchMaker:
    """The pure part of :class:`BatchIterator`: batch (epoch, position) -> arrays.

    Kept apart so that the prefetch thread holds this object, not the iterator: an iterator
    that is dropped is garbage-collected and its ``__del__`` stops the thread.
    """

    def __init__(self, source, batch_size: int, seq_len: int, seed: int, sampling: Sampling, cond_stats):
        self.source, self.batch_size, self.seq_len, self.seed = source, batch_size, seq_len, int(seed)
        self.shuffle, self.random_offset, self.start = sampling.shuffle, sampling.random_offset, sampling.start
        self.pad_last, self.rows = sampling.pad_last and not sampling.drop_remainder, sampling.rows
        self.standardizer = None if cond_stats is None else _mean_and_inverse_std(cond_stats)  # once, not per batch
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._plan is not None and self._plan[0] == epoch:
                return self._plan[1], self._plan[2]
            n = len(self.source)
            rng = np.random.default_rng([self.seed % 2**63, epoch])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            if self.random_offset:
                offsets = rng.integers(0, self.source.num_frames - self.seq_len + 1, size=n)
            else:
                offsets = np.full(n, self.start)
            self._plan = (epoch, order, offsets)
            return order, offsets

    def batch_indices(self, epoch: int, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(sequence ids, window starts, real) of the rows of batch ``position`` this iterator
        loads; ``real`` (True = a real sequence, not padding) only with ``pad_last``."""
        order, offsets = self.epoch_plan(epoch)
        b = self.batch_size
        idx, offs = order[position * b : (position + 1) * b], offsets[position * b : (position + 1) * b]
        real = None
        if self.pad_last:
            real = np.arange(b) < len(idx)
            if len(idx) < b:
                idx = np.concatenate([idx, np.repeat(idx[-1:], b - len(idx))])
                offs = np.concatenate([offs, np.repeat(offs[-1:], b - len(offs))])
        if self.rows is not None:
            idx, offs = idx[self.rows], offs[self.rows]
            real = None if real is None else real[self.rows]
        return idx, offs, real

    def make_batch(self, epoch: int, position: int) -> dict:
        idx, offs, real = self.batch_indices(epoch, position)
        frames = np.empty((len(idx), self.seq_len, 64, 64, 3), np.uint8)
        cond = np.empty((len(idx), self.seq_len, self.source.cond.shape[-1]), np.float32)
        # Row by row: each window is one contiguous block of the memory map, so this is a plain
        # copy per sequence, faster than numpy's fancy indexing of a memmap.
        for k, (i, o) in enumerate(zip(idx.tolist(), offs.tolist())):
            frames[k], cond[k] = self.source.window(i, o, self.seq_len)
        if self.standardizer is not None:  # standardize(), in place
            mean, inv_std = self.standardizer
            cond -= mean
            cond *= inv_std
        batch = {"frames": frames, "cond": cond}
        if self.pad_last:
            batch["mask"] = real
        return batch


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless told to stop; False if stopped."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _prefetch(maker: _BatchMaker, steps_per_epoch, epochs, epoch, position, out, stop) -> None:
    """Background thread: put ``(epoch, position, batch)`` in order, then ``_END`` (or an exception)."""
    try:
        while not stop.is_set():
            if epochs is not None and epoch >= epochs:
                _put(out, _END, stop)
                return
            if not _put(out, (epoch, position, maker.make_batch(epoch, position)), stop):
                return
            position += 1
            if position >= steps_per_epoch:
                epoch, position = epoch + 1, 0
    except BaseException as err:  # hand the error to the consumer
        _put(out, err, stop)


class BatchIterator:
    """Batches of fixed-length windows of a :class:`SequenceSource`.

    Yields ``{'frames': uint8 [B, seq_len, 64, 64, 3], 'cond': float32 [B, seq_len, 7]}`` (plus
    ``'mask': bool [B]`` with ``pad_last``). Epoch ``e`` visits the sequences in the order
    ``default_rng([seed, e]).permutation(N)`` (or in order without ``shuffle``); windows start at
    frame ``start`` (0: the lab's first ``seq_len`` frames) or, with ``random_offset``, at an
    offset drawn from the same generator. So every batch is a function of
    ``(seed, epoch, position)`` alone, which is what makes :meth:`get_state` / :meth:`set_state`
    exact.

    Args:
      source: the split.
      batch_size: B.
      seq_len: frames per window (<= the source's S).
      seed: shuffling/offset seed (use ``config.seed``).
      sampling: order, windows, last batch and rows (:class:`Sampling`).
      cond_stats: ``{'mean', 'std'}`` from :func:`condition_stats` to standardise ``cond``; None = raw.
      prefetch: batches prepared ahead by a background thread (0 = none, build on demand).
      epochs: stop after this many epochs (None = repeat forever).
    """

    def __init__(self, source: SequenceSource, batch_size: int, seq_len: int, seed: int, sampling: Sampling = Sampling(),
                 cond_stats: dict | None = None, prefetch: int = 2, epochs: int | None = None):
        n, s, start, drop_remainder = len(source), source.num_frames, sampling.start, sampling.drop_remainder
        if batch_size < 1:
            raise DataError(f"batch_size {batch_size}: expected >= 1")
        if seq_len < 1 or start < 0 or start + seq_len > s:
            raise DataError(f"{source.name}: sequences have {s} frames, frames {start}..{start + seq_len - 1} needed")
        if drop_remainder and n < batch_size:
            raise DataError(f"{source.name}: {n} sequences, fewer than one batch of {batch_size}")
        if n == 0:
            raise DataError(f"{source.name}: no sequences")
        self.source, self.batch_size, self.seq_len, self.seed = source, batch_size, seq_len, int(seed)
        self.epochs, self.prefetch = epochs, max(0, int(prefetch))
        self.steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
        self._maker = _BatchMaker(source, batch_size, seq_len, seed, sampling, cond_stats)
        self._epoch, self._position = 0, 0  # the next batch the consumer gets
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sequence order int64 [N], window start int64 [N]) of an epoch: a pure function of (seed, epoch)."""
        return self._maker.epoch_plan(epoch)

    def make_batch(self, epoch: int, position: int) -> dict:
        """Batch ``position`` of ``epoch`` as numpy arrays (no prefetch, no device transfer)."""
        return self._maker.make_batch(epoch, position)

    def batch_indices(self, epoch: int, position: int) -> np.ndarray:
        """The sequence ids (rows of the source) of batch ``position`` of ``epoch`` that this
        iterator reads (its ``rows`` of them)."""
        return self._maker.batch_indices(epoch, position)[0]

    def _advance(self, epoch: int, position: int) -> tuple[int, int]:
        position += 1
        return (epoch + 1, 0) if position >= self.steps_per_epoch else (epoch, position)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.epochs is not None and self._epoch >= self.epochs:
            raise StopIteration
        if self.prefetch == 0:
            batch = self._maker.make_batch(self._epoch, self._position)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self.prefetch)
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=_prefetch,
                    args=(self._maker, self.steps_per_epoch, self.epochs, self._epoch, self._position, self._queue, self._stop),
                    name="vp_jax-prefetch",
                    daemon=True,
                )
                self._thread.start()
            item = self._queue.get()
            if item is _END:
                self.close()
                raise StopIteration
            if isinstance(item, BaseException):
                self.close()
                raise item
            epoch, position, batch = item
            assert (epoch, position) == (self._epoch, self._position), "prefetch out of step"
        self._epoch, self._position = self._advance(self._epoch, self._position)
        return batch

    def get_state(self) -> dict:
        """``{'epoch', 'position'}`` of the next batch :meth:`__next__` returns (plain ints)."""
        return dict(epoch=int(self._epoch), position=int(self._position))

    def set_state(self, state: dict) -> None:
        """Continue from a :meth:`get_state` result: the next batch is the one that came next then."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise DataError(
                f"iterator state {dict(state)}: expected epoch >= 0 and 0 <= position < {self.steps_per_epoch}"
            )
        self.close()
        self._epoch, self._position = epoch, position

    def close(self) -> None:
        """Stop the prefetch thread (it restarts on the next ``next()``)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = self._queue = self._stop = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def eval_batches(source: SequenceSource, batch_size: int, seq_len: int, cond_stats: dict | None = None,
                 sampling: Sampling = EVALUATION, prefetch: int = 2) -> BatchIterator:
    """Every sequence once, in order, first ``seq_len`` frames; the last batch padded with
    ``'mask'`` (:data:`EVALUATION`), or smaller with ``Sampling(shuffle=False, drop_remainder=False)``."""
    return BatchIterator(source, batch_size, seq_len, seed=0, sampling=sampling, cond_stats=cond_stats,
                         prefetch=prefetch, epochs=1)
