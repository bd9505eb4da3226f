"""Cost of the paper's evaluation protocol: N samples from the prior for each test sequence.

The paper protocol (docs/model.md) draws N = 100 futures for each of the 256 BAIR test sequences.
This times ``make_generate_fn(run.model, run.n_past, num_samples=N, bn_mode)`` on batches of synthetic
sequences and prints one JSON object: seconds per batch (median after compilation), the
protocol's throughput in sequence-samples per second, and the projected time of the whole
protocol. On a CPU use fewer samples/sequences; the rate scales about linearly::

    python benchmarks/generate.py                                           # 100 x 256, batch 32
    python benchmarks/generate.py --num-samples 4 --num-sequences 8 --batch 4   # a CPU-sized run
    python benchmarks/generate.py --n-eval 30                               # the paper's 28 frames

Parameters are freshly initialised (speed does not depend on their values). With several
devices the batch is sharded over all of them (vp_jax.runtime.parallel).

``gflop_per_batch`` is XLA's ``cost_analysis()``, which counts the body of a ``lax.scan`` (a
while loop) **once**, not once per frame: here it undercounts by about the number of predicted
frames, and ``gflops_per_s`` with it. Compare throughputs, not these two numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.train_step import apply_overrides  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "lab_bair.py"))
    p.add_argument("--num-samples", type=int, default=100, help="N samples per sequence (paper: 100)")
    p.add_argument("--num-sequences", type=int, default=256, help="test sequences (BAIR test: 256)")
    p.add_argument("--batch", type=int, default=32, help="sequences per generate call")
    p.add_argument("--n-eval", type=int, help="frames per sequence incl. context (default: config.n_eval)")
    p.add_argument("--bn-mode", default="inference", choices=("inference", "batch_stats"))
    p.add_argument("--repeats", type=int, default=0,
                   help="timed calls (default: enough batches to cover --num-sequences, at least 2)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--no-xla-flags", action="store_true")
    args = p.parse_args(argv)

    if not args.no_xla_flags:
        from vp_jax.runtime.xla_flags import configure_xla_flags

        configure_xla_flags()
    load_before = os.getloadavg()[0]
    import jax
    import numpy as np

    from vp_jax.config import load_config_file, run_config
    from vp_jax.models.generation import make_generate_fn
    from vp_jax.runtime import parallel
    from vp_jax.store.state import create_train_state

    config = apply_overrides(load_config_file(args.config), args.set)
    if args.n_eval:
        config.n_eval = args.n_eval
        config.data.seq_len = max(config.data.seq_len, args.n_eval)
    run = run_config(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(args.batch, mesh, "eval.batch_size")
    B, T = args.batch, config.n_eval
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (B, T, config.model.image_size, config.model.image_size, 3), dtype=np.uint8)
    cond = rng.standard_normal((B, T, config.model.cond_dim)).astype(np.float32)
    batch = parallel.shard_batch({"frames": frames, "cond": cond}, mesh)
    state = parallel.replicate(create_train_state(run, jax.random.key(0)), mesh)
    generate = make_generate_fn(run.model, run.n_past, num_samples=args.num_samples, bn_mode=args.bn_mode)
    jitted = generate if hasattr(generate, "lower") else jax.jit(generate)

    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = jitted.lower(state.params, state.batch_stats, batch["frames"], batch["cond"], key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", float("nan")))
    jax.block_until_ready(compiled(state.params, state.batch_stats, batch["frames"], batch["cond"], key))

    n_batches = math.ceil(args.num_sequences / B)
    repeats = args.repeats or max(n_batches, 2)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        out = compiled(state.params, state.batch_stats, batch["frames"], batch["cond"], jax.random.fold_in(key, i))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    rate = B * args.num_samples / med
    dev = jax.devices()[0]
    record = {
        "config": os.path.relpath(os.path.abspath(args.config), ROOT),
        "num_samples": args.num_samples,
        "num_sequences": args.num_sequences,
        "batch_size": B,
        "n_past": config.n_past,
        "predicted_frames": T - config.n_past,
        "bn_mode": args.bn_mode,
        "median_s_per_batch": round(med, 4),
        "compile_s": round(compile_s, 2),
        "sequence_samples_per_s": round(rate, 3),
        "predicted_frames_per_s": round(rate * (T - config.n_past), 2),
        "protocol_s": round(n_batches * med, 1),
        "gflop_per_batch": round(flops / 1e9, 2),  # scan body counted once (see docstring)
        "gflops_per_s": round(flops / med / 1e9, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "platform": dev.platform,
        "device": dev.device_kind,
        "num_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats:
        record["device_peak_mb"] = round(stats.get("peak_bytes_in_use", 0) / 2**20, 1)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
