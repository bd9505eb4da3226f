"""vp_jax.config: the typed RunConfig against the ConfigDict it is built from, and its errors."""

import dataclasses
import glob
import json
import os

import pytest

from vp_jax.config import (
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config_file,
    load_workdir_config,
    run_config,
    save_config_json,
)
from vp_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py"))


def _as_lists(tree):
    return json.loads(json.dumps(tree))  # tuples -> lists, as config.json stores them


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_typed_config_holds_every_value_of_the_file(path):
    """Round trip: each typed group, as a dict, is the config file's group (no field dropped,
    renamed or defaulted), and the frozen tree is the file's tree."""
    config = load_config_file(path)
    run = run_config(config)
    for name in ("model", "train", "eval"):
        assert _as_lists(dataclasses.asdict(getattr(run, name))) == _as_lists(config[name].to_dict()), name
    assert (run.seed, run.n_past, run.n_future, run.n_eval, run.checkpoint_keep) == (
        config.seed, config.n_past, config.n_future, config.n_eval, config.checkpoint.keep)
    assert run.num_frames == config.n_past + config.n_future
    assert _as_lists(run.config.to_dict()) == _as_lists(config.to_dict())
    assert run_config(run) is run
    with pytest.raises(Exception):  # frozen: a run's settings cannot change under it
        run.config.data.root = "elsewhere"


def test_the_dataclass_defaults_are_the_lab_config():
    """A field an older config.json lacks takes the dataclass default: the lab's value."""
    lab = run_config(load_config_file(os.path.join(ROOT, "configs", "lab_bair.py")))
    assert lab.model == ModelConfig() and lab.train == TrainConfig() and lab.eval == EvalConfig()


def _workdir(tmp_path, edit) -> str:
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    save_config_json(config, str(tmp_path / "config.json"))
    raw = json.load(open(tmp_path / "config.json"))
    edit(raw)
    json.dump(raw, open(tmp_path / "config.json", "w"))
    return str(tmp_path)


def test_fields_missing_from_an_old_config_json_take_their_defaults(tmp_path):
    def drop(raw):
        for group, name in (("train", "remat"), ("train", "grad_accum"), ("eval", "moving_threshold")):
            del raw[group][name]
        del raw["train"]["kl"]["free_bits"]

    run = run_config(load_workdir_config(_workdir(tmp_path, drop)))
    assert (run.train.remat, run.train.grad_accum, run.train.kl.free_bits, run.eval.moving_threshold) == (
        False, 1, 0.0, 0.05)


@pytest.mark.parametrize("group,name,value,expected", [
    ("train", "batch_size", "12", r"^config\.train\.batch_size = '12': expected an integer$"),
    ("train", "remat", 1, r"^config\.train\.remat = 1: expected True or False$"),
    ("train", "lr", None, r"^config\.train\.lr = None: expected a number$"),
    ("eval", "bn_mode", 3, r"^config\.eval\.bn_mode = 3: expected a string$"),
    ("model", "enc_widths", [4, "4", 8, 8], r"^config\.model\.enc_widths = .*: expected a sequence of integers$"),
    ("train", "kl", 0.5, r"^config\.train\.kl = 0\.5: expected a group of fields$"),
    ("train", "warmup", 5, r"^config\.train\.warmup: unknown field \(expected one of \[.*'warmup_steps'.*\]\)$"),
])
def test_a_value_of_the_wrong_kind_or_an_unknown_field_is_named(tmp_path, group, name, value, expected):
    def edit(raw):
        raw[group][name] = value

    with pytest.raises(ConfigError, match=expected):
        load_workdir_config(_workdir(tmp_path, edit))


def test_an_unknown_nested_field_is_named(tmp_path):
    def edit(raw):
        raw["train"]["tfr"]["decay"] = 0.1

    with pytest.raises(ConfigError, match=r"^config\.train\.tfr\.decay: unknown field"):
        load_workdir_config(_workdir(tmp_path, edit))


def test_run_config_is_hashable_where_jit_needs_it():
    run = run_config(load_config_file(os.path.join(ROOT, "configs", "tiny.py")))
    assert isinstance(run, RunConfig)
    assert hash(run.model) == hash(dataclasses.replace(run.model)) and hash(run.train) == hash(dataclasses.replace(run.train))



def test_the_labs_names_set_the_fields_they_stand_for():
    """``--config.niter=7`` etc. (the lab's flags) become the vp_jax fields' overrides, and every
    name of the table points at a field of the configs. (A real run with ``--config.niter``:
    tests/test_reliability.py.)"""
    from vp_jax.config import LAB_NAMES, lab_names

    argv = ["train.py", "--config", "c.py", "--config.niter=7", "--config.lr=0.005", "--config.tfr_start_decay_epoch",
            "15", "--config.kl_anneal_cyclical=False", "--config.kl_anneal_cycle=2", "--config.train.beta2=0.9"]
    assert lab_names(argv) == [
        "train.py", "--config", "c.py", "--config.train.epochs=7", "--config.train.lr=0.005",
        "--config.train.tfr.start_decay_epoch", "15", "--config.train.kl.schedule=monotonic",
        "--config.train.kl.cycles=2", "--config.train.beta2=0.9"]
    assert lab_names(["--config.kl_anneal_cyclical=True"]) == ["--config.train.kl.schedule=cyclical"]
    config = load_config_file(os.path.join(ROOT, "configs", "lab_bair.py"))
    for field in LAB_NAMES.values():
        node = config
        for key in field.split("."):
            assert key in node, field
            node = node[key]
