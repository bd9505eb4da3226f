"""Orbax checkpoints: one layout shared by train.py and eval.py.

``WORKDIR/checkpoints/latest/<step>/`` keeps the last ``config.checkpoint.keep`` checkpoints,
``WORKDIR/checkpoints/best/<step>/`` the one with the best validation PSNR. Each checkpoint holds

* ``state``: the :class:`~vp_jax.training.state.TrainState` pytree (params, BatchNorm running
  statistics, optimiser state including the non-finite counter, step), and
* ``meta``: JSON — epoch, the data iterator's state, the base RNG seed, validation PSNR, the
  epoch's ``metrics.csv`` row, the model config that wrote it (so a checkpoint from another
  model is refused by name) and ``state_sha256``, a checksum of the state's contents;

and beside them ``files.sha256.json``, the checksum of every file of the finished checkpoint.

Crash safety. Orbax writes every checkpoint into a temporary folder and renames it when
complete, so a killed process never leaves a checkpoint that looks finished; leftover temporary
folders are removed when training opens the store again. Saving is synchronous: the train
loop's next step does not overlap with it, which keeps resumption exact and simple. A
checkpoint damaged afterwards (a truncated or deleted file, a flipped bit) fails its file
checksums before orbax reads it (or, without them, fails to restore or fails the state
checksum): :meth:`CheckpointStore.restore` raises :class:`DamagedCheckpointError`, and
:meth:`CheckpointStore.restore_for_resume` moves it to ``checkpoints/damaged/`` and falls back to
the previous one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import json
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from vp_jax._compat import await_orbax_tmp_cleanup
from vp_jax.config import ModelConfig
from vp_jax.errors import CheckpointError
from vp_jax.fileio import write_text

LATEST = "latest"
BEST = "best"
DAMAGED = "damaged"
MANIFEST = "files.sha256.json"


class DamagedCheckpointError(CheckpointError):
    """A checkpoint exists but cannot be read back intact (truncated, deleted or changed files)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def has_checkpoints(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished checkpoint folder (cheap: no orbax, no reading)."""
    root = checkpoint_dir(workdir)
    for sub in (LATEST, BEST):
        try:
            if any(name.isdigit() for name in os.listdir(os.path.join(root, sub))):
                return True
        except OSError:
            continue
    return False


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


def _manager(path: str, keep: int, best: bool, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        best_fn=(lambda m: m["val_psnr"]) if best else None,
        best_mode="max",
        keep_checkpoints_without_metrics=False if best else True,
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


def _like_target(restored, target):
    if isinstance(target, jax.Array) and not target.committed and getattr(restored, "committed", False):
        return jax.device_put(np.asarray(restored))
    return restored


class CheckpointStore:
    """The latest-N and best-by-validation-PSNR checkpoints of one workdir."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        root = checkpoint_dir(workdir)
        self.root = root
        if read_only and not os.path.isdir(root):
            raise CheckpointError(f"{root}: no checkpoints (train this workdir first)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._latest = _manager(os.path.join(root, LATEST), keep, False, read_only)
            self._best = _manager(os.path.join(root, BEST), 1, True, read_only)

    # -- queries ------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return self._best.best_step()

    def steps(self) -> list[int]:
        return sorted(self._latest.all_steps())

    def _saved(self) -> str:
        return f"saved steps: latest {self.steps()}, best {sorted(self._best.all_steps())}"

    # -- save / restore -----------------------------------------------------------------
    def save(self, step: int, state, meta: dict, val_psnr: float | None = None) -> None:
        """Save ``state`` and ``meta`` as step ``step``; also as best if ``val_psnr`` is best.

        The best copy is written first: a process killed between the two saves redoes the
        epoch, finds the best copy already there and writes only the latest one, so the
        outcome is the same as without the kill.
        """
        state = host_copy(state)
        meta = dict(meta, state_sha256=state_digest(state))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if val_psnr is not None and val_psnr == val_psnr and step not in self._best.all_steps():  # not NaN
            best = self._best.best_step()
            best_psnr = -np.inf
            if best is not None:
                try:
                    if damaged_files(os.path.join(str(self._best.directory), str(best))):
                        raise DamagedCheckpointError("best checkpoint damaged")
                    best_psnr = float(self._read_meta(self._best, best).get("val_psnr") or -np.inf)
                except Exception:  # noqa: BLE001 - a damaged best copy is replaced
                    self._quarantine(self._best, best)
            if val_psnr > best_psnr:
                self._save(self._best, step, args, metrics={"val_psnr": float(val_psnr)})
        if step in self._latest.all_steps():  # only after a crash: replace it
            self._latest.delete(step)
        self._save(self._latest, step, args)

    def _save(self, manager: ocp.CheckpointManager, step: int, args, **kwargs) -> None:
        manager.save(step, args=args, force=True, **kwargs)
        manager.wait_until_finished()
        if jax.process_index() == 0:
            write_manifest(os.path.join(str(manager.directory), str(step)))

    def _read_meta(self, manager: ocp.CheckpointManager, step: int) -> dict:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def resolve(self, which: str | int) -> tuple[ocp.CheckpointManager, int]:
        """Map 'latest', 'best' or a step number to (manager, step)."""
        if which in (LATEST, None):
            step = self._latest.latest_step()
            manager = self._latest
        elif which == BEST:
            step = self._best.best_step()
            manager = self._best
            if step is None:  # no validation ran yet: fall back to the latest
                step, manager = self._latest.latest_step(), self._latest
        else:
            try:
                step = int(which)
            except ValueError:
                raise CheckpointError(
                    f"--checkpoint {which!r}: expected 'best', 'latest' or a step number"
                ) from None
            manager = self._latest if step in self._latest.all_steps() else self._best
            if step not in manager.all_steps():
                raise CheckpointError(
                    f"{self.root}: no checkpoint at step {step} (have {self.steps()})"
                )
        if step is None:
            raise CheckpointError(f"{self.root}: no checkpoints (train this workdir first)")
        return manager, step

    def restore(self, which, abstract_state, model_cfg: ModelConfig):
        """Restore ``which`` ('latest', 'best' or a step) into the structure of ``abstract_state``.

        Returns ``(state, meta)``. Raises :class:`CheckpointError` naming the mismatching model
        field when the checkpoint was written by another model, and
        :class:`DamagedCheckpointError` when it cannot be read back intact.
        """
        manager, step = self.resolve(which)
        path = os.path.join(str(manager.directory), str(step))

        def damaged(reason: str) -> DamagedCheckpointError:
            return DamagedCheckpointError(f"{path}: damaged checkpoint ({reason}); {self._saved()}", reason)

        reason = damaged_files(path)
        if reason:
            raise damaged(reason)
        try:
            meta = self._read_meta(manager, step)
            if not isinstance(meta, dict):
                raise ValueError(f"meta is a {type(meta).__name__}, expected a JSON object")
        except Exception as err:  # noqa: BLE001 - any read failure means a damaged checkpoint
            raise damaged(f"meta unreadable: {_reason(err)}") from None
        mismatch = model_mismatch(meta.get("model", {}), model_cfg)
        if mismatch:
            raise CheckpointError(f"{path}: written by another model ({mismatch})")
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"]
        except Exception as err:  # noqa: BLE001
            raise damaged(f"state unreadable: {_reason(err)}") from None
        expected = meta.get("state_sha256")
        if expected and state_digest(restored) not in (None, expected):
            raise damaged("state contents differ from the checksum saved with it")
        # Orbax returns arrays committed to a device; a freshly created state is uncommitted, and
        # jit compiles the two as different programs. Match the target, so that a resumed run runs
        # the very program of an uninterrupted one (and finds it in a persistent compilation cache).
        restored = jax.tree_util.tree_map(_like_target, restored, abstract_state)
        return restored, meta

    def restore_for_resume(self, abstract_state, model_cfg: ModelConfig, warn=print):
        """The newest intact 'latest' checkpoint as ``(state, meta)``, or None if there is none.

        A damaged checkpoint is moved to ``checkpoints/damaged/`` (so that training can write
        that step again) with a one-line ``warn(message)``, and the previous one is tried. A
        checkpoint of another model raises :class:`CheckpointError`; so does a store in which
        every checkpoint is damaged (starting over silently would lose the run).
        """
        steps = sorted(self._latest.all_steps(), reverse=True)
        for step in steps:
            try:
                return self.restore(step, abstract_state, model_cfg)
            except DamagedCheckpointError as err:
                moved = self._quarantine(self._latest, step)
                warn(
                    f"warning: {os.path.join(self.root, LATEST, str(step))}: damaged checkpoint ({err.reason}); "
                    f"moved to {moved}, trying the previous one"
                )
        if steps:
            raise CheckpointError(
                f"{os.path.join(self.root, LATEST)}: all {len(steps)} checkpoints are damaged (moved to "
                f"{os.path.join(self.root, DAMAGED)}); move {self.root} away to train from scratch"
            )
        return None

    def _quarantine(self, manager: ocp.CheckpointManager, step: int) -> str:
        """Move a damaged step folder out of ``manager``'s sight into ``checkpoints/damaged/``."""
        src = os.path.join(str(manager.directory), str(step))
        dest_dir = os.path.join(self.root, DAMAGED)
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, f"{os.path.basename(str(manager.directory))}-{step}")
        n = 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(dest_dir, f"{os.path.basename(str(manager.directory))}-{step}.{n}")
        try:
            os.rename(src, dest)
        except OSError:
            shutil.rmtree(src, ignore_errors=True)
            dest = "(deleted)"
        manager.reload()
        return dest

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
