"""The benchmark scripts run and their JSON records are consistent (no timing is asserted).

The figures a benchmark prints are derived from its measured times; these tests check the
derivations against each other and against the run's own settings, on the tiny config.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow  # ~17 s on a 2-core CPU: VP_JAX_SLOW=1
def test_train_step_benchmark_record(tmp_path):
    out = tmp_path / "runs.jsonl"
    records = run_json(
        "benchmarks/train_step.py", "--config", "configs/tiny.py", "--batch", "2", "--steps", "3",
        "--set", "n_future=2", "--out", str(out),
    )
    assert len(records) == 1 and "error" not in records[0], records
    r = records[0]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records  # --out appends the same line
    assert (r["config"], r["batch_size"], r["steps"], r["overrides"]) == ("configs/tiny.py", 2, 3, ["n_future=2"])
    assert r["frames_per_sequence"] == 4  # n_past 2 + n_future 2: the override reached the step
    assert r["platform"] == "cpu" and r["num_devices"] == 1 and r["tfr"] == 1.0
    assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    med = r["median_s"]
    assert math.isclose(r["sequences_per_s"], 2 / med, rel_tol=2e-3)
    assert math.isclose(r["frames_per_s"], 2 * 4 / med, rel_tol=2e-3)
    # gflop is rounded to 0.01 and gflops_per_s to 0.01 in the record
    assert r["gflop"] > 0 and abs(r["gflops_per_s"] - r["gflop"] / med) <= 0.0051 / med + 0.0051 + 1e-3 * r["gflops_per_s"]
    assert math.isfinite(r["loss"]) and r["peak_rss_mb"] > 0 and r["compile_s"] > 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not a dependency of vp_jax")
def test_torch_reference_counts_the_lab_model():
    """The PyTorch baseline is the lab model: its parameter count is the spec's 22,833,795."""
    records = run_json("benchmarks/torch_reference.py", "--batch", "2", "--steps", "1", "--pattern", "encode_once")
    assert [r["parameters"] for r in records] == [22_833_795]
    assert math.isfinite(records[0]["loss"]) and records[0]["device"] == "cpu"


def test_latent_bound_benchmark(capsys):
    """Best of N minus mean of N is >= 0 and grows as the error floor falls, on both versions."""
    spec = importlib.util.spec_from_file_location("latent_bound", os.path.join(ROOT, "benchmarks", "latent_bound.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for version in (1, 2):
        mod.main(["--sequences", "12", "--samples", "3", "--floors", "20", "30", "inf", "--version", str(version)])
        r = json.loads(capsys.readouterr().out)
        gains = [r["by_floor"][k]["best_minus_mean_moving_db"] for k in ("20.0", "30.0", "inf")]
        assert 0.0 <= gains[0] <= gains[1] <= gains[2] and gains[2] > 0.0, r
        assert 0.0 < r["fraction_of_sequences_with_any_difference"] <= 1.0
