"""Studies over config settings, run, resumed and written up: ``python -m vp_jax.tools.study``.

    python -m vp_jax.tools.study --config configs/pushbot.py --out runs/study_lr --preset lr
    python -m vp_jax.tools.study --config configs/pushbot.py --out runs/study_x \\
        --vary train.lr=0.0002,0.002 --vary train.kl.schedule=monotonic,cyclical --seeds 2
    python -m vp_jax.tools.study --config configs/pushbot.py --out runs/study_lr --preset lr --report-only

Every combination of the ``--vary`` values (a cross product, times ``--seeds`` seeds) is one run,
trained in its own workdir ``OUT/<settings>`` (e.g. ``OUT/train.lr=0.002``) and then evaluated
on the test split as eval.py does with its defaults (``OUT/<settings>/eval/test/``). Values are
read as ``--config.FIELD=VALUE`` reads them: by the type of the field in the config (``True`` /
``False`` for a bool, ``3`` for an int, ``(16,32,64,64)`` for a tuple); the lab's names work
too (``lr``, ``tfr_start_decay_epoch``, ``kl_anneal_cyclical``...). Every combination's config
is checked before anything trains: an unknown field or a bad value ends the command with one
line ``error: ...`` and exit status 2, and nothing is written.

Running the same command again continues the study: a finished run (every epoch in its
metrics.csv and its checkpoint) is kept as it is, a half-finished one resumes exactly from its
latest checkpoint (after Ctrl-C or kill -9), an evaluation newer than the checkpoint is kept.
A run that fails is named in the summary with its error, and the study goes on with the next.

Runs go one after another in this process. ``--jobs N`` starts N worker processes instead
(each one run at a time, its output in ``OUT/logs/<settings>.log``) and pins each to its share
of the CPU cores (``os.sched_setaffinity``: with 2 cores and ``--jobs 2``, one core each);
XLA sizes its CPU thread pools to the cores a process may use, so N workers do not fight over
the same cores. On a CPU this seldom beats one run at a time on all cores; it pays with many
cores, or with one GPU per worker (``CUDA_VISIBLE_DEVICES``, set by you).

At the end (and with ``--report-only``, which trains nothing) the write-up is regenerated from
the workdirs: ``OUT/report.md``, a self-contained ``OUT/report.html`` (figures embedded),
``OUT/results.csv`` (one row per run) and ``OUT/figures/*.png``: per varied setting the table
of the lab's report (setting -> best validation PSNR and its epoch, test PSNR / SSIM /
moving-pixel PSNR / action sensitivity, final training KL), the curves of every run overlaid
(validation PSNR, KL, MSE, beta, teacher-forcing ratio per epoch), test sequence 0 predicted by
every run beside the truth, and a one-line reading of the table.

Presets (``--preset``) are named ``--vary`` lists for the lab's four studies; with
configs/lab_bair.py they are the lab's experiments (see :data:`PRESETS`).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import difflib
import html
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pandas as pd
from absl import flags
from matplotlib.ticker import MaxNLocator
from ml_collections.config_flags import tuple_parser

from vp_jax.config import LAB_NAMES, flat_fields, load_config_file, load_config_json, run_config
from vp_jax.errors import ConfigError, DataError, VPError, cli_main
from vp_jax.evaluation.evaluate import EvalOptions, evaluate_workdir
from vp_jax.evaluation.scoring import Validator
from vp_jax.report import visualize
from vp_jax.store.checkpoints import checkpoint_dir
from vp_jax.tools import cli
from vp_jax.tools.compare import load_run, summarize
from vp_jax.training.loop import train
from vp_jax.training.workdir import check_same_run

EVAL_NAME = "test"  # DIR/eval/test: eval.py's default evaluation (custom protocol, test split, best checkpoint)
SEED_FIELD = "seed"

#: The parsers ``--config.FIELD=VALUE`` uses for a field of each type (ml_collections' config_flags).
PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
           tuple: tuple_parser.TupleParser()}
KINDS = {bool: "True or False", int: "an integer", float: "a number", tuple: "a tuple such as (1,2)", str: "a string"}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named study: ``runs`` the settings of each run (``{field: value}`` dicts, one run each),
    ``fixed`` ``(field, value)`` settings applied to every run, ``lab`` what the lab's report
    found (a line of the write-up). Both are functions of the loaded config, so that a preset can
    scale to the config's length. A run's settings that equal the config's are left out, so that
    the run is the config itself (and ``--reuse`` finds it in another study)."""

    runs: object
    fixed: object = lambda c: ()
    lab: str = ""


def _each(field: str, *values: str):
    return lambda c: [{field: v} for v in values]


def _tfr_decay_runs(c) -> list:
    """tfr from 1 down by a step per epoch to 0. On a run of the lab's length (>= 100 epochs) the
    lab's start-decay epochs 0 / 15 / 50, 0.01 a step (from epoch 50, teacher forcing ends at
    epoch 150); on a shorter one 1 / (half the run) a step (decaying from epoch 0, teacher forcing
    ends halfway through the run), starting at epoch 0, at a quarter of the run, and no
    decay at all (``decay_step`` 0: teacher forcing throughout, the config's own schedule)."""
    e = c.train.epochs
    step = "0.01" if e >= 100 else f"{1.0 / max(1, e // 2):.4g}"
    if e >= 100:
        return [{"train.tfr.start_decay_epoch": v, "train.tfr.decay_step": step} for v in ("0", "15", "50")]
    return [{"train.tfr.start_decay_epoch": "0", "train.tfr.decay_step": step},
            {"train.tfr.start_decay_epoch": str(e // 4), "train.tfr.decay_step": step},
            {"train.tfr.start_decay_epoch": "0", "train.tfr.decay_step": "0.0"}]


def _kl_anneal_runs(c) -> list:
    """Monotonic, cyclical and constant KL weight; cyclical with the config's cycles, or 2 when
    it has fewer (one cycle is monotonic)."""
    cyclical = {"train.kl.schedule": "cyclical", **({"train.kl.cycles": "2"} if c.train.kl.cycles < 2 else {})}
    return [{"train.kl.schedule": "monotonic"}, cyclical, {"train.kl.schedule": "constant"}]


PRESETS = {
    "lr": Preset(_each("train.lr", "0.0002", "0.002", "0.005"),
                 lab="the lab (BAIR, 300 epochs, monotonic KL): 0.0002 / 0.002 / 0.005 -> best validation PSNR "
                     "21.31 / 25.73 / 24.76 dB"),
    "tfr_decay": Preset(_tfr_decay_runs, lambda c: (("train.tfr.start", "1.0"), ("train.tfr.lower_bound", "0.0")),
                        lab="the lab (BAIR, 300 epochs): teacher forcing decaying from epoch 0 / 15 / 50 -> best "
                            "validation PSNR 18.15 / 25.73 / 26.11 dB"),
    "kl_anneal": Preset(_kl_anneal_runs,
                        lab="the lab: monotonic against cyclical KL annealing, KL and PSNR curves side by side; "
                            "students report 25.6 (monotonic) and 26.3 dB (cyclical) test PSNR"),
    "prior": Preset(_each("model.learned_prior", "True", "False"),
                    lab="the lab: learned against fixed N(0, I) prior; students report 26.5 (learned) and "
                        "25.6 dB (fixed prior, monotonic) test PSNR"),
}


# ----------------------------------------------------------------------------- settings


def split_values(text: str) -> list[str]:
    """``'a,(1,2),b'`` -> ``['a', '(1,2)', 'b']``: commas inside brackets belong to the value."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def field_node(config: ml_collections.ConfigDict, field: str, arg: str):
    """``(parent ConfigDict, key)`` of ``field`` (``train.kl.schedule``), or a one-line ConfigError
    naming ``arg`` and the closest field."""
    node, parts = config, field.split(".")
    for i, key in enumerate(parts):
        parent = ".".join(parts[:i]) or "config"
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"{arg}: {parent} is a {type(node).__name__}, not a group of fields")
        if key not in node:
            close = difflib.get_close_matches(key, list(node.keys()), n=1)
            hint = f"did you mean {'.'.join([*parts[:i], close[0]])}?" if close else f"fields: {', '.join(sorted(node))}"
            raise ConfigError(f"{arg}: unknown field {field!r} ({parent} has no {key!r}; {hint})")
        if i == len(parts) - 1:
            if isinstance(node[key], ml_collections.ConfigDict):
                raise ConfigError(f"{arg}: {field} is a group of fields; name one of them ({', '.join(sorted(node[key]))})")
            return node, key
        node = node[key]


def lab_field(field: str, value: str) -> tuple[str, str]:
    """The lab's name of a field (:data:`vp_jax.config.LAB_NAMES`) -> vp_jax's, as train.py reads it."""
    name = LAB_NAMES.get(field, field)
    if field == "kl_anneal_cyclical":
        value = {"true": "cyclical", "1": "cyclical", "false": "monotonic", "0": "monotonic"}.get(value.lower(), value)
    return name, value


def parse_value(config: ml_collections.ConfigDict, field: str, text: str, arg: str):
    """``text`` as the value of ``field`` of ``config``, parsed by the field's type as
    ``--config.FIELD=TEXT`` parses it; a one-line ConfigError naming ``arg`` when it is not one."""
    node, key = field_node(config, field, arg)
    kind = type(node[key])
    parser = PARSERS.get(kind)
    try:
        value = parser.parse(text) if parser else text
        if kind is tuple and not isinstance(value, tuple):
            raise ValueError(text)
        probe = ml_collections.ConfigDict({key: node[key]})
        probe[key] = value  # ConfigDict's own type check (e.g. a str into a float field)
    except (ValueError, TypeError, SyntaxError):
        raise ConfigError(f"{arg}: {field} = {text!r}: expected {KINDS.get(kind, kind.__name__)} "
                          f"(the field is {node[key]!r} in the config)") from None
    return probe[key]


def parse_assignment(config, arg: str, flag: str, many: bool) -> tuple[str, list]:
    """``'FIELD=V1,V2'`` -> ``(field, [(text, value), ...])`` (one value unless ``many``)."""
    shown = f"{flag} {arg}"
    field, eq, text = arg.partition("=")
    field = field.strip()
    if not eq or not field or not text.strip():
        raise ConfigError(f"{shown}: expected FIELD=VALUE{',VALUE...' if many else ''} (e.g. train.lr=0.0002,0.002)")
    texts = split_values(text) if many else [text]
    if any(not t.strip() for t in texts):
        raise ConfigError(f"{shown}: an empty value")
    pairs = [lab_field(field, t.strip()) for t in texts]
    name = pairs[0][0]
    values = [(t, parse_value(config, name, t, shown)) for _, t in pairs]
    if many and len({repr(v) for _, v in values}) < len(values):
        raise ConfigError(f"{shown}: a value is given twice")
    return name, values


def value_name(text: str) -> str:
    """A value as it appears in a workdir's name: ``(16,32,64,64)`` -> ``16-32-64-64``."""
    return re.sub(r"[^\w.+-]", "", re.sub(r"[,\s]+", "-", text.strip("()[] "))) or "empty"


@dataclasses.dataclass
class Run:
    """One run of the study: its settings ``{field: text}``, workdir name, config."""

    name: str
    settings: dict
    config: ml_collections.ConfigDict
    seed_index: int = 0

    @property
    def setting_key(self) -> tuple:
        """The varied settings without the seed: the runs that differ only by seed share it."""
        return tuple((k, v) for k, v in self.settings.items() if k != SEED_FIELD)


@dataclasses.dataclass
class Study:
    config_path: str
    out: str
    fields: list  # varied fields, in order
    runs: list
    fixed: list  # (field, text)
    seeds: int
    lab: list  # lines: what the lab found
    reuse: list = dataclasses.field(default_factory=list)  # study folders whose finished runs may be copied


def plan(args) -> Study:
    """Every run of the study, each config checked (:func:`vp_jax.config.run_config`): a bad
    ``--vary``/``--set``/preset value is a one-line ConfigError, before anything is written."""
    base = load_config_file(args.config)
    fixed, lab = [], []
    axes = []  # the cross product's axes; each a list of options, an option [(field, text, value), ...]
    for preset in args.preset or []:
        p = PRESETS[preset]
        fixed += [(f, t) for f, t in p.fixed(base)]
        axes.append([[(f, *parse_assignment(base, f"{f}={t}", f"--preset {preset}:", many=False)[1][0])
                      for f, t in option.items()] for option in p.runs(base)])
        lab += [p.lab] if p.lab else []
    fixed_values = []
    for arg in [f"{f}={t}" for f, t in fixed] + list(args.set or []):
        field, values = parse_assignment(base, arg, "--set", many=False)
        fixed_values.append((field, values[0]))
    for arg in args.vary or []:
        field, values = parse_assignment(base, arg, "--vary", many=True)
        if any(field == f for axis in axes for option in axis for f, _, _ in option):
            raise ConfigError(f"--vary {arg}: {field} is varied twice")
        axes.append([[(field, text, value)] for text, value in values])
    fields = list(dict.fromkeys(f for axis in axes for option in axis for f, _, _ in option))
    if not axes and args.seeds < 2:
        raise ConfigError("nothing to vary: give --vary FIELD=V1,V2 or --preset (or --seeds 2 or more)")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: expected an integer >= 1")
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: expected an integer >= 1")
    runs = []
    for combo in itertools.product(*axes):
        for s in range(args.seeds):
            config = ml_collections.ConfigDict(base.to_dict())
            for field, (_, value) in fixed_values:
                node, key = field_node(config, field, field)
                node[key] = value
            given = {}
            for field, text, value in (item for option in combo for item in option):
                node, key = field_node(config, field, field)
                node[key] = value
                given[field] = text
            if args.seeds > 1:
                config.seed = base.seed + s
                given[SEED_FIELD] = str(config.seed)
            name = ",".join(f"{f}={value_name(t)}" for f, t in given.items()) or "base"
            settings = {f: given.get(f, str(_get(config, f))) for f in fields}
            settings.update({SEED_FIELD: given[SEED_FIELD]} if SEED_FIELD in given else {})
            try:
                run_config(config)
            except ConfigError as err:
                raise ConfigError(f"run {name}: {err}") from None
            runs.append(Run(name, settings, config, s))
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        raise ConfigError(f"two runs would share a workdir name ({names}): give values that differ as text")
    return Study(args.config, args.out, fields, runs, [(f, t) for f, (t, _) in fixed_values], args.seeds, lab,
                 list(args.reuse or []))


def _get(config, field: str):
    node, key = field_node(config, field, field)
    return node[key]


# ----------------------------------------------------------------------------- running


def _step_folders(workdir: str) -> list[int]:
    root = checkpoint_dir(workdir)
    return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


def is_finished(workdir: str, config) -> bool:
    """Whether ``workdir`` holds a finished training of ``config``: its metrics.csv has the row of
    the last epoch and its latest checkpoint is that row's step (the loop saves the checkpoint
    first, then the row). A workdir trained with another config is refused (ConfigError)."""
    csv, saved = os.path.join(workdir, "metrics.csv"), os.path.join(workdir, "config.json")
    if not (os.path.isfile(csv) and os.path.isfile(saved)):
        return False
    check_same_run(load_config_json(saved), config)
    try:
        df = pd.read_csv(csv)
    except Exception:  # noqa: BLE001 - a damaged CSV: train resumes and rewrites it
        return False
    last = df[df["epoch"] == config.train.epochs] if "epoch" in df.columns else df.iloc[:0]
    steps = _step_folders(workdir)
    return bool(len(last)) and bool(steps) and steps[-1] == int(last["step"].iloc[-1])


def eval_dir(workdir: str) -> str:
    return os.path.join(workdir, "eval", EVAL_NAME)


def is_evaluated(workdir: str) -> bool:
    """Whether the test evaluation (metrics.json and predictions.npz) is newer than every checkpoint."""
    files = [os.path.join(eval_dir(workdir), n) for n in ("metrics.json", "predictions.npz")]
    steps = _step_folders(workdir)
    if not all(os.path.isfile(f) for f in files) or not steps:
        return False
    newest = max(os.path.getmtime(os.path.join(checkpoint_dir(workdir), str(s))) for s in steps)
    return min(os.path.getmtime(f) for f in files) > newest


def same_config(workdir: str, config) -> bool:
    """Whether ``workdir``'s config.json is ``config``, field for field."""
    saved = os.path.join(workdir, "config.json")
    return os.path.isfile(saved) and flat_fields(load_config_json(saved).to_dict()) == flat_fields(config.to_dict())


def copy_finished(run: Run, workdir: str, studies: list[str]) -> str | None:
    """Copy a finished, evaluated run of exactly ``run``'s config from one of ``studies`` (other
    study folders) into the new ``workdir`` (files and their times as they are); the source or None."""
    if os.path.exists(workdir):
        return None
    for folder in studies:
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            src = os.path.join(folder, name)
            if same_config(src, run.config) and is_finished(src, run.config) and is_evaluated(src):
                shutil.copytree(src, workdir, symlinks=True, ignore=shutil.ignore_patterns(".lock", ".lock.pid"))
                return src
    return None


def run_one(run: Run, workdir: str, reuse: list[str] = ()) -> str:
    """Train (or resume) and evaluate one run unless already done; return what was done."""
    did = []
    source = copy_finished(run, workdir, reuse)
    if source:
        did.append(f"copied from {source}")
    if is_finished(workdir, run.config):
        did.append("training kept")
    else:
        train(run.config, workdir, Validator)  # resumes what the workdir holds
        did.append("trained")
    if is_evaluated(workdir):
        did.append("evaluation kept")
    else:
        evaluate_workdir(workdir, EvalOptions(split=EVAL_NAME))
        did.append("evaluated")
    return ", ".join(did)


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300] if not isinstance(err, VPError) else \
        " ".join(str(err).split())[:300]


def run_serial(study: Study) -> dict:
    """Every run in this process, one after another: ``{name: error line}`` of those that failed."""
    failed = {}
    for i, run in enumerate(study.runs, 1):
        t0 = time.time()
        print(f"study: [{i}/{len(study.runs)}] {run.name}: starting", flush=True)
        try:
            did = run_one(run, os.path.join(study.out, run.name), study.reuse)
            print(f"study: [{i}/{len(study.runs)}] {run.name}: done ({did}, {time.time() - t0:.0f} s)", flush=True)
        except Exception as err:  # noqa: BLE001 - a failed run is reported and the study goes on
            failed[run.name] = _one_line(err)
            print(f"study: [{i}/{len(study.runs)}] {run.name}: FAILED: {failed[run.name]}", flush=True)
    return failed


def core_shares(jobs: int, cores: list[int]) -> list[list[int]]:
    """``cores`` cut into ``jobs`` shares of (nearly) equal size; with fewer cores than jobs, workers share."""
    if jobs <= len(cores):
        return [[int(c) for c in a] for a in np.array_split(np.array(cores), jobs)]
    return [[cores[i % len(cores)]] for i in range(jobs)]


def run_parallel(study: Study, argv: list[str], jobs: int) -> dict:
    """The runs in ``jobs`` worker processes (``--worker NAME``), each pinned to its core share."""
    cores = sorted(os.sched_getaffinity(0))
    shares = core_shares(jobs, cores)
    os.makedirs(os.path.join(study.out, "logs"), exist_ok=True)
    pending, running, failed = list(study.runs), {}, {}
    while pending or running:
        free = [i for i in range(jobs) if i not in running]
        while pending and free:
            run, slot = pending.pop(0), free.pop(0)
            log_path = os.path.join(study.out, "logs", f"{run.name}.log")
            cmd = [sys.executable, "-m", "vp_jax.tools.study", *argv, "--worker", run.name]
            log = open(log_path, "ab")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=lambda c=shares[slot]: os.sched_setaffinity(0, c))
            log.close()
            running[slot] = (run, proc, log_path, time.time())
            print(f"study: {run.name}: started on cores {shares[slot]} (log {log_path})", flush=True)
        time.sleep(1.0)
        for slot, (run, proc, log_path, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            if proc.returncode == 0:
                print(f"study: {run.name}: done ({time.time() - t0:.0f} s)", flush=True)
            else:
                with open(log_path, errors="replace") as f:
                    lines = [ln.strip() for ln in f.read().replace("\r", "\n").splitlines() if ln.strip()]
                failed[run.name] = f"exit status {proc.returncode}: {lines[-1] if lines else 'no output'}"[:300]
                print(f"study: {run.name}: FAILED: {failed[run.name]}", flush=True)
    return failed


# ----------------------------------------------------------------------------- the write-up

#: results.csv / table columns: (column, heading in the write-up, format).
TABLE_COLUMNS = (
    ("best_val_psnr", "best val PSNR (dB)", "{:.2f}"), ("best_epoch", "at epoch", "{:.0f}"),
    ("test_psnr", "test PSNR (dB)", "{:.2f}"), ("test_ssim", "test SSIM", "{:.3f}"),
    ("test_psnr_moving", "test PSNR moving (dB)", "{:.2f}"), ("test_action_sensitivity_db", "action sens. (dB)", "{:+.2f}"),
    ("final_kl", "final KL (nats/frame)", "{:.3g}"), ("train_minutes", "train (min)", "{:.1f}"),
)
#: The overlaid curves: metrics.csv column, y label.
CURVES = (("val_psnr", "validation PSNR (dB)"), ("kl", "KL per frame (nats)"), ("mse", "MSE"),
          ("beta", "KL weight beta"), ("tfr", "teacher-forcing ratio"))


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def results(study: Study, failed: dict) -> pd.DataFrame:
    """One row per run, from its workdir: best validation PSNR and its epoch (1-based, as
    metrics.csv), the test evaluation, the last epoch's training KL; ``status`` says what is missing."""
    rows = []
    for run in study.runs:
        wd = os.path.join(study.out, run.name)
        row = {"run": run.name, **{f: run.settings.get(f) for f in study.fields},
               **({SEED_FIELD: run.settings[SEED_FIELD]} if study.seeds > 1 else {})}
        status = []
        try:
            loaded = load_run(wd)
            s = summarize([loaded]).iloc[0]
            df = loaded["metrics"]
            row.update(best_val_psnr=s["best_val_psnr"], best_epoch=s["best_epoch"],
                       final_kl=float(df["kl"].dropna().iloc[-1]) if df["kl"].notna().any() else math.nan,
                       epochs_done=int(df["epoch"].max()),
                       train_minutes=float(df["seconds"].sum()) / 60 if "seconds" in df.columns else math.nan)
            if row["epochs_done"] < run.config.train.epochs:
                status.append(f"trained {row['epochs_done']}/{run.config.train.epochs} epochs")
        except (VPError, OSError, KeyError, IndexError, ValueError):
            status.append("not trained")
        metrics_json = os.path.join(eval_dir(wd), "metrics.json")
        if os.path.isfile(metrics_json):
            m = _json(metrics_json)
            row.update(test_psnr=m.get("psnr"), test_ssim=m.get("ssim"), test_psnr_moving=m.get("psnr_moving"),
                       test_action_sensitivity_db=m.get("action_sensitivity_db"))
        else:
            status.append("not evaluated")
        if run.name in failed:
            status.insert(0, f"failed: {failed[run.name]}")
        row["status"] = "; ".join(status) or "ok"
        rows.append(row)
    table = pd.DataFrame(rows)
    for col, _, _ in TABLE_COLUMNS:
        if col not in table.columns:
            table[col] = math.nan
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def setting_table(table: pd.DataFrame, fields: list, seeds: int) -> pd.DataFrame:
    """Rows of ``table`` grouped by ``fields`` (the seeds of a setting averaged), in the study's
    order; with several seeds also the spread (max - min) of best validation PSNR."""
    cols = [c for c, _, _ in TABLE_COLUMNS]
    if not fields:
        fields = ["all"]
        table = table.assign(all="base")
    grouped = table.groupby(fields, sort=False, dropna=False)
    out = grouped[cols].mean()
    if seeds > 1:
        out["val_psnr_spread"] = grouped["best_val_psnr"].agg(lambda v: v.max() - v.min())
        out["seeds"] = grouped["best_val_psnr"].count()
    out["status"] = grouped["status"].agg(lambda s: "; ".join(sorted(set(s))))
    return out.reset_index()


def reading(table: pd.DataFrame, fields: list, seeds: int) -> str:
    """One line: which setting won on best validation PSNR, by how much over the runner-up, whether
    the test split agrees, and (several seeds) whether the gap exceeds the seeds' spread."""
    t = table.dropna(subset=["best_val_psnr"]).sort_values("best_val_psnr", ascending=False)
    label = lambda r: ", ".join(f"{f} = {r[f]}" for f in fields) if fields else "base"  # noqa: E731
    if len(t) == 0:
        return "no run has a validation PSNR yet."
    if len(t) == 1:
        return f"only {label(t.iloc[0])} has a result so far ({t.iloc[0]['best_val_psnr']:.2f} dB)."
    win, second = t.iloc[0], t.iloc[1]
    gap = win["best_val_psnr"] - second["best_val_psnr"]
    line = (f"{label(win)} won: best validation PSNR {win['best_val_psnr']:.2f} dB, {gap:.2f} dB above "
            f"{label(second)} ({second['best_val_psnr']:.2f} dB)")
    test = t.dropna(subset=["test_psnr"]).sort_values("test_psnr", ascending=False)
    if len(test) >= 2:
        tw = test.iloc[0]
        line += ("; the test split agrees" if label(tw) == label(win) else
                 f"; on the test split {label(tw)} is best ({tw['test_psnr']:.2f} dB against "
                 f"{float(t.iloc[0]['test_psnr']):.2f})")
        line += f" (test PSNR range {test['test_psnr'].max() - test['test_psnr'].min():.2f} dB)"
    if seeds > 1 and "val_psnr_spread" in t.columns:
        spread = float(t["val_psnr_spread"].max())
        line += (f"; the gap {'exceeds' if gap > spread else 'does not exceed'} the largest spread between "
                 f"the {seeds} seeds of a setting ({spread:.2f} dB)")
    elif seeds == 1:
        line += "; one seed per setting: --seeds 2 tells whether the gap exceeds the seeds' spread"
    unfinished = [label(r) for _, r in table.iterrows() if r["status"] != "ok"]
    if unfinished:
        line += f"; not final: {', '.join(unfinished)} not finished (trained and evaluated) yet"
    return line + "."


def plot_curves(study: Study, path: str) -> str:
    """Every run's curves per epoch overlaid (:data:`CURVES`), one colour per setting, one line style per seed."""
    runs = []
    for run in study.runs:
        try:
            runs.append((run, load_run(os.path.join(study.out, run.name))["metrics"]))
        except (VPError, OSError):
            continue
    fig, axes = visualize.plt.subplots(2, 3, figsize=(18, 9), layout="constrained")
    keys = list(dict.fromkeys(r.setting_key for r, _ in runs))
    colours = visualize.plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    for ax, (col, label) in zip(axes.flat, CURVES):
        for run, df in runs:
            d = df[["epoch", col]].dropna() if col in df.columns else pd.DataFrame()
            if len(d):
                ax.plot(d["epoch"], d[col], marker=".", color=colours[keys.index(run.setting_key) % len(colours)],
                        linestyle=styles[run.seed_index % len(styles)], label=run.name)
        if col == "kl" and runs and all((df["kl"].dropna() > 0).all() for _, df in runs if "kl" in df.columns):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0])
        ax.grid(True, alpha=0.3)
    legend = axes.flat[-1]
    legend.axis("off")
    if runs:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        legend.legend(handles, labels, loc="center", fontsize=10, title="run")
    else:
        legend.text(0.5, 0.5, "no run has trained yet", ha="center", va="center")
    return visualize.save_fig(fig, path)


def plot_predictions(study: Study, path: str) -> str | None:
    """Test sequence 0 as every evaluated run predicted it, below the truth (from
    ``eval/test/predictions.npz``); None when no run has been evaluated."""
    rows, labels, n_past = [], [], None
    for run in study.runs:
        npz = os.path.join(eval_dir(os.path.join(study.out, run.name)), "predictions.npz")
        if not os.path.isfile(npz):
            continue
        with np.load(npz) as p:
            context, pred, target = p["context"][0], p["pred"][0], p["target"][0]
        if not rows:
            rows.append(np.concatenate([context, target]))
            labels.append("truth")
        rows.append(np.concatenate([context, pred]))
        labels.append(run.name)
        n_past = len(context)
    if not rows:
        return None
    return visualize.write_labelled_strip(rows, labels, n_past, path, scale=2, label_width=170)


def _fmt(v, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else spec.format(v)


def display_table(table: pd.DataFrame, fields: list, seeds: int) -> tuple[list[str], list[list[str]]]:
    """The table as headings and text cells."""
    heads = [*fields] if fields else ["run"]
    cols = list(TABLE_COLUMNS)
    if seeds > 1:
        cols.insert(1, ("val_psnr_spread", "seed spread (dB)", "{:.2f}"))
    heads += [h for _, h, _ in cols] + ["status"]
    cells = []
    for _, r in table.iterrows():
        keys = [str(r[f]) for f in fields] if fields else [str(r.get("all", "base"))]
        cells.append(keys + [_fmt(r.get(c), spec) for c, _, spec in cols] + [str(r["status"])])
    return heads, cells


def _md_table(heads, cells) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells])


def _html_text(text: str) -> str:
    """Markdown's ``code`` spans as <code>, the rest escaped."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _html_table(heads, cells) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_groups(study: Study) -> list[list[str]]:
    """The tables of the report: every setting, then one per field averaged over the others, but
    only when the runs cover the fields' cross product (a preset whose fields change together,
    such as a schedule and its cycles, has no meaningful average over one of them)."""
    settings = {run.setting_key for run in study.runs}
    sizes = [len({dict(key).get(f) for key in settings}) for f in study.fields]
    crossed = len(study.fields) > 1 and len(settings) == math.prod(sizes)
    return [study.fields] + ([[f] for f in study.fields] if crossed else [])


def write_report(study: Study, failed: dict | None = None) -> str:
    """report.md, report.html (figures embedded), results.csv and figures/ from the workdirs."""
    failed = failed or {}
    table = results(study, failed)
    figures = os.path.join(study.out, "figures")
    os.makedirs(figures, exist_ok=True)
    table.to_csv(os.path.join(study.out, "results.csv"), index=False)
    sections = []  # (heading, reading, (heads, cells))
    for fields in table_groups(study):
        t = setting_table(table, fields, study.seeds)
        title = " x ".join(fields) if fields else "seeds"
        if len(study.fields) > 1 and len(fields) == 1:
            title += " (averaged over the other settings)"
        sections.append((title, reading(t, fields, study.seeds), display_table(t, fields, study.seeds)))
    images = [("Curves per epoch", plot_curves(study, os.path.join(figures, "curves.png")))]
    strip = plot_predictions(study, os.path.join(figures, "predictions.png"))
    if strip:
        images.append(("Test sequence 0: the truth, then each run's prediction (context framed green, predicted red)",
                       strip))
    intro = [f"config `{study.config_path}`, {len(study.runs)} runs in `{study.out}`"
             + (f", {study.seeds} seeds each" if study.seeds > 1 else "")
             + (", every run with " + ", ".join(f"`{f} = {v}`" for f, v in study.fixed) if study.fixed else "") + ".",
             "Best validation PSNR: the highest per-epoch validation PSNR and its epoch (1-based, as metrics.csv). "
             "Test: the test split scored with the best checkpoint as eval.py does (one sample, BatchNorm in "
             "inference mode). Final KL: the training KL of the last epoch."]
    intro += [f"For comparison, {line}." for line in study.lab]
    if failed:
        intro.append("Failed runs: " + "; ".join(f"`{n}`: {e}" for n, e in failed.items()))
    md = ["# Study: " + ", ".join(study.fields or ["seeds"]), "", *[p + "\n" for p in intro]]
    body = "".join(f"<p>{_html_text(p)}</p>" for p in intro)
    for title, line, (heads, cells) in sections:
        md += [f"## {title}", "", _md_table(heads, cells), "", f"**Reading:** {line}", ""]
        body += f"<h2>{html.escape(title)}</h2>{_html_table(heads, cells)}<p><b>Reading:</b> {html.escape(line)}</p>"
    for caption, path in images:
        rel = os.path.relpath(path, study.out)
        md += [f"## {caption.split(':')[0]}", "", f"![{caption}]({rel})", ""]
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        body += (f"<h2>{html.escape(caption.split(':')[0])}</h2><figure><img src=\"data:image/png;base64,{data}\" "
                 f"alt=\"{html.escape(caption)}\"><figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:4px 8px;"
             "text-align:right}th{background:#eee}td:first-child{text-align:left}img{max-width:100%}"
             "figcaption{color:#555;font-size:90%}")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(md[0][2:])}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(md[0][2:])}</h1>{body}</body></html>")
    with open(os.path.join(study.out, "report.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(study.out, "report.html"), "w") as f:
        f.write(page)
    return os.path.join(study.out, "report.md")


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vp_jax.tools.study", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a configs/*.py file: the settings every run starts from")
    parser.add_argument("--out", required=True, help="the study's folder: one workdir per run, the report")
    parser.add_argument("--vary", action="append", metavar="FIELD=V1,V2",
                        help="a config field and its values (repeatable: a cross product)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help="a config field set in every run")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), help="one of the lab's studies")
    parser.add_argument("--seeds", type=int, default=1, help="runs per setting, seeds config.seed, config.seed + 1, ...")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, each pinned to cores / N (default 1)")
    parser.add_argument("--reuse", action="append", metavar="DIR",
                        help="another study's folder: a finished run there with exactly a run's config is copied, "
                             "not trained again (repeatable)")
    parser.add_argument("--report-only", dest="report_only", action="store_true",
                        help="train nothing: regenerate the report from the workdirs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # --jobs: the one run a worker process does
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def error(message):  # argparse's usage errors: one line, exit 2, as the other entry points
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    study = plan(args)  # every config checked: a bad value is one line, before anything is written
    cli.start([parser.prog])
    if args.worker is not None:
        run = next((r for r in study.runs if r.name == args.worker), None)
        if run is None:
            raise ConfigError(f"--worker {args.worker}: not a run of this study")
        print(f"{run.name}: {run_one(run, os.path.join(study.out, run.name), study.reuse)}")
        return 0
    failed = {}
    if not args.report_only:
        os.makedirs(study.out, exist_ok=True)
        t0 = time.time()
        failed = run_serial(study) if args.jobs == 1 else run_parallel(study, argv, args.jobs)
        print(f"study: {len(study.runs) - len(failed)}/{len(study.runs)} runs done in {time.time() - t0:.0f} s"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    elif not os.path.isdir(study.out):
        raise DataError(f"--out {study.out}: no such folder (run the study first)")
    path = write_report(study, failed)
    print(f"report: {path}, {os.path.join(study.out, 'report.html')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
