"""benchmarks/bair_convert.py: its JSON record is consistent with its own runs (no timing is
asserted). The runs happen in this process instead of one fresh process each, to stay fast."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bair_convert", os.path.join(ROOT, "benchmarks", "bair_convert.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bair_convert_benchmark_record(tmp_path, monkeypatch, capsys):
    bench = load_benchmark()
    outs = []

    def in_process(source, out, workers, build_cache=False):
        outs.append(out)
        bench.child(argparse.Namespace(input=source, out=out, workers=workers, cache=build_cache))
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.setattr(bench, "run_child", in_process)
    bench.main(["--sequences", "4", "--repeats", "2", "--workdir", str(tmp_path)])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(set(outs)) == len(outs) == 4 * 2  # every run writes a folder of its own
    # 3 files (train, the validate file, test) share the 4 sequences: 2, 1, 1; the cache packs train.
    assert (r["sequences"], r["dir"]["sequences"], r["tar"]["sequences"], r["cache"]["sequences"]) == (4, 4, 4, 2)
    assert r["small"]["sequences"] == 3  # a quarter, but each split needs one
    for key in ("dir", "tar", "small", "cache"):
        run = r[key]
        assert len(run["seconds"]) == 2 and run["peak_rss_mb"] > 0 and run["cpu_ms_per_sequence"] > 0
        median = statistics.median(run["seconds"])  # each rounded to 1 ms in the record
        assert run["sequences"] / (median + 6e-4) - 0.1 <= run["sequences_per_s"] <= run["sequences"] / (median - 6e-4) + 0.1
    assert math.isclose(r["rss_growth_mb"], r["dir"]["peak_rss_mb"] - r["small"]["peak_rss_mb"], abs_tol=0.11)
    for key in ("dir", "tar", "cache"):
        want = 43_520 / r[key]["sequences_per_s"] / 60
        assert math.isclose(r["projected_minutes_bair"][key], want, rel_tol=0.02, abs_tol=0.1)
    assert os.listdir(tmp_path) == []  # the synthetic release and the outputs are removed
