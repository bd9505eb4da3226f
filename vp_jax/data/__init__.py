"""Data: readers of the lab folders (``lab_folders``), the BAIR release's TFRecords (``bair``,
``records``) and TFDS BAIR (``tfds_bair``), the pushbot generator (``pushbot``), ``inspect``, the
packed cache (``cache``) and the batch pipeline (``pipeline``: most users need only
:func:`~vp_jax.data.pipeline.open_split` and :class:`~vp_jax.data.pipeline.BatchIterator`).

Importing this package imports none of its modules, so each runs as ``python -m vp_jax.data.<name>``;
none of them imports TensorFlow Datasets or JAX until it is used.
"""
