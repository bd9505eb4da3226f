"""Orbax checkpoints: one layout shared by train.py and eval.py.

``WORKDIR/checkpoints/<step>/`` holds one folder per saved step, kept by one orbax
``CheckpointManager`` whose preservation policy keeps the last ``config.checkpoint.keep`` steps
and, beside them, the step with the best validation PSNR (orbax's ``val_psnr`` metric, saved
with the step). A checkpoint saved without validation (an epoch without it, or a save on Ctrl-C
mid-epoch) has no metric and is kept while it is among the last ``keep``. Each state is
written once. Each checkpoint holds

* ``state``: the :class:`~vp_jax.store.state.TrainState` pytree (params, BatchNorm running
  statistics, optimiser state including the non-finite counter, step),
* ``meta``: JSON — epoch, the data iterator's state, the base RNG seed, validation PSNR, the
  epoch's ``metrics.csv`` row, the model config that wrote it (so a checkpoint from another
  model is refused by name) and ``state_sha256``, a checksum of the state's contents, and
* ``metrics``: ``{"val_psnr": ...}`` when the epoch was validated;

and beside them ``files.sha256.json``, the checksum of every file of the finished checkpoint.

Crash safety. Orbax writes every checkpoint into a temporary folder and renames it when
complete, so a killed process never leaves a checkpoint that looks finished; leftover temporary
folders are removed when training opens the store again. Saving is synchronous: the train
loop's next step does not overlap with it, which keeps resumption exact and simple. A
checkpoint damaged afterwards (a truncated or deleted file, a flipped bit) fails its file
checksums before orbax reads it (or, without them, fails to restore or fails the state
checksum): :meth:`CheckpointStore.restore` raises :class:`DamagedCheckpointError`, and
:meth:`CheckpointStore.restore_for_resume` moves it to ``checkpoints/damaged/`` and falls back to
the previous one. A damaged best checkpoint is moved there too when training next saves a
validated epoch, so that an intact one takes its place.

Two-folder layout. Workdirs written by earlier versions of vp_jax keep
``checkpoints/latest/<step>/`` (the last ``keep`` steps) and ``checkpoints/best/<step>/`` (the
best step, a second copy when it is also among the latest). eval.py and
:class:`~vp_jax.predictor.Predictor` read them where they are; train.py (which holds the
workdir's lock) moves their step folders into ``checkpoints/<step>/`` when it opens such a
workdir, once, with a one-line note: the best step's folder with its ``val_psnr`` metric, a
second copy of the same step dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from vp_jax.config import ModelConfig
from vp_jax.errors import CheckpointError
from vp_jax.fileio import write_text
from vp_jax.runtime import parallel
from vp_jax.runtime.compat import await_orbax_tmp_cleanup

log = logging.getLogger(__name__)

LATEST = "latest"
BEST = "best"
DAMAGED = "damaged"
MANIFEST = "files.sha256.json"
METRIC = "val_psnr"
# Orbax's item (folder and file) of a step's metrics: ``<step>/metrics/metrics``.
METRICS_FILE = os.path.join("metrics", "metrics")
TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's name for a save under way


class DamagedCheckpointError(CheckpointError):
    """A checkpoint exists but cannot be read back intact (truncated, deleted or changed files)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _step_names(path: str) -> list[str]:
    try:
        return [name for name in os.listdir(path) if name.isdigit()]
    except OSError:
        return []


def has_checkpoints(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished checkpoint folder (cheap: no orbax, no reading)."""
    root = checkpoint_dir(workdir)
    return bool(_step_names(root))


def host_copy(state):
    """``state`` with every leaf copied to host memory as NumPy, in one transfer; ``state`` itself
    when some leaf is split over the devices of several processes (orbax then writes each
    process's shards). A leaf replicated over several processes is copied from this process's
    replica: NumPy leaves are written by process 0 alone, and the checkpoint does not depend on
    the number of processes that wrote it (it resumes on any other number).

    Orbax writes NumPy leaves without its per-array device-transfer machinery: a third of the
    time for a tree of 410 small arrays (the tiny model's state: 1.3 s -> 0.45 s on a 2-core
    CPU). The restored arrays are the same either way."""
    leaves = jax.tree_util.tree_leaves(state)
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in leaves):
        return jax.device_get(state)
    if not all(getattr(leaf, "is_fully_addressable", True) or getattr(leaf, "is_fully_replicated", False)
               for leaf in leaves):
        return state
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x.addressable_data(0)) if not getattr(x, "is_fully_addressable", True)
        else np.asarray(jax.device_get(x)), state)


def state_digest(state) -> str | None:
    """SHA-256 over every leaf of ``state`` (path, dtype, shape, bytes); None if some leaf is not
    fully addressable from this process (multi-host), where it cannot be computed locally."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if not getattr(leaf, "is_fully_addressable", True):
            return None
        arr = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.data if arr.size else b"")
    return h.hexdigest()


def _val_psnr(metrics) -> float:
    return metrics[METRIC]


def _manager(path: str, keep: int, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        # The last `keep` steps and the one with the best val_psnr; a step without the metric
        # only while among the last `keep`. (max_to_keep stays unset: orbax refuses it beside a
        # preservation policy.) reverse=False: the highest val_psnr is the best.
        preservation_policy=AnyPreservationPolicy([
            LatestN(n=keep),
            BestN(get_metric_fn=_val_psnr, reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ]),
        # Keeps nothing itself (the policy decides); without it orbax neither writes a step's
        # metrics to disk (a reopened manager would know no best step) nor ranks them in
        # best_step().
        best_fn=_val_psnr,
        best_mode="max",
        enable_async_checkpointing=False,
        create=not read_only,
        read_only=read_only,
        # Temporary folders of saves that a killed process left behind. Only the writer (who
        # holds the workdir lock, so no save is under way) removes them.
        cleanup_tmp_directories=not read_only,
    )
    manager = ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))
    # Orbax removes those folders on a background thread that close() does not wait for; a run
    # that stops right away (a refused resume) then exits under that thread, which prints a
    # traceback at interpreter shutdown. Wait for it here: it only lists one folder.
    await_orbax_tmp_cleanup(manager)
    return manager


def model_mismatch(saved: dict, current: ModelConfig) -> str | None:
    """The first model field that differs, as 'field: checkpoint X, config Y', or None."""
    for field in dataclasses.fields(current):
        ours = getattr(current, field.name)
        theirs = saved.get(field.name, ours)
        if isinstance(ours, tuple):
            theirs = tuple(theirs)
        if theirs != ours:
            return f"model.{field.name}: checkpoint has {theirs!r}, config has {ours!r}"
    return None


def _reason(err: BaseException) -> str:
    """A short one-line description of why reading failed."""
    text = " ".join(str(err).split()).split(" See full TensorStore details")[0]  # orbax appends a spec dump
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _file_digests(step_dir: str) -> dict[str, str]:
    """SHA-256 of every file under a checkpoint's step folder, by relative path (the manifest
    itself excluded)."""
    digests = {}
    for dirpath, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, step_dir)
            if rel == MANIFEST:
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digests[rel] = h.hexdigest()
    return dict(sorted(digests.items()))


def write_manifest(step_dir: str) -> None:
    """Record every file of a finished checkpoint with its checksum (temporary name, then rename)."""
    write_text(os.path.join(step_dir, MANIFEST), json.dumps(_file_digests(step_dir), indent=0))


def damaged_files(step_dir: str) -> str | None:
    """Why the files of ``step_dir`` differ from its manifest (missing, changed or unreadable), or
    None when they match or when the checkpoint has no manifest (written before manifests were
    kept, or by a process killed between orbax's rename and the manifest: orbax's own checks
    apply then).

    Checked before orbax reads anything: a read that fails inside orbax abandons its sibling
    reads, which report themselves later on stderr; a checkpoint that matches its manifest reads
    back."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            expected = json.load(f)
        actual = _file_digests(step_dir)
    except (OSError, ValueError) as err:
        return f"file manifest unreadable: {_reason(err)}"
    missing = sorted(set(expected) - set(actual))
    if missing:
        return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    changed = sorted(k for k in expected if expected[k] != actual[k])
    if changed:
        return f"{len(changed)} file(s) differ from the checksums saved with them, e.g. {changed[0]}"
    return None


def unreadable_metrics(step_dir: str) -> str | None:
    """Why the ``val_psnr`` metric saved with ``step_dir`` cannot be read, or None (readable, or no
    metric). Checked before orbax opens the folder: orbax reads every step's metrics when it
    opens, and stops at the first that is not JSON."""
    path = os.path.join(step_dir, METRICS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            float(json.load(f)[METRIC])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"metrics unreadable: {_reason(err)}"
    return None


def _like_target(restored, target):
    if isinstance(target, jax.Array) and not target.committed and getattr(restored, "committed", False):
        return jax.device_put(np.asarray(restored))
    return restored


class CheckpointStore:
    """The checkpoints of one workdir: the last ``keep`` and the best by validation PSNR.

    Warnings (a damaged checkpoint set aside) go to the
    ``vp_jax`` logger, one line each.
    """

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        root = checkpoint_dir(workdir)
        self.root = root
        self._intact: set[int] = set()  # steps written or checked by this process
        if read_only and not os.path.isdir(root):
            raise CheckpointError(f"{root}: no checkpoints (train this workdir first)")
        for name in _step_names(root) if read_only or parallel.is_main_process() else ():
            reason = unreadable_metrics(os.path.join(root, name))
            if reason and read_only:
                raise DamagedCheckpointError(
                    f"{os.path.join(root, name)}: damaged checkpoint ({reason}); move it away, or resume training "
                    f"(which moves it to {os.path.join(root, DAMAGED)})", reason)
            if reason:
                moved = self._move_aside(os.path.join(root, name))
                log.warning("%s: damaged checkpoint (%s); moved to %s", os.path.join(root, name), reason, moved)
        if not read_only:
            parallel.sync_processes("checkpoint layout")  # the others open the folder after process 0
        self._manager = _manager(root, keep, read_only)

    # -- queries ------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The saved step with the highest validation PSNR; None when no saved step was validated."""
        return self._manager.best_step()

    def _saved(self) -> str:
        best = self.best_step()
        return f"saved steps {self.steps()}" + ("" if best is None else f", best {best}")

    def _path(self, step: int) -> str:
        return os.path.join(self.root, str(step))

    # -- save / restore -----------------------------------------------------------------
    def save(self, step: int, state, meta: dict, val_psnr: float | None = None) -> None:
        """Save ``state`` and ``meta`` as step ``step``, with ``val_psnr`` (None or NaN: not
        validated) as its metric. A step that is already there (saved before a crash) is replaced.
        """
        state = host_copy(state)
        meta = dict(meta, state_sha256=state_digest(state))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        metrics = None
        if val_psnr is not None and val_psnr == val_psnr:  # not NaN
            metrics = {METRIC: float(val_psnr)}
            self._set_aside_damaged_best()
        manager = self._manager
        if step in manager.all_steps():  # only after a crash: replace it
            manager.delete(step)
        manager.save(step, args=args, force=True, metrics=metrics)
        manager.wait_until_finished()
        if jax.process_index() == 0:
            write_manifest(self._path(step))
        self._intact.add(step)

    def _set_aside_damaged_best(self) -> None:
        """Move a damaged best checkpoint to ``checkpoints/damaged/`` (the preservation policy would
        keep it, and not the intact one that a new validated epoch brings). Checked once a process."""
        while (best := self.best_step()) is not None and best not in self._intact:
            path = self._path(best)
            reason = damaged_files(path)
            if not reason:
                try:
                    self._read_meta(best)
                except Exception as err:  # noqa: BLE001 - any read failure means a damaged checkpoint
                    reason = f"meta unreadable: {_reason(err)}"
            if not reason:
                self._intact.add(best)
                return
            moved = self._quarantine(best)
            log.warning("%s: damaged best checkpoint (%s); moved to %s", path, reason, moved)

    def _read_meta(self, step: int) -> dict:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise ValueError(f"meta is a {type(meta).__name__}, expected a JSON object")
        return meta

    def resolve(self, which: str | int) -> int:
        """Map 'latest', 'best' or a step number to a saved step."""
        if which in (LATEST, None):
            step = self.latest_step()
        elif which == BEST:
            step = self.best_step()
            if step is None:  # no validation ran yet: fall back to the latest
                step = self.latest_step()
        else:
            try:
                step = int(which)
            except ValueError:
                raise CheckpointError(
                    f"--checkpoint {which!r}: expected 'best', 'latest' or a step number"
                ) from None
            if step not in self.steps():
                raise CheckpointError(
                    f"{self.root}: no checkpoint at step {step} (have {self.steps()})"
                )
        if step is None:
            raise CheckpointError(f"{self.root}: no checkpoints (train this workdir first)")
        return step

    def restore(self, which, abstract_state, model_cfg: ModelConfig):
        """Restore ``which`` ('latest', 'best' or a step) into the structure of ``abstract_state``.

        Returns ``(state, meta)``. Raises :class:`CheckpointError` naming the mismatching model
        field when the checkpoint was written by another model, and
        :class:`DamagedCheckpointError` when it cannot be read back intact.
        """
        step = self.resolve(which)
        path = self._path(step)

        def damaged(reason: str) -> DamagedCheckpointError:
            return DamagedCheckpointError(f"{path}: damaged checkpoint ({reason}); {self._saved()}", reason)

        reason = damaged_files(path)
        if reason:
            raise damaged(reason)
        try:
            meta = self._read_meta(step)
        except Exception as err:  # noqa: BLE001 - any read failure means a damaged checkpoint
            raise damaged(f"meta unreadable: {_reason(err)}") from None
        mismatch = model_mismatch(meta.get("model", {}), model_cfg)
        if mismatch:
            raise CheckpointError(f"{path}: written by another model ({mismatch})")
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except Exception as err:  # noqa: BLE001
            raise damaged(f"state unreadable: {_reason(err)}") from None
        expected = meta.get("state_sha256")
        if expected and state_digest(restored) not in (None, expected):
            raise damaged("state contents differ from the checksum saved with it")
        self._intact.add(step)
        # Orbax returns arrays committed to a device; a freshly created state is uncommitted, and
        # jit compiles the two as different programs. Match the target, so that a resumed run runs
        # the very program of an uninterrupted one (and finds it in a persistent compilation cache).
        restored = jax.tree_util.tree_map(_like_target, restored, abstract_state)
        return restored, meta

    def restore_for_resume(self, abstract_state, model_cfg: ModelConfig):
        """The newest intact checkpoint as ``(state, meta)``, or None if there is none.

        A damaged checkpoint is moved to ``checkpoints/damaged/`` (so that training can write
        that step again) with a one-line warning, and the previous one is tried (the
        best checkpoint too, when it is older than the latest ones). A checkpoint of another
        model raises :class:`CheckpointError`; so does a store in which every checkpoint is
        damaged (starting over silently would lose the run).
        """
        steps = self.steps()[::-1]
        for step in steps:
            try:
                return self.restore(step, abstract_state, model_cfg)
            except DamagedCheckpointError as err:
                path = self._path(step)
                moved = self._quarantine(step)
                log.warning("%s: damaged checkpoint (%s); moved to %s, trying the previous one", path, err.reason, moved)
        if steps:
            raise CheckpointError(
                f"{self.root}: all {len(steps)} checkpoints are damaged (moved to "
                f"{os.path.join(self.root, DAMAGED)}); move {self.root} away to train from scratch"
            )
        return None

    def _move_aside(self, src: str) -> str:
        """Move the step folder ``src`` into ``checkpoints/damaged/`` (process 0); where it went."""
        dest_dir = os.path.join(self.root, DAMAGED)
        name = os.path.basename(src)
        dest, n = os.path.join(dest_dir, name), 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(dest_dir, f"{name}.{n}")
        if parallel.is_main_process():
            os.makedirs(dest_dir, exist_ok=True)
            try:
                os.rename(src, dest)
            except OSError:
                shutil.rmtree(src, ignore_errors=True)
                dest = "(deleted)"
        return dest

    def _quarantine(self, step: int) -> str:
        """Move a damaged step folder out of the manager's sight into ``checkpoints/damaged/``."""
        parallel.sync_processes("checkpoint damaged")  # every process has finished reading it
        dest = self._move_aside(self._path(step))
        parallel.sync_processes("checkpoint moved aside")
        self._manager.reload()
        self._intact.discard(step)
        return dest

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
