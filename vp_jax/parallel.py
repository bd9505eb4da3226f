"""Data parallelism: one ``jax.sharding.Mesh`` over all devices with a ``data`` axis.

The batch is split along its first axis over the ``data`` axis; parameters, BatchNorm statistics
and the optimiser state are replicated. Nothing else changes: the jitted train step and
generation function are the same functions as on one device. Given sharded inputs, ``jit``
partitions the computation itself (GSPMD) and inserts the cross-device reductions where the
program needs them -- the batch means of BatchNorm, the batch-mean loss and so the gradients --
so BatchNorm sees the **global** batch exactly as on one device, with no hand-written
all-reduce and no ``pmap``. Results equal the one-device run up to float summation order
(``tests/test_parallel.py`` checks losses and evaluation metrics to 1e-5).

``train.py`` and ``eval.py`` do this by themselves whenever more than one device is visible
(:func:`auto_mesh`, :func:`put_batch`); with one device nothing is sharded and the programs are
exactly the single-device ones.

Single host, several devices (GPUs, or CPU devices for testing), by hand::

    from vp_jax import parallel
    mesh = parallel.make_mesh()                        # all devices, axis 'data'
    state = parallel.replicate(state, mesh)
    for batch in batches:                              # global batch, numpy, on the host
        batch = parallel.shard_batch(batch, mesh)      # split over devices
        state, metrics = train_step(state, batch, key)

``train.batch_size`` (and ``eval.batch_size``) must be a multiple of the number of devices.
To try it on a CPU, make the host look like N devices before JAX starts:
``XLA_FLAGS=--xla_force_host_platform_device_count=2``.

Several hosts (multi-process, e.g. a TPU pod slice or several GPU machines): set
``config.parallel.distributed = True`` and start the same command on every host. Then
:func:`initialize_distributed` calls ``jax.distributed.initialize()`` (coordinator address,
process count and id are detected on TPU, SLURM and Open MPI, or read from
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) before anything else
touches JAX; the mesh then spans the devices of all hosts. Each host loads only its own
``batch_size / jax.process_count()`` sequences (see :func:`process_batch_slice`) and
:func:`shard_batch` assembles the global array from the per-host pieces. Checkpoints and
metrics files should be written by process 0 only (``jax.process_index() == 0``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vp_jax.errors import ConfigError

DATA_AXIS = "data"


def initialize_distributed(config=None) -> bool:
    """Call ``jax.distributed.initialize()`` when ``config.parallel.distributed`` is true.

    Must run before any other JAX call in the process. Returns whether it initialised.
    A config without a ``parallel`` section counts as single-host.
    """
    parallel_cfg = getattr(config, "parallel", None) if config is not None else None
    if not (parallel_cfg is not None and bool(parallel_cfg.get("distributed", False))):
        return False
    jax.distributed.initialize()
    return True


def make_mesh(devices=None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) named ``axis_name``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices).reshape(-1), (axis_name,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh's data axis, the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def num_shards(mesh: Mesh) -> int:
    """Number of devices along the data axis."""
    return int(mesh.shape[mesh.axis_names[0]])


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "train.batch_size") -> None:
    """Raise :class:`ConfigError` unless ``batch_size`` splits evenly over the devices."""
    n = num_shards(mesh)
    if batch_size % n:
        raise ConfigError(
            f"config.{field} = {batch_size}: expected a multiple of the number of devices ({n}) "
            "for data-parallel training"
        )


def auto_mesh(config=None, fields=("train.batch_size", "eval.batch_size")) -> Mesh | None:
    """The mesh over all devices when more than one is visible, else None (nothing to shard).

    With ``config``, checks that each of ``fields`` splits evenly over the devices (a one-line
    :class:`ConfigError` naming the field otherwise).
    """
    if jax.device_count() == 1:
        return None
    mesh = make_mesh()
    for field in fields if config is not None else ():
        section, name = field.split(".")
        check_batch_size(int(config[section][name]), mesh, field)
    return mesh


def host_piece(batch):
    """This process's rows of a global batch (the whole batch on a single host)."""
    if jax.process_count() == 1:
        return batch
    leaves = jax.tree_util.tree_leaves(batch)
    rows = process_batch_slice(int(np.shape(leaves[0])[0]))
    return jax.tree_util.tree_map(lambda x: x[rows], batch)


def put_batch(batch, mesh: Mesh | None):
    """A global host batch onto the mesh, split on ``data`` (onto the default device when ``mesh``
    is None)."""
    if mesh is None:
        return jax.device_put(batch)
    return shard_batch(host_piece(batch), mesh)


def put_replicated(tree, mesh: Mesh | None):
    """:func:`replicate` when ``mesh`` is not None, else ``tree`` unchanged."""
    return tree if mesh is None else replicate(tree, mesh)


def is_main_process() -> bool:
    """Whether this process writes the files every host would otherwise write (process 0)."""
    return jax.process_index() == 0


def process_batch_slice(global_batch_size: int) -> slice:
    """The rows of a global batch this process loads (all rows on a single host)."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ConfigError(
            f"batch size {global_batch_size}: expected a multiple of the number of hosts ({n})"
        )
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


def shard_batch(batch, mesh: Mesh):
    """Put a batch (a pytree of host arrays, batch axis first) on the mesh, split on ``data``.

    Single process: ``batch`` is the global batch. Several processes: ``batch`` is this
    process's piece (:func:`process_batch_slice`); the result is the global array.
    Leaves that are already ``jax.Array``\\ s with the right sharding are returned as they are.
    """
    sharding = batch_sharding(mesh)
    n = num_shards(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if jax.process_count() == 1:
            if x.shape[0] % n:
                raise ConfigError(
                    f"a batch of {x.shape[0]} sequences does not split over {n} devices "
                    "(use a batch size that is a multiple of the number of devices)"
                )
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree_util.tree_map(put, batch)


def replicate(tree, mesh: Mesh):
    """Copy every leaf of ``tree`` (params, BatchNorm statistics, optimiser state, keys) to
    every device of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))


def unreplicate_to_host(tree):
    """Host numpy copies of a (replicated or sharded) pytree, e.g. for checkpoints or logs."""
    return jax.device_get(tree)
