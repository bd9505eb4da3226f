"""A trained model as a Python object: context frames and conditions in, predicted frames out.

    from vp_jax import Predictor

    predictor = Predictor.from_workdir("runs/pushbot", checkpoint="best")
    frames = predictor.predict(context, conditions, num_samples=3)   # uint8 [N, 3, T, 64, 64, 3]

The prediction is eval.py's: :func:`vp_jax.models.generation.make_generate_fn` (the prior rollout of
:func:`vp_jax.models.rollout.generate`), the conditions standardised as in training, the output
rounded to uint8 as evaluation rounds it before scoring. With the same checkpoint, key and
sequences per call, the frames are the ones ``eval.py`` scores.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from vp_jax.config import BN_MODES, load_workdir_config, run_config
from vp_jax.data.pipeline import condition_stats, open_split, standardize
from vp_jax.errors import ConfigError, DataError
from vp_jax.evaluation import metrics
from vp_jax.models.generation import evaluation_key, make_generate_fn
from vp_jax.store.checkpoints import CheckpointStore
from vp_jax.store.state import create_train_state


class Predictor:
    """Generate futures with a trained model.

    Build it with :meth:`from_workdir` (or directly from a config -- an ``ml_collections.ConfigDict``
    or its :class:`~vp_jax.config.RunConfig`, kept as ``run`` -- and restored variables). The
    attributes say what :meth:`predict` expects: ``n_past`` context frames of
    ``image_shape`` (64, 64, 3) and conditions of ``cond_dim`` numbers a frame, raw, as the data
    set stores them (``[action (4), end-effector position (3)]``); ``cond_stats`` (the training
    split's mean and std, or None) is what standardises them for configs with
    ``data.normalize_condition``.
    """

    def __init__(self, config, params, batch_stats, *, cond_stats: dict | None = None, bn_mode: str | None = None,
                 batch_size: int | None = None, step: int | None = None):
        self.run = run = run_config(config)
        self.model_cfg = run.model
        self.n_past = run.n_past
        self.cond_dim = int(self.model_cfg.cond_dim)
        self.image_shape = (int(self.model_cfg.image_size), int(self.model_cfg.image_size), int(self.model_cfg.channels))
        self.bn_mode = bn_mode or run.eval.bn_mode
        if self.bn_mode not in BN_MODES:
            raise ConfigError(f"bn_mode = {self.bn_mode!r}: expected one of {BN_MODES}")
        self.batch_size = int(batch_size or run.eval.batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size = {self.batch_size}: expected an integer >= 1")
        self.step = step
        if bool(run.data.normalize_condition) and self.cond_dim and cond_stats is None:
            raise ConfigError("config.data.normalize_condition is set: cond_stats (the training split's mean and std) "
                              "are needed")
        self.cond_stats = None if cond_stats is None or not run.data.normalize_condition else {
            k: np.asarray(cond_stats[k], np.float32) for k in ("mean", "std")}
        device = jax.devices()[0]
        self.params, self.batch_stats = jax.device_put((params, batch_stats), device)
        self._fns = {}

    @property
    def config(self):
        """The run's config tree (frozen ``ml_collections.ConfigDict``: ``config.data`` etc.)."""
        return self.run.config

    @classmethod
    def from_workdir(cls, workdir: str, checkpoint: str | int = "best", *, data_root: str | None = None,
                     cond_stats: dict | None = None, bn_mode: str | None = None,
                     batch_size: int | None = None) -> "Predictor":
        """Restore ``checkpoint`` ('best', 'latest' or a step) of a ``train.py`` workdir.

        A config that standardises the conditions needs the training split's statistics: they
        are computed from the run's training data (``data_root`` if the data has moved) unless
        ``cond_stats`` (``{'mean': [7], 'std': [7]}``, e.g. a saved ``predictor.cond_stats``) is
        given. Errors (no workdir, no or damaged checkpoint, missing data) are one-line
        :class:`vp_jax.errors.VPError`.
        """
        run = run_config(load_workdir_config(workdir, data_root))
        abstract = jax.eval_shape(lambda k: create_train_state(run, k), jax.random.key(0))
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        absl_log.setLevel(max(level, logging.ERROR))  # orbax's notes on opening a store read-only
        try:
            with CheckpointStore(workdir, keep=run.checkpoint_keep, read_only=True) as store:
                state, _ = store.restore(checkpoint, abstract, run.model)
        finally:
            absl_log.setLevel(level)
        if run.data.normalize_condition and run.model.cond_dim and cond_stats is None:
            cond_stats = condition_stats(open_split(run.data, "train"))
        predictor = cls(run, state.params, state.batch_stats, cond_stats=cond_stats, bn_mode=bn_mode,
                        batch_size=batch_size, step=int(state.step))
        predictor.workdir = os.path.abspath(workdir)
        return predictor

    # ------------------------------------------------------------------------- inputs

    def check_context(self, context_frames) -> np.ndarray:
        """``context_frames`` as an array ``[N, n_past, H, W, C]`` (uint8, or float in [0, 1]);
        a :class:`DataError` naming what is wrong otherwise."""
        x = np.asarray(context_frames)
        want = f"[N, {self.n_past}, {', '.join(map(str, self.image_shape))}]"
        if x.ndim != 5 or x.shape[1] != self.n_past or tuple(x.shape[2:]) != self.image_shape or x.shape[0] < 1:
            raise DataError(f"context_frames of shape {tuple(x.shape)}: expected {want} "
                            f"(N sequences of the model's {self.n_past} context frames)")
        if x.dtype == np.uint8:
            return x
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"context_frames of dtype {x.dtype}: expected uint8 in [0, 255] or float in [0, 1]")
        if not np.all(np.isfinite(x)):
            raise DataError("context_frames: holds NaN or inf; expected float values in [0, 1]")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"context_frames: float values in [{lo:g}, {hi:g}]; expected [0, 1] "
                            "(divide uint8 frames by 255, or pass them as uint8)")
        return x.astype(np.float32)

    def check_conditions(self, conditions, num: int, horizon: int | None) -> tuple[np.ndarray | None, int]:
        """(the model's condition input ``[N, n_past + T, cond_dim]`` float32, standardised as in
        training, or None for an unconditioned model; the horizon T)."""
        if self.cond_dim == 0:
            if conditions is not None:
                got = np.shape(conditions)
                if len(got) != 3 or got[-1] != 0:
                    raise DataError(f"conditions of shape {tuple(got)}: this model takes no conditions (cond_dim 0); "
                                    "pass None and horizon=T")
            if horizon is None:
                raise DataError("horizon: this model takes no conditions, so horizon=T (frames to predict) is needed")
            if int(horizon) < 1:
                raise DataError(f"horizon = {horizon}: expected at least 1 frame to predict")
            return None, int(horizon)
        if conditions is None:
            raise DataError(f"conditions: this model needs [N, {self.n_past} + T, {self.cond_dim}] conditions")
        c = np.asarray(conditions)
        if c.ndim != 3 or c.shape[0] != num:
            raise DataError(f"conditions of shape {tuple(c.shape)}: expected [{num}, {self.n_past} + T, {self.cond_dim}] "
                            f"(one row per frame of each of the {num} sequences)")
        if c.shape[2] != self.cond_dim:
            what = ("action (4), end-effector position (3)" if self.cond_dim == 7
                    else f"the first {self.cond_dim} of action (4), end-effector position (3)")
            raise DataError(f"conditions of shape {tuple(c.shape)}: {c.shape[2]} numbers a frame; the model takes "
                            f"{self.cond_dim} ({what})")
        if c.shape[1] <= self.n_past:
            raise DataError(f"conditions of shape {tuple(c.shape)}: cover {c.shape[1]} frames; need the {self.n_past} "
                            "context frames plus at least one frame to predict")
        if horizon is not None and c.shape[1] != self.n_past + int(horizon):
            raise DataError(f"conditions of shape {tuple(c.shape)}: cover {c.shape[1]} frames; horizon={horizon} "
                            f"needs {self.n_past} + {horizon} = {self.n_past + int(horizon)}")
        if not np.issubdtype(c.dtype, np.number) or np.issubdtype(c.dtype, np.complexfloating):
            raise DataError(f"conditions of dtype {c.dtype}: expected real numbers")
        c = c.astype(np.float32)
        if not np.all(np.isfinite(c)):
            raise DataError("conditions: holds NaN or inf; expected finite numbers")
        return self.standardize(c), c.shape[1] - self.n_past

    def standardize(self, conditions: np.ndarray) -> np.ndarray:
        """Raw conditions -> the model's input, as the data pipeline computes it."""
        c = np.asarray(conditions, np.float32)
        if self.cond_stats is None:
            return c
        d = c.shape[-1]
        return standardize(c, {k: v[:d] for k, v in self.cond_stats.items()})

    # ------------------------------------------------------------------------- prediction

    def _functions(self, num_samples: int):
        if num_samples not in self._fns:
            generate = make_generate_fn(self.model_cfg, self.n_past, num_samples=num_samples, bn_mode=self.bn_mode)

            @jax.jit
            def to_uint8(pred):  # [S, B, T, ...] float -> [B, S, T, ...] uint8, rounded as evaluation rounds
                return jnp.swapaxes(metrics.to_uint8(pred), 0, 1)

            self._fns[num_samples] = (generate, to_uint8)
        return self._fns[num_samples]

    def predict(self, context_frames, conditions, num_samples: int = 1, key=None, *, horizon: int | None = None) -> np.ndarray:
        """Predict ``T`` frames after the context of each of ``N`` sequences, ``num_samples`` times.

        Args:
          context_frames: ``[N, n_past, 64, 64, 3]`` uint8 (or float in [0, 1]).
          conditions: ``[N, n_past + T, cond_dim]`` raw conditions of every frame, context
            included (row t conditions frame t); None for a model without conditions (then
            ``horizon=T``).
          num_samples: futures per sequence (latent samples from the learned prior).
          key: a ``jax.random`` key or an int seed; default :func:`vp_jax.models.generation.evaluation_key`. Sequences go
            through the model ``batch_size`` at a time; call i draws from ``fold_in(key, i)``,
            sample s from ``fold_in(fold_in(key, i), s)``, as in eval.py.

        Returns uint8 ``[N, num_samples, T, 64, 64, 3]``: frames ``n_past .. n_past + T - 1``.
        Compiled once per input shape (sequences per call, horizon, samples); every call after
        the first with the same shapes reuses the program.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ConfigError(f"num_samples = {num_samples!r}: expected an integer >= 1")
        context = self.check_context(context_frames)
        num = context.shape[0]
        cond, horizon = self.check_conditions(conditions, num, horizon)
        if key is None:
            key = evaluation_key(self.run.seed)
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            key = jax.random.key(int(key))
        generate, to_uint8 = self._functions(int(num_samples))
        # A full batch per call with batch statistics (the padding takes part in them, as in
        # evaluation); in inference mode a smaller input needs no padding.
        size = self.batch_size if self.bn_mode == "batch_stats" else min(self.batch_size, num)
        frames = np.zeros((size, self.n_past + horizon, *self.image_shape), context.dtype)
        out = np.empty((num, int(num_samples), horizon, *self.image_shape), np.uint8)
        for i, lo in enumerate(range(0, num, size)):
            hi = min(lo + size, num)
            idx = np.arange(lo, lo + size).clip(max=hi - 1)  # pad the last call by repeating its last sequence
            frames[:, : self.n_past] = context[idx]
            pred = generate(self.params, self.batch_stats, frames, None if cond is None else cond[idx],
                            jax.random.fold_in(key, i))
            out[lo:hi] = np.asarray(to_uint8(pred))[: hi - lo]
        return out
