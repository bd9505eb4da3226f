"""vp_jax.tools.study: a study killed and resumed, its report against the workdirs, bad --vary refused,
values parsed as ``--config.FIELD=VALUE`` parses them."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from vp_jax.config import flat_fields, lab_names, load_config_file, run_config
from vp_jax.models.schedules import teacher_forcing_schedule
from vp_jax.tools import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _files(folder: str) -> dict:
    """``{relative path: (sha256, mtime_ns)}`` of every file under ``folder``."""
    out = {}
    for base, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(base, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def _expected_row(workdir: str) -> dict:
    """A run's table values read straight from its files (csv module and json, not pandas/compare)."""
    with open(os.path.join(workdir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    validated = [r for r in rows if r["val_psnr"] not in ("", "nan")]
    best = max(validated, key=lambda r: float(r["val_psnr"]))
    with open(os.path.join(workdir, "eval", "test", "metrics.json")) as f:
        m = json.load(f)
    return {"best_val_psnr": float(best["val_psnr"]), "best_epoch": int(best["epoch"]), "test_psnr": m["psnr"],
            "test_ssim": m["ssim"], "test_psnr_moving": m["psnr_moving"],
            "test_action_sensitivity_db": m["action_sensitivity_db"], "final_kl": float(rows[-1]["kl"])}


def test_a_killed_study_resumes_without_retraining_and_reports_the_workdirs(tmp_path):
    """2 x 1 study (seed 1, 2: the same programs, so the second run and the resume hit the
    compilation cache): SIGKILL once the first run is done, the same command again keeps the first
    run's files byte for byte (no training, no evaluation), finishes the second, and the report's
    numbers are the workdirs' own."""
    out = str(tmp_path / "study")
    cmd = [sys.executable, "-m", "vp_jax.tools.study", "--config", TINY, "--out", out, "--vary", "seed=1,2",
           "--set", f"data.root={tmp_path / 'data'}", "--set", "train.epochs=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while "[2/2] seed=2: starting" not in log.read_text():  # printed once run 1 is trained and evaluated
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = os.path.join(out, "seed=1")
    before = _files(first)
    assert "metrics.csv" in before and any(p.startswith("checkpoints/") for p in before)
    assert not os.path.exists(os.path.join(out, "report.md"))  # killed before the write-up

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert _files(first) == before  # not one file of the finished run rewritten
    assert "[1/2] seed=1: done (training kept, evaluation kept" in again.stdout
    assert "[2/2] seed=2: done (trained, evaluated" in again.stdout

    with open(os.path.join(out, "results.csv")) as f:
        got = {r["run"]: r for r in csv.DictReader(f)}
    report = open(os.path.join(out, "report.md")).read()
    for name in ("seed=1", "seed=2"):
        want = _expected_row(os.path.join(out, name))
        for key, value in want.items():
            assert math.isclose(float(got[name][key]), value, rel_tol=1e-12), (name, key, got[name][key], value)
        line = (f"| {name.split('=')[1]} | {want['best_val_psnr']:.2f} | {want['best_epoch']} | {want['test_psnr']:.2f} | "
                f"{want['test_ssim']:.3f} | {want['test_psnr_moving']:.2f} | {want['test_action_sensitivity_db']:+.2f} | "
                f"{want['final_kl']:.3g} |")
        assert line in report, (line, report)
    page = open(os.path.join(out, "report.html")).read()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # the curves and the predicted sequences, embedded
    strip = Image.open(io.BytesIO(base64.b64decode(images[1])))
    assert strip.height > 3 * 64  # three rows: the truth and the two runs' predictions

    # Another study with a run of the same config copies it (--reuse) instead of training it.
    other = str(tmp_path / "other")
    reused = subprocess.run([*cmd[:6], other, "--vary", "seed=2", *cmd[9:], "--reuse", out], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=240)
    assert reused.returncode == 0, reused.stdout[-3000:] + reused.stderr[-3000:]
    assert "done (copied from" in reused.stdout and "training kept, evaluation kept" in reused.stdout
    unlocked = lambda files: {k: v for k, v in files.items() if not k.startswith(".lock")}  # noqa: E731 - not copied
    assert _files(os.path.join(other, "seed=2")) == unlocked(_files(os.path.join(out, "seed=2")))


@pytest.mark.parametrize("vary, needle", [
    ("train.lrr=0.1,0.2", "unknown field 'train.lrr'"),
    ("train.lr=0.1,fast", "train.lr = 'fast': expected a number"),
    ("train.lr", "expected FIELD=VALUE"),
    ("train.kl=0.1", "train.kl is a group of fields"),
    ("train.lr=0.1,-1", "config.train.lr = -1.0: expected a positive number"),
    ("model.learned_prior=True,maybe", "expected True or False"),
])
def test_a_broken_vary_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys, vary, needle):
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exit_:
        study.main(["--config", TINY, "--out", str(out), "--vary", "seed=1,2", "--vary", vary])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out.exists()


def test_values_are_parsed_as_config_overrides_parse_them(monkeypatch):
    """Each value against what ml_collections' ``--config.FIELD=VALUE`` makes of the same text."""
    cases = {"model.learned_prior": "False", "model.enc_widths": "(8,8,16,16)", "train.epochs": "3",
             "train.lr": "1e-3", "train.kl.schedule": "constant", "train.tfr.start": "1", "eval.bn_mode": "batch_stats"}
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", TINY, flag_values=fv)
    argv = ["prog", f"--config={TINY}", *(f"--config.{k}={v}" for k, v in cases.items())]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv(argv)
    base = load_config_file(TINY)
    for field, text in cases.items():
        want = fv.config
        for key in field.split("."):
            want = want[key]
        got = study.parse_value(base, field, text, field)
        assert got == want and type(got) is type(want), (field, got, want)
    assert type(study.parse_value(base, "train.epochs", "3", "x")) is int
    assert study.parse_value(base, "model.learned_prior", "False", "x") is False
    # The lab's names, as train.py renames them (vp_jax.config.lab_names).
    for lab, text in (("kl_anneal_cyclical", "False"), ("tfr_start_decay_epoch", "15"), ("lr", "0.005")):
        renamed = lab_names([f"--config.{lab}={text}"])[0].removeprefix("--config.")
        assert "=".join(study.lab_field(lab, text)) == renamed


def test_a_cross_product_with_seeds_is_every_combination_once():
    args = study.build_parser().parse_args(
        ["--config", TINY, "--out", "x", "--vary", "model.enc_widths=(4,4,8,8),(8,8,16,16)",
         "--vary", "kl_anneal_cyclical=True,False", "--seeds", "2"])
    runs = study.plan(args).runs
    seen = {(r.config.model.enc_widths, r.config.train.kl.schedule, r.config.seed) for r in runs}
    assert seen == {(w, s, seed) for w in ((4, 4, 8, 8), (8, 8, 16, 16)) for s in ("cyclical", "monotonic")
                    for seed in (1, 2)}
    assert len({r.name for r in runs}) == 8
    assert runs[0].name == "model.enc_widths=4-4-8-8,train.kl.schedule=cyclical,seed=1"


def test_tables_per_field_only_when_the_runs_cross_the_fields():
    """A cross product gets one table per field averaged over the others; the kl_anneal preset,
    whose schedule and cycles change together, gets only its table of runs (averaging the
    constant and monotonic runs as "cycles = 1" would mean nothing)."""
    crossed = study.plan(study.build_parser().parse_args(
        ["--config", TINY, "--out", "x", "--vary", "train.lr=0.001,0.002", "--vary", "kl_anneal_cyclical=True,False"]))
    assert study.table_groups(crossed) == [crossed.fields, *[[f] for f in crossed.fields]]
    preset = study.plan(study.build_parser().parse_args(["--config", TINY, "--out", "x", "--preset", "kl_anneal"]))
    assert len(preset.fields) == 2 and len(preset.runs) == 3
    assert study.table_groups(preset) == [preset.fields]


def test_the_presets_fit_the_config_and_one_run_of_each_is_the_config_itself():
    """On the quickstart config: the runs that keep the config's own setting are the config field
    for field (so ``--reuse`` shares them between studies); teacher forcing, once it decays, reaches 0
    inside the run; the cyclical run has more than one cycle. On the lab's config: the lab's 0/15/50."""
    pushbot = os.path.join(ROOT, "configs", "pushbot.py")
    base = flat_fields(load_config_file(pushbot).to_dict())

    def runs(preset, config=pushbot):
        return study.plan(study.build_parser().parse_args(["--config", config, "--out", "x", "--preset", preset])).runs

    itself = {"lr": 1, "tfr_decay": 2, "kl_anneal": 0, "prior": 0}
    for preset, i in itself.items():
        got = [flat_fields(r.config.to_dict()) == base for r in runs(preset)]
        assert got == [j == i for j in range(len(got))], (preset, got)
    for r in runs("tfr_decay")[:2]:
        t = run_config(r.config).train
        tfr = teacher_forcing_schedule(t)
        assert float(tfr(0)) == 1.0 and float(tfr((t.epochs - 1) * t.epoch_size)) == 0.0
    assert [r.config.train.tfr.start_decay_epoch for r in runs("tfr_decay")] == [0, 2, 0]
    assert runs("kl_anneal")[1].config.train.kl.cycles == 2
    lab = runs("tfr_decay", os.path.join(ROOT, "configs", "lab_bair.py"))
    assert [r.config.train.tfr.start_decay_epoch for r in lab] == [0, 15, 50]


def test_jobs_share_the_cores_evenly():
    assert study.core_shares(2, [0, 1]) == [[0], [1]]
    assert study.core_shares(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert study.core_shares(3, [0, 1]) == [[0], [1], [0]]  # more jobs than cores: they share
    assert all(type(c) is int for share in study.core_shares(2, [0, 1, 2, 3]) for c in share)  # sched_setaffinity
