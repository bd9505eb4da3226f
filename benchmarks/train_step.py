"""Speed of one training step: seconds/step, compile time, throughput, FLOP/s, memory.

Prints one JSON object per (config, batch size) on stdout, e.g.::

    python benchmarks/train_step.py                                   # lab at batch 4 and 12, pushbot
    python benchmarks/train_step.py --config configs/lab_bair.py --batch 12 --steps 20
    python benchmarks/train_step.py --config configs/svg_bair.py --batch 12 100   # on a GPU
    python benchmarks/train_step.py --batch 4 --no-xla-flags          # XLA's own CPU defaults
    python benchmarks/train_step.py --batch 12 --malloc-tunables      # XLA's buffers kept in the heap
    python benchmarks/train_step.py --batch 4 --set model.dtype=bfloat16 --set train.tfr.start=0
    python benchmarks/train_step.py --config configs/lab_bair.py --batch 12 48 --compile-only \
        --set train.remat=True --set train.grad_accum=4       # memory options, XLA's memory plan only

Each measurement runs in its own subprocess (a clean peak RSS and its own XLA_FLAGS): the step
is compiled (``jit(...).lower(...).compile()``, timed as ``compile_s``), called once to warm up,
then timed ``--steps`` times (``median_s``, with ``min_s``/``max_s``; ``cpu_s`` is the median
process CPU time per step, which is less sensitive than wall time to other processes sharing the
CPU). ``gflop`` is XLA's own count from ``compiled.cost_analysis()``; ``gflops_per_s`` =
gflop / median_s. ``peak_rss_mb`` is the peak resident memory of the process (host), and on a
GPU/TPU ``device_peak_mb`` is ``device.memory_stats()['peak_bytes_in_use']``. ``xla_peak_mb`` is
XLA's own plan for the compiled step (``compiled.memory_analysis()``: arguments, outputs and
temporaries alive at once; ``xla_temp_mb`` the temporaries alone), the same figure on any backend
and known without running the step: ``--compile-only`` stops there (no ``median_s``), for
batches too big to run on the machine at hand. XLA's count covers
a ``lax.scan`` body once: exact for the teacher-forced step (only the small LSTMs are scanned)
and for the CPU's fully unrolled general rollout, an undercount for a rolled one. ``load`` is the
1-minute load average before and after: on a shared machine, trust timings with load close to 0
(other processes) only.

The batch is synthetic (random uint8 frames, random conditions): the cost does not depend on the
pixels. With several devices the batch is sharded over all of them (vp_jax.runtime.parallel).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vp_jax.runtime.xla_flags import MALLOC_TUNABLES  # noqa: E402

DEFAULT_RUNS = (("configs/lab_bair.py", (4, 12)), ("configs/pushbot.py", (None,)))


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def apply_overrides(config, overrides):
    """``--set a.b=value`` overrides on an ml_collections config."""
    for item in overrides or ():
        key, _, value = item.partition("=")
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = _parse_value(value)
    return config


def _log(msg: str) -> None:
    print(f"[train_step] {msg}", file=sys.stderr, flush=True)


def memory_plan(compiled) -> dict:
    """XLA's memory plan of a compiled program, in MiB (empty if the backend gives none)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        stats = None
    if stats is None:
        return {}
    temp = stats.temp_size_in_bytes
    peak = stats.argument_size_in_bytes + stats.output_size_in_bytes + temp - stats.alias_size_in_bytes
    return {"xla_peak_mb": round(peak / 2**20, 1), "xla_temp_mb": round(temp / 2**20, 1)}


def measure(config_path: str, batch_size: int | None, steps: int, overrides, seed: int = 0, unroll: int = 0) -> dict:
    """Compile and time the train step in this process; return the JSON record."""
    load_before = os.getloadavg()[0]
    import jax
    import numpy as np

    from vp_jax.config import load_config_file, run_config
    from vp_jax.runtime import parallel
    from vp_jax.store.state import create_train_state
    from vp_jax.training.step import make_train_step

    config = apply_overrides(load_config_file(config_path), overrides)
    if batch_size:
        config.train.batch_size = batch_size
    run = run_config(config)
    B, T = run.train.batch_size, run.num_frames
    mesh = parallel.make_mesh()
    parallel.check_batch_size(B, mesh)

    rng = np.random.default_rng(seed)
    batch = {
        "frames": rng.integers(0, 256, (B, T, config.model.image_size, config.model.image_size, 3), dtype=np.uint8),
        "cond": rng.standard_normal((B, T, config.model.cond_dim)).astype(np.float32),
    }
    state = parallel.replicate(create_train_state(run, jax.random.key(seed)), mesh)
    batch = parallel.shard_batch(batch, mesh)
    step = make_train_step(run, unroll=unroll or None)
    jitted = step if hasattr(step, "lower") else jax.jit(step)
    key = jax.random.key(seed + 1)

    t0 = time.perf_counter()
    compiled = jitted.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", float("nan")))
    plan = memory_plan(compiled)
    _log(f"compiled in {compile_s:.1f} s ({flops / 1e9:.0f} GFLOP/step, XLA's plan {plan})")
    dev = jax.devices()[0]
    common = {
        "config": os.path.relpath(os.path.abspath(config_path), ROOT),
        "batch_size": B,
        "frames_per_sequence": T,
        "overrides": list(overrides or ()),
        "remat": bool(config.train.get("remat", False)),
        "grad_accum": int(config.train.get("grad_accum", 1)),
        **plan,
    }
    if steps == 0:  # --compile-only
        return {**common, "compile_s": round(compile_s, 2), "gflop": round(flops / 1e9, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "platform": dev.platform, "device": dev.device_kind, "num_devices": jax.device_count(),
                "jax": jax.__version__, "load": [round(load_before, 2), round(os.getloadavg()[0], 2)]}

    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, key)  # warm-up (the step folds in its counter)
    jax.block_until_ready(metrics)
    _log(f"warm-up step {time.perf_counter() - t0:.2f} s")
    times, cpu = [], []
    for i in range(steps):
        t0, c0 = time.perf_counter(), sum(os.times()[:2])
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        cpu.append(sum(os.times()[:2]) - c0)
        _log(f"step {i + 1}/{steps}: {times[-1]:.3f} s")
    med = float(np.median(times))
    record = {
        **common,
        "steps": steps,
        "median_s": round(med, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "cpu_s": round(float(np.median(cpu)), 3),
        "compile_s": round(compile_s, 2),
        "sequences_per_s": round(B / med, 3),
        "frames_per_s": round(B * T / med, 2),
        "gflop": round(flops / 1e9, 2),
        "gflops_per_s": round(flops / med / 1e9, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss": float(metrics["loss"]),
        "platform": dev.platform,
        "device": dev.device_kind,
        "num_devices": jax.device_count(),
        "dtype": config.model.dtype,
        "tfr": float(config.train.tfr.start),
        "unroll": unroll or "default",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "jax": jax.__version__,
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
    }
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats:
        record["device_peak_mb"] = round(stats.get("peak_bytes_in_use", 0) / 2**20, 1)
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", help="configs/*.py (repeatable; default lab_bair + pushbot)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: 4 12 for lab, config's own otherwise)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after compile and one warm-up (>= 1)")
    p.add_argument("--compile-only", action="store_true", help="compile and report XLA's memory plan; run no step")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override, e.g. model.dtype=bfloat16")
    p.add_argument("--unroll", type=int, default=0, help="scan unroll of the general rollout (0: the library's default)")
    p.add_argument("--no-xla-flags", action="store_true", help="do not add vp_jax's fast CPU XLA flags")
    p.add_argument("--malloc-tunables", action="store_true",
                   help="run with GLIBC_TUNABLES=vp_jax.runtime.xla_flags.MALLOC_TUNABLES (XLA's buffers kept in the heap)")
    p.add_argument("--inprocess", action="store_true", help="measure in this process (one config and batch only)")
    p.add_argument("--out", help="also append the JSON lines to this file")
    args = p.parse_args(argv)

    if args.config:
        runs = [(c, tuple(args.batch) if args.batch else (None,)) for c in args.config]
    else:
        runs = [(c, tuple(args.batch) if args.batch else b) for c, b in DEFAULT_RUNS]
    runs = [(os.path.join(ROOT, c) if not os.path.isabs(c) and not os.path.exists(c) else c, b) for c, b in runs]

    if args.inprocess:
        if not args.no_xla_flags:
            from vp_jax.runtime.xla_flags import configure_xla_flags

            configure_xla_flags()
        (cfg, (bs, *rest)), *more = runs
        if rest or more:
            p.error("--inprocess measures one config and one batch size")
        steps = 0 if args.compile_only else args.steps
        print(json.dumps(measure(cfg, bs, steps, args.set, unroll=args.unroll)), flush=True)
        return

    for cfg, sizes in runs:
        if not os.path.exists(cfg):
            print(json.dumps({"config": cfg, "skipped": "config file not found"}), flush=True)
            continue
        for bs in sizes:
            cmd = [sys.executable, os.path.abspath(__file__), "--inprocess", "--config", cfg, "--steps", str(args.steps)]
            cmd += ["--batch", str(bs)] if bs else []
            cmd += [a for s in args.set for a in ("--set", s)]
            cmd += ["--no-xla-flags"] if args.no_xla_flags else []
            cmd += ["--unroll", str(args.unroll)] if args.unroll else []
            cmd += ["--compile-only"] if args.compile_only else []
            env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES) if args.malloc_tunables else None
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                line = json.dumps({"config": cfg, "batch_size": bs, "error": proc.stderr.strip().splitlines()[-3:]})
            else:
                line = lines[-1]
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
