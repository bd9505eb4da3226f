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

    from vp_jax.runtime import parallel
    mesh = parallel.make_mesh()                        # all devices, axis 'data'
    state = parallel.replicate(state, mesh)
    for batch in batches:                              # global batch, numpy, on the host
        batch = parallel.shard_batch(batch, mesh)      # split over devices
        state, metrics = train_step(state, batch, key)

``train.batch_size`` (and ``eval.batch_size``) must be a multiple of the number of devices.
To try it on a CPU, make the host look like N devices before JAX starts:
``XLA_FLAGS=--xla_force_host_platform_device_count=2``.

Several processes (several hosts, e.g. GPU machines or a TPU pod slice; or several processes on one
machine): set ``config.parallel.distributed = True`` and start the same command once per process.
:func:`initialize_distributed` then calls ``jax.distributed.initialize`` before anything else
touches JAX, with the coordinator address, process count and id read from
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (or detected by JAX on
TPU, SLURM and Open MPI), the heartbeat and start-up timeouts of ``config.parallel``, and, on
CPUs, gloo for the cross-process collectives. The mesh then spans the devices of all processes.
Each process loads only its own rows of every global batch (:func:`process_batch_slice`: process
``i`` of ``n`` loads rows ``i*B/n .. (i+1)*B/n - 1``, in the order of the one-process run) and
:func:`put_process_batch` assembles the global array from the per-process pieces, so the numbers
do not depend on the number of processes. Process 0 writes the workdir's files; checkpoints are
written by all together (orbax). :func:`stop_together` turns a failure of any one process (an
error, or another process that died) into one line and a prompt exit of every process.
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vp_jax.errors import ConfigError, VPError
from vp_jax.runtime.xla_flags import runs_on_cpu

DATA_AXIS = "data"


#: The environment variables :func:`initialize_distributed` reads (all three, or none where JAX
#: detects the cluster itself: TPU, SLURM, Open MPI).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
#: ``config.parallel`` fields and their defaults (a config without them gets these).
PARALLEL_DEFAULTS = {"distributed": False, "heartbeat_timeout_s": 100, "initialization_timeout_s": 300}


def _parallel_field(config, name):
    section = getattr(config, "parallel", None) if config is not None else None
    if section is None:
        return PARALLEL_DEFAULTS[name]
    return section.get(name, PARALLEL_DEFAULTS[name])


def _env_int(environ, name: str, lowest: int) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lowest:
        raise ConfigError(f"{name}={text!r}: expected an integer >= {lowest}")
    return value


def distributed_settings(config=None, environ=None) -> dict:
    """The keyword arguments :func:`initialize_distributed` passes to ``jax.distributed.initialize``.

    ``coordinator_address``, ``num_processes`` and ``process_id`` come from
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` where set (JAX
    itself reads only the first); what is not set is left to JAX's cluster detection (TPU,
    SLURM, Open MPI). ``heartbeat_timeout_seconds`` and ``initialization_timeout`` are
    ``config.parallel.heartbeat_timeout_s`` (a process whose heartbeats stop for that long counts
    as dead, and every other process stops) and ``config.parallel.initialization_timeout_s`` (how
    long the processes wait for each other at the start). Bad values: one-line
    :class:`ConfigError` naming the variable or field.
    """
    environ = os.environ if environ is None else environ
    settings = {}
    coordinator = environ.get(ENV_COORDINATOR, "").strip()
    if coordinator:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{ENV_COORDINATOR}={coordinator!r}: expected HOST:PORT (e.g. 10.0.0.1:12345)")
        settings["coordinator_address"] = coordinator
    num = _env_int(environ, ENV_NUM_PROCESSES, 1)
    pid = _env_int(environ, ENV_PROCESS_ID, 0)
    if num is not None:
        settings["num_processes"] = num
    if pid is not None:
        if num is not None and pid >= num:
            raise ConfigError(f"{ENV_PROCESS_ID}={pid}: expected 0 .. {ENV_NUM_PROCESSES} - 1 = {num - 1}")
        settings["process_id"] = pid
    for field, arg in (("heartbeat_timeout_s", "heartbeat_timeout_seconds"),
                       ("initialization_timeout_s", "initialization_timeout")):
        value = _parallel_field(config, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            raise ConfigError(f"config.parallel.{field} = {value!r}: expected a number of seconds >= 1")
        settings[arg] = int(value)
    return settings


def launched_as_several(environ=None) -> bool:
    """Whether this process was started as one of several: ``JAX_NUM_PROCESSES`` above 1 or
    ``JAX_COORDINATOR_ADDRESS`` set, or a SLURM step or Open MPI job of more than one task."""
    environ = os.environ if environ is None else environ

    def count(name):
        try:
            return int(environ.get(name, "1"))
        except ValueError:
            return 1

    return (bool(environ.get(ENV_COORDINATOR, "").strip()) or count(ENV_NUM_PROCESSES) > 1
            or (count("SLURM_NTASKS") > 1 and "SLURM_STEP_NODELIST" in environ)
            or count("OMPI_COMM_WORLD_SIZE") > 1)


def initialize_distributed(config=None, when_launched: bool = False) -> bool:
    """Call ``jax.distributed.initialize`` when ``config.parallel.distributed`` is true, with
    :func:`distributed_settings`; on a CPU, with gloo for the cross-process collectives.

    Must run before any other JAX call in the process. Returns whether it initialised.
    A config without a ``parallel`` section counts as single-process. A process count or id
    that is neither set nor detectable is a one-line :class:`ConfigError`. ``when_launched``
    (eval.py, which may evaluate a multi-process run's workdir as one process): only when
    :func:`launched_as_several`.
    """
    if not bool(_parallel_field(config, "distributed")):
        return False
    if when_launched and not launched_as_several():
        return False
    settings = distributed_settings(config)
    if runs_on_cpu() and not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        # gloo (TCP) is the default of recent jaxlibs; older ones had no CPU collectives by default.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**settings)
    except ValueError as err:
        text = str(err)
        if "defined" not in text:
            raise
        missing = [name for name, key in ((ENV_COORDINATOR, "coordinator_address"), (ENV_NUM_PROCESSES, "num_processes"),
                                          (ENV_PROCESS_ID, "process_id")) if key not in settings]
        raise ConfigError(
            f"config.parallel.distributed = True: {text.rstrip('.')} (set {', '.join(missing)}, or run under "
            "SLURM, Open MPI or on a TPU, where JAX finds them itself)"
        ) from None
    return True


def is_multiprocess() -> bool:
    """Whether this run spans several processes (``jax.process_count() > 1``)."""
    return jax.process_count() > 1


def _lost_peer(err: BaseException) -> bool:
    """Whether ``err`` says that another process of the run is gone (its connection closed, its
    heartbeats stopped, a barrier failed)."""
    text = f"{type(err).__name__}: {err}".lower()
    return any(s in text for s in ("gloo", "connection closed", "connection reset", "heartbeat", "barrier",
                                   "coordination service", "unavailable", "deadline exceeded", "socket closed"))


@contextlib.contextmanager
def stop_together(exit=os._exit):
    """In a multi-process run, end this process at once, with one line on stderr, on any error.

    One process that stops while the others wait for it in a collective (every train step
    has some) would leave them waiting; a normal interpreter exit would itself wait in JAX's
    shutdown barrier for the others. So an error here prints ``error: process I of N: ...``
    (saying so when the cause is another process that is gone) and leaves with ``exit`` (status
    2 for bad input, 1 otherwise) without the shutdown: the other processes' collectives then
    fail at once and they stop the same way (or, if one is not in a collective, when the
    coordinator misses this process's heartbeats for ``config.parallel.heartbeat_timeout_s``).
    A single-process run is left alone.
    """
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt and SystemExit too
        if not (jax.distributed.is_initialized() and is_multiprocess()):
            raise
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        who = f"process {jax.process_index()} of {jax.process_count()}"
        if isinstance(err, VPError):
            message, status = f"error: {who}: {err}", 2
        elif isinstance(err, KeyboardInterrupt):
            message, status = f"interrupted: {who}: stopping every process", 130
        elif _lost_peer(err):
            reason = " ".join(str(err).split())[:300]
            message, status = (f"error: {who}: another process of the run stopped ({type(err).__name__}: {reason}); "
                               "every process stops: start the same command on every host to resume from the "
                               "last checkpoint"), 1
        else:
            reason = " ".join(str(err).split())[:300]
            message, status = f"error: {who}: {type(err).__name__}: {reason}", 1
        import traceback

        if status == 1 and not _lost_peer(err):
            traceback.print_exc(file=sys.stderr)
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        exit(status)


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
    """This process's rows of a global batch (the whole batch on a single process)."""
    if jax.process_count() == 1:
        return batch
    leaves = jax.tree_util.tree_leaves(batch)
    rows = process_batch_slice(int(np.shape(leaves[0])[0]))
    return jax.tree_util.tree_map(lambda x: x[rows], batch)


def put_batch(batch, mesh: Mesh | None):
    """A global host batch onto the mesh, split on ``data`` (onto the default device when ``mesh``
    is None); each process passes the same global batch and contributes its own rows."""
    if mesh is None:
        return jax.device_put(batch)
    return shard_batch(host_piece(batch), mesh)


def put_process_batch(batch, mesh: Mesh | None):
    """This process's rows of a global batch (:func:`process_batch_slice`, what a
    ``BatchIterator`` with ``rows=process_batch_slice(B)`` yields) onto the mesh as the global
    batch; onto the default device when ``mesh`` is None (one device, one process)."""
    if mesh is None:
        return jax.device_put(batch)
    return shard_batch(batch, mesh)


def host_array(x) -> np.ndarray:
    """A NumPy copy of ``x`` on every process, also when ``x`` is split over the devices of
    several processes (then gathered: every process takes part)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def put_replicated(tree, mesh: Mesh | None):
    """:func:`replicate` when ``mesh`` is not None, else ``tree`` unchanged."""
    return tree if mesh is None else replicate(tree, mesh)


def sync_processes(name: str) -> None:
    """Wait until every process of a multi-process run gets here (nothing on a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def main_process_first(fn):
    """``fn()`` on process 0, then on the others (e.g. data that process 0 generates or packs once
    and the others read); simply ``fn()`` on a single process."""
    if jax.process_count() == 1:
        return fn()
    if is_main_process():
        out = fn()
        sync_processes("main process first")
        return out
    sync_processes("main process first")
    return fn()


def is_main_process() -> bool:
    """Whether this process writes the files every host would otherwise write (process 0)."""
    return jax.process_index() == 0


def process_batch_slice(global_batch_size: int, process_index: int | None = None,
                        process_count: int | None = None) -> slice:
    """The rows of a global batch process ``process_index`` of ``process_count`` loads (default:
    this process of this run; all rows on a single process): an equal, contiguous share, in
    process order, so that the processes' pieces side by side are the global batch."""
    n = jax.process_count() if process_count is None else int(process_count)
    i = jax.process_index() if process_index is None else int(process_index)
    if global_batch_size % n:
        raise ConfigError(
            f"batch size {global_batch_size}: expected a multiple of the number of processes ({n})"
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
