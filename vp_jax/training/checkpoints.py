"""Orbax checkpoints: one layout shared by train.py and eval.py.

``WORKDIR/checkpoints/latest/<step>/`` keeps the last ``config.checkpoint.keep`` checkpoints,
``WORKDIR/checkpoints/best/<step>/`` the one with the best validation PSNR. Each checkpoint holds

* ``state``: the :class:`~vp_jax.training.state.TrainState` pytree (params, BatchNorm running
  statistics, optimiser state including the non-finite counter, step), and
* ``meta``: JSON — epoch, the data iterator's state, the base RNG seed, validation PSNR, and
  the model config that wrote it (so a checkpoint from another model is refused by name).

Orbax writes every checkpoint into a temporary folder and renames it when complete, so a
killed process never leaves a checkpoint that looks finished. Saving is synchronous: the
train loop's next step does not overlap with it, which keeps resumption exact and simple.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import jax
import orbax.checkpoint as ocp

from vp_jax.config import ModelConfig
from vp_jax.errors import CheckpointError

LATEST = "latest"
BEST = "best"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _manager(path: str, keep: int, best: bool, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        best_fn=(lambda m: m["val_psnr"]) if best else None,
        best_mode="max",
        keep_checkpoints_without_metrics=False if best else True,
        enable_async_checkpointing=False,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))


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

    # -- save / restore -----------------------------------------------------------------
    def save(self, step: int, state, meta: dict, val_psnr: float | None = None) -> None:
        """Save ``state`` and ``meta`` as step ``step``; also as best if ``val_psnr`` is best."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._latest.save(step, args=args, force=True)
        if val_psnr is not None and val_psnr == val_psnr:  # not NaN
            best = self._best.best_step()
            if best is None or val_psnr > self._read_meta(self._best, best).get("val_psnr", -1e9):
                args = ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                )
                self._best.save(step, args=args, metrics={"val_psnr": float(val_psnr)}, force=True)
        self.wait()

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
        field when the checkpoint was written by another model.
        """
        manager, step = self.resolve(which)
        path = os.path.join(str(manager.directory), str(step))
        try:
            meta = self._read_meta(manager, step)
        except Exception as err:  # noqa: BLE001 - any read failure means a damaged checkpoint
            raise CheckpointError(f"{path}: damaged checkpoint (metadata unreadable: {type(err).__name__})") from None
        mismatch = model_mismatch(meta.get("model", {}), model_cfg)
        if mismatch:
            raise CheckpointError(f"{path}: written by another model ({mismatch})")
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{path}: damaged checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        return restored["state"], meta

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()
