"""Data: readers of the lab folders, the BAIR release's TFRecords and TFDS BAIR, the BAIR
converter, the pushbot generator, ``inspect``, the packed cache and the batch pipeline. Most users
need only :func:`open_split` and :class:`BatchIterator`.

Importing this package does not import TensorFlow Datasets or JAX (both are loaded on use).
"""

from vp_jax.data.pipeline import (
    BatchIterator,
    SequenceSource,
    cache_path,
    condition_stats,
    eval_batches,
    open_split,
)

__all__ = ["BatchIterator", "SequenceSource", "cache_path", "condition_stats", "eval_batches", "open_split"]
