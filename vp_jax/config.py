"""Configs: validation of an ``ml_collections.ConfigDict`` and the frozen model config.

Every config file in ``configs/`` returns the full tree described in ``docs/design.md``;
:func:`validate` refuses one that contradicts itself with a one-line :class:`ConfigError`
naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import sys
import typing

import ml_collections
import numpy as np
from flax import traverse_util

from vp_jax.errors import ConfigError
from vp_jax.fileio import write_text
from vp_jax.runtime.compat import is_deferred_config_error

SKIP_FRAMES = ("original", "last_context", "every_step")
OUTPUTS = ("frame", "composite")
KL_SCHEDULES = ("cyclical", "monotonic", "constant")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine")
TFR_MODES = ("iteration", "sample", "frame")
SOURCES = ("lab", "tfds", "pushbot", "bair")
CAMERAS = ("image_aux1", "image_main")
BN_MODES = ("inference", "batch_stats")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hashable model hyper-parameters (Linen module attributes must be hashable)."""

    image_size: int = 64
    channels: int = 3
    enc_widths: tuple[int, ...] = (64, 128, 256, 512)
    g_dim: int = 128
    z_dim: int = 64
    rnn_size: int = 256
    predictor_layers: int = 2
    posterior_layers: int = 1
    prior_layers: int = 1
    cond_dim: int = 7
    learned_prior: bool = True
    predictor_bn_head: bool = True
    skip_frame: str = "original"
    torch_lstm_biases: bool = True
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: str = "float32"
    # Pathways the lab/SVG model does not have (off by default; see models/condition.py, vgg64.Decoder):
    decoder_cond: int = 0  # channels of the condition field fed to every decoder stage (0 = off)
    decoder_cond_hidden: int = 32  # hidden width of that field's per-pixel MLP
    field_g: bool = False  # the field reads [c_t, g_t]: the predictor's output (and the latent) too
    output: str = "frame"  # 'frame' (sigmoid image) or 'composite' (mask x painted + (1 - mask) x skip frame)
    transforms: int = 0  # with 'composite': kernels that move the previous frame into the prediction (0 = off)
    transform_size: int = 7  # their size (odd): moves of up to transform_size // 2 pixels a frame
    prior_cond: bool = False  # the learned prior sees [h_{t-1}, c_t] instead of h_{t-1} alone (SVG)
    posterior_frames: bool = False  # the posterior sees a code of the frame pair (x_{t-1}, x_t) beside h_t
    posterior_logvar_init: float = 0.0  # initial log-variance of q (< 0: z starts as information, not noise)


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """``config.train.kl``: the KL weight's annealing (:func:`vp_jax.models.schedules.kl_beta_schedule`)."""

    schedule: str = "cyclical"
    cycles: int = 3
    ratio: float = 0.5
    beta_max: float = 1.0
    per: str = "epoch"
    free_bits: float = 0.0  # nats per latent dimension and frame that cost nothing (0 = the plain KL)


@dataclasses.dataclass(frozen=True)
class TFRConfig:
    """``config.train.tfr``: the teacher-forcing ratio's decay (:func:`vp_jax.models.schedules.teacher_forcing_schedule`)."""

    start: float = 1.0
    start_decay_epoch: int = 0
    decay_step: float = 0.0
    lower_bound: float = 0.0
    mode: str = "iteration"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``config.train``: batch, schedules, optimiser and memory options."""

    batch_size: int = 12
    epoch_size: int = 600
    epochs: int = 300
    lr: float = 0.002
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.999
    kl: KLConfig = KLConfig()
    tfr: TFRConfig = TFRConfig()
    max_nonfinite: int = 5
    remat: bool = False
    grad_accum: int = 1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``config.eval``: validation during training and eval.py's defaults."""

    every_epochs: int = 1
    num_val_batches: int = 0
    batch_size: int = 32
    num_samples: int = 1
    val_samples: int = 1
    bn_mode: str = "inference"
    num_gifs: int = 4
    moving_threshold: float = 0.05


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated config, typed: built once by :func:`run_config` and passed down.

    ``model``, ``train`` and ``eval`` are frozen dataclasses (a field missing from an older
    config.json takes the default above). ``config`` is the tree it was built from, frozen: the
    data source's and the parallel settings are read from it (``config.data``, ``config.parallel``)
    and it is what a workdir's config.json holds.
    """

    seed: int
    n_past: int
    n_future: int
    n_eval: int
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    checkpoint_keep: int
    config: ml_collections.FrozenConfigDict = dataclasses.field(repr=False, compare=False)

    @property
    def data(self) -> ml_collections.FrozenConfigDict:
        return self.config.data

    @property
    def num_frames(self) -> int:
        """Frames a training sequence holds: ``n_past + n_future``."""
        return self.n_past + self.n_future


_KINDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


def _checked(value, kind, field: str):
    """``value`` as ``kind`` (int, float, bool, str or a tuple of ints), or a one-line
    :class:`ConfigError` naming ``field`` when it is of another kind."""
    if kind is bool:
        ok = isinstance(value, (bool, np.bool_))
    elif kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    elif kind is float:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    elif kind is str:
        ok = isinstance(value, str)
    else:  # tuple[int, ...]
        ok = isinstance(value, (tuple, list)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value)
        return tuple(int(v) for v in value) if ok else _wrong(field, value, "a sequence of integers")
    return kind(value) if ok else _wrong(field, value, _KINDS[kind])


def _wrong(field: str, value, expected: str):
    raise ConfigError(f"{field} = {value!r}: expected {expected}")


def _typed(cls, node, prefix: str):
    """``cls(**node)`` with every value checked against its field's type; an unknown field or a
    value of the wrong kind raises a one-line :class:`ConfigError` naming the field. Fields that
    ``node`` lacks take their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in node.items():
        field = f"{prefix}.{key}"
        if key not in hints:
            raise ConfigError(f"{field}: unknown field (expected one of {sorted(hints)})")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                _wrong(field, value, "a group of fields")
            kwargs[key] = _typed(hints[key], value, field)
        else:
            kwargs[key] = _checked(value, hints[key], field)
    return cls(**kwargs)


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The frozen :class:`ModelConfig` of ``config.model`` (fields and their kinds checked)."""
    return _typed(ModelConfig, config.model, "config.model")


def run_config(config: ml_collections.ConfigDict) -> RunConfig:
    """Check ``config`` and build its :class:`RunConfig` (once per run; a RunConfig is returned
    as it is). Raises a one-line :class:`ConfigError` naming the first bad field."""
    if isinstance(config, RunConfig):
        return config
    try:
        run = RunConfig(
            seed=_checked(config.seed, int, "config.seed"),
            n_past=_checked(config.n_past, int, "config.n_past"),
            n_future=_checked(config.n_future, int, "config.n_future"),
            n_eval=_checked(config.n_eval, int, "config.n_eval"),
            model=model_config(config),
            train=_typed(TrainConfig, config.train, "config.train"),
            eval=_typed(EvalConfig, config.eval, "config.eval"),
            checkpoint_keep=_checked(config.checkpoint.keep, int, "config.checkpoint.keep"),
            config=ml_collections.FrozenConfigDict(config),
        )
    except AttributeError as err:  # a missing field in a hand-written config
        raise ConfigError(f"config is missing a field: {err}") from None
    _check(run, config)
    return run


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check ``config`` (every field known and of the right kind, the fields that must agree with
    each other); return it unchanged. :func:`run_config` checks and builds the typed config."""
    run_config(config)
    return config


def _require(cond: bool, field: str, expected: str, value) -> None:
    if not cond:
        raise ConfigError(f"config.{field} = {value!r}: expected {expected}")


#: Integer fields and their lowest allowed value.
_AT_LEAST = {
    "n_past": 1, "n_future": 1, "model.cond_dim": 0, "model.decoder_cond": 0, "model.decoder_cond_hidden": 1,
    "model.transforms": 0, "train.batch_size": 1, "train.epoch_size": 1, "train.epochs": 1, "train.kl.cycles": 1,
    "train.max_nonfinite": 1, "eval.every_epochs": 1, "eval.batch_size": 1, "eval.num_samples": 1,
    "eval.val_samples": 1, "checkpoint_keep": 1,
}
#: Number fields: (what is expected, the test).
_RANGES = {
    "train.lr": ("a positive number", lambda v: v > 0),
    "train.kl.beta_max": ("a number >= 0", lambda v: v >= 0),
    "train.kl.free_bits": ("a number >= 0", lambda v: v >= 0),
    "train.kl.ratio": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "train.tfr.lower_bound": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "train.tfr.start": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "train.tfr.decay_step": ("a number >= 0", lambda v: v >= 0),
    "eval.moving_threshold": ("a number in [0, 1)", lambda v: 0 <= v < 1),
}
_CHOICES = {
    "model.skip_frame": SKIP_FRAMES, "model.output": OUTPUTS, "model.dtype": DTYPES, "train.lr_schedule": LR_SCHEDULES,
    "train.kl.schedule": KL_SCHEDULES, "train.kl.per": ("epoch", "step"), "train.tfr.mode": TFR_MODES,
    "eval.bn_mode": BN_MODES,
}


def _check(run: RunConfig, config: ml_collections.ConfigDict) -> None:
    """Every field's range, then the fields that must agree with each other."""
    def value(name):
        return functools.reduce(getattr, name.split("."), run)

    for name, lowest in _AT_LEAST.items():
        _require(value(name) >= lowest, name.replace("_keep", ".keep"), f"an integer >= {lowest}", value(name))
    for name, (expected, ok) in _RANGES.items():
        _require(ok(value(name)), name, expected, value(name))
    for name, choices in _CHOICES.items():
        _require(value(name) in choices, name, f"one of {choices}", value(name))
    _check_model(run)
    try:
        _check_data(run, config.data)
    except AttributeError as err:  # a missing field in a hand-written config
        raise ConfigError(f"config is missing a field: {err}") from None


def _check_model(run: RunConfig) -> None:
    m = run.model
    _require(run.n_eval > run.n_past, "n_eval", f"more than n_past ({run.n_past})", run.n_eval)
    _require(m.image_size == 64, "model.image_size", "64 (the VGG-64 network)", m.image_size)
    _require(len(m.enc_widths) == 4, "model.enc_widths", "4 stage widths", m.enc_widths)
    _require(m.skip_frame != "original" or run.n_past >= 2, "model.skip_frame",
             "'last_context' or 'every_step' when n_past < 2 (the original uses frame n_past-2)", m.skip_frame)
    _require(not m.decoder_cond or m.cond_dim > 0, "model.decoder_cond", "0 when model.cond_dim is 0 (no condition)",
             m.decoder_cond)
    _require(not m.field_g or m.decoder_cond, "model.field_g", "False unless model.decoder_cond > 0", m.field_g)
    _require(not m.transforms or m.output == "composite", "model.transforms",
             "0 unless model.output = 'composite'", m.transforms)
    _require(m.transform_size >= 1 and m.transform_size % 2 == 1, "model.transform_size", "an odd integer >= 1",
             m.transform_size)
    _require(not m.prior_cond or (m.cond_dim > 0 and m.learned_prior), "model.prior_cond",
             "False unless the model has a condition (cond_dim > 0) and a learned prior", m.prior_cond)


def _check_data(run: RunConfig, d) -> None:
    _require(run.num_frames <= d.seq_len, "n_future", f"n_past + n_future <= data.seq_len ({d.seq_len})",
             run.n_future)
    _require(run.n_eval <= d.seq_len, "n_eval", f"<= data.seq_len ({d.seq_len})", run.n_eval)
    _require(d.source in SOURCES, "data.source", f"one of {SOURCES}", d.source)
    _require(d.source not in ("tfds", "bair") or d.camera in CAMERAS, "data.camera",
             f"one of {CAMERAS} (image_aux1 is the camera SVG uses)", d.camera)
    _require(d.source == "tfds" or run.model.cond_dim in (0, 7), "model.cond_dim",
             "0 (no condition) or 7 (action 4 + position 3)", run.model.cond_dim)


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Import ``path`` (a ``configs/*.py`` file) and return its ``get_config()``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    # Config files import each other as `configs.<name>`: make their parent folder importable.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location("_vp_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: expected a get_config() function")
    return module.get_config()


def flat_fields(tree: dict) -> dict:
    """``{'train': {'kl': {'schedule': 'x'}}}`` -> ``{'train.kl.schedule': 'x'}``, lists as tuples
    (so that a config and its config.json compare equal, and values hash)."""
    flat = traverse_util.flatten_dict(dict(tree), sep=".")
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in flat.items()}


#: The lab's command-line names -> vp_jax config fields: ``--config.niter=50`` is ``--config.train.epochs=50``
#: (docs/design.md, "The lab's names"). ``kl_anneal_cyclical`` True/False is ``train.kl.schedule``
#: cyclical/monotonic.
LAB_NAMES = {
    "lr": "train.lr", "beta1": "train.beta1", "batch_size": "train.batch_size", "niter": "train.epochs",
    "epoch_size": "train.epoch_size", "tfr": "train.tfr.start", "tfr_start_decay_epoch": "train.tfr.start_decay_epoch",
    "tfr_decay_step": "train.tfr.decay_step", "tfr_lower_bound": "train.tfr.lower_bound",
    "kl_anneal_cyclical": "train.kl.schedule", "kl_anneal_ratio": "train.kl.ratio", "kl_anneal_cycle": "train.kl.cycles",
    "n_past": "n_past", "n_future": "n_future", "n_eval": "n_eval", "seed": "seed",
    "z_dim": "model.z_dim", "g_dim": "model.g_dim", "rnn_size": "model.rnn_size",
}


def lab_names(argv: list[str], config_flag: str = "config") -> list[str]:
    """``argv`` with every ``--config.LABNAME=VALUE`` of :data:`LAB_NAMES` renamed to its vp_jax field."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        field = LAB_NAMES.get(name.removeprefix(f"--{config_flag}.")) if name.startswith(f"--{config_flag}.") else None
        if field == "train.kl.schedule" and eq:
            value = {"true": "cyclical", "1": "cyclical", "false": "monotonic", "0": "monotonic"}.get(value.lower(), value)
        out.append(f"--{config_flag}.{field}{eq}{value}" if field else arg)
    return out


def cli_flags_parser(flag_values=None, config_flag: str = "config"):
    """A ``flags_parser`` for ``absl.app.run(main, flags_parser=...)``: any command-line error ends
    the process with ONE line ``error: ...`` on stderr and exit status 2 (as ``@cli_main`` does for
    :class:`~vp_jax.errors.VPError`), where absl prints two lines ("FATAL Flags parsing error",
    "Pass --helpshort ...") and ml_collections a traceback (an unknown ``--config.FIELD``, a
    ``--config`` file that is missing or fails to load).
    """

    def parse(argv):
        from absl import flags as absl_flags

        fv = absl_flags.FLAGS if flag_values is None else flag_values
        argv = lab_names(argv, config_flag)
        if sys.argv[1:] and sys.argv[0] == argv[0]:
            sys.argv[:] = lab_names(sys.argv, config_flag)  # config_flags reads the overrides from sys.argv too
        try:
            rest = fv(argv)
        except absl_flags.Error as err:
            if _flag_value(argv, config_flag) is None and any(a.startswith(f"--{config_flag}.") for a in argv[1:]):
                _exit_with(f"{err}: --{config_flag}.FIELD=VALUE overrides need --{config_flag} FILE")
            _exit_with(_config_file_problem(argv, config_flag) or f"{err} (see --helpshort)")
        except BrokenPipeError:
            raise
        except Exception as err:  # noqa: BLE001 - ml_collections raises plain KeyError/AttributeError
            _exit_with(_config_file_problem(argv, config_flag) or _override_error(argv, err, config_flag))
        if config_flag in fv and is_deferred_config_error(fv[config_flag].value):
            _exit_with(_config_file_problem(argv, config_flag) or f"--{config_flag}: cannot be loaded")
        return rest

    return parse


def _exit_with(message: str) -> None:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def _flag_value(argv, name: str) -> str | None:
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_file_problem(argv, config_flag: str) -> str | None:
    """Why the ``--config`` file of ``argv`` cannot be loaded, or None (loads, or none given)."""
    path = _flag_value(argv, config_flag)
    if path is None:
        return None
    if not os.path.isfile(path) and ":" in path:  # ml_collections' "file.py:argument" form
        path = path.split(":", 1)[0]
    if not os.path.isfile(path):
        return f"--{config_flag} {path}: file not found (expected a configs/*.py file with get_config())"
    try:
        load_config_file(path)
    except ConfigError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - anything the file itself raises
        return f"--{config_flag} {path}: cannot be loaded ({type(err).__name__}: {err})"[:400]
    return None


def _override_error(argv, err, config_flag: str) -> str:
    """Name the ``--config.FIELD=...`` argument whose FIELD does not exist, with a suggestion."""
    import difflib

    path = _flag_value(argv, config_flag)
    config = load_config_file(path) if path else None
    for arg in argv[1:]:
        if config is None or not arg.startswith(f"--{config_flag}."):
            continue
        node, parts = config, arg[2:].split("=", 1)[0].split(".")[1:]
        for i, key in enumerate(parts):
            if isinstance(node, (ml_collections.ConfigDict, dict)) and key in node:
                node = node[key]
                continue
            parent = ".".join([config_flag, *parts[:i]])
            if not isinstance(node, (ml_collections.ConfigDict, dict)):
                return f"{arg}: {parent} is a {type(node).__name__}, not a group of fields"
            close = difflib.get_close_matches(key, list(node.keys()), n=1)
            hint = f"did you mean {parent}.{close[0]}?" if close else f"fields: {', '.join(sorted(node.keys()))}"
            return f"{arg}: {parent} has no field {key!r} ({hint})"
    cause = _root_cause(err)
    return f"bad command line ({type(cause).__name__}: {cause})"[:400]


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or err.__context__
        if nxt is None:
            break
        err = nxt
    return err


def save_config_json(config: ml_collections.ConfigDict, path: str) -> None:
    """Write the config as JSON (temporary file + rename)."""
    write_text(path, config.to_json_best_effort(indent=2, sort_keys=True))


def load_config_json(path: str) -> ml_collections.ConfigDict:
    """Read a config written by :func:`save_config_json` (tuples come back as tuples)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: missing (is this a vp_jax workdir?)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON config ({err})") from None
    raw.setdefault("model", {})
    if "enc_widths" in raw["model"]:
        raw["model"]["enc_widths"] = tuple(raw["model"]["enc_widths"])
    return ml_collections.ConfigDict(raw)


def load_workdir_config(workdir: str, data_root: str | None = None) -> ml_collections.ConfigDict:
    """The validated config of a training workdir (``DIR/config.json``); ``data_root`` replaces
    ``data.root`` (data moved since training)."""
    if not os.path.isdir(workdir):
        raise ConfigError(f"{workdir}: no such workdir")
    config = load_config_json(os.path.join(workdir, "config.json"))
    if data_root:
        config.data.root = data_root
    return validate(config)
