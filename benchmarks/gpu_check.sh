#!/usr/bin/env bash
# Everything to check and measure on a machine with a CUDA GPU, in one command that ends with ONE
# JSON line on stdout (also written to OUT_DIR/summary.json):
#
#   1. the environment: jax version, backend, device, which code paths vp_jax takes there
#      (vp_jax.runtime.backend.cpu_kernels() must be false on a GPU; no XLA CPU flags, no malloc tuning);
#   2. tests that hold on any backend, run on the GPU: gradient accumulation (BatchNorm-free
#      equality with the big batch; what it does with BatchNorm, with remat), and the train step;
#   3. benchmarks/train_step.py, lab config, batch 12 and 100, float32 and bfloat16: seconds per
#      step, device peak memory;
#   4. the memory options at batch 100 (train.remat=True; train.grad_accum=4): device peak memory
#      and XLA's memory plan against 3.;
#   5. benchmarks/torch_reference.py on the same GPU, batch 12 and 100, float32 and bfloat16
#      autocast (skipped when torch is not installed);
#   6. a real training run: the quickstart (configs/pushbot.py) trained and evaluated on the GPU.
#
# Usage, from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]         # default runs/gpu_check; JSON lines + logs there
#
# OUT_DIR gets env.json, pytest.log, jax.jsonl, memory.jsonl, torch.jsonl, quickstart.log,
# quickstart_metrics.json and summary.json. STEPS (default 10) sets the timed steps per
# measurement; SKIP_TESTS=1, SKIP_TORCH=1, SKIP_TRAIN=1 leave parts out. The whole script takes
# about 10-12 minutes on one H100/H200 (each JAX measurement compiles in its own process).
# CPU_SMOKE=1 runs the same steps on a CPU with the tiny config and small batches (minutes, no
# GPU needed): it checks the script itself, not the GPU. A machine without internet needs the
# packages vp_jax imports that it lacks as wheels: e.g. `pip download --no-deps -d .whl
# ml-collections` beside the checkout, then set WHEELS=.whl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/gpu_check}
PY=${PY:-python3}
STEPS=${STEPS:-10}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/{env.json,pytest.log,jax.jsonl,memory.jsonl,torch.jsonl,quickstart.log,quickstart_metrics.json,summary.json}

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vp_jax_site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/vp_jax_site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ -n "${CPU_SMOKE:-}" ]; then
  export JAX_PLATFORMS=cpu
  CONFIG=configs/tiny.py; SMALL=4; BIG=8; STEPS=1; TRAIN_CONFIG=configs/tiny.py
  TRAIN_ARGS=(--config.train.epochs=1 --config.data.root="$OUT_DIR/data_tiny")
else
  CONFIG=configs/lab_bair.py; SMALL=12; BIG=100; TRAIN_CONFIG=configs/pushbot.py; TRAIN_ARGS=()
fi

# 1. environment
"$PY" - "$OUT_DIR/env.json" <<'EOF' || exit 1
import json, os, sys
from vp_jax.runtime.xla_flags import configure_xla_flags, runs_on_cpu
added = configure_xla_flags()   # what train.py would add here (nothing on a GPU)
import jax
from vp_jax.runtime.backend import cpu_kernels
from vp_jax.models.rollout import default_unroll
d = jax.devices()[0]
env = {"jax": jax.__version__, "backend": jax.default_backend(), "device": d.device_kind,
       "num_devices": jax.device_count(), "runs_on_cpu": runs_on_cpu(), "xla_flags_added": added,
       "cpu_kernels": cpu_kernels(), "rollout_unroll": default_unroll()}
json.dump(env, open(sys.argv[1], "w"))
print("environment:", json.dumps(env))
EOF
if [ -z "${CPU_SMOKE:-}" ]; then
  "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" || { echo "gpu_check: JAX sees no GPU (CPU_SMOKE=1 checks the script on a CPU)" >&2; exit 1; }
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

# 2. tests that hold on every backend
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== tests on $("$PY" -c 'import jax; print(jax.default_backend())')"
  # float32 matrix products in full precision (not TF32), as on the CPU the tests were written on
  JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider tests/test_memory_options.py tests/test_step.py \
    > "$OUT_DIR/pytest.log" 2>&1
  tail -n 3 "$OUT_DIR/pytest.log"
fi

# 3. train step, float32 and bfloat16
echo "== vp_jax train step ($CONFIG)"
"$PY" benchmarks/train_step.py --config "$CONFIG" --batch "$SMALL" "$BIG" --steps "$STEPS" --out "$OUT_DIR/jax.jsonl"
"$PY" benchmarks/train_step.py --config "$CONFIG" --batch "$SMALL" "$BIG" --steps "$STEPS" \
  --set model.dtype=bfloat16 --out "$OUT_DIR/jax.jsonl"

# 4. memory options at the big batch
echo "== memory options, batch $BIG"
"$PY" benchmarks/train_step.py --config "$CONFIG" --batch "$BIG" --steps "$STEPS" --set train.remat=True --out "$OUT_DIR/memory.jsonl"
"$PY" benchmarks/train_step.py --config "$CONFIG" --batch "$BIG" --steps "$STEPS" --set train.grad_accum=4 --out "$OUT_DIR/memory.jsonl"

# 5. PyTorch reference
if [ -z "${SKIP_TORCH:-}" ] && [ -z "${CPU_SMOKE:-}" ] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "== PyTorch reference (same model, same GPU)"
  "$PY" benchmarks/torch_reference.py --device cuda --batch 12 100 --steps "$STEPS" | tee -a "$OUT_DIR/torch.jsonl"
  "$PY" benchmarks/torch_reference.py --device cuda --amp bf16 --batch 12 100 --steps "$STEPS" | tee -a "$OUT_DIR/torch.jsonl"
fi

# 6. a real training run
if [ -z "${SKIP_TRAIN:-}" ]; then
  echo "== training on $("$PY" -c 'import jax; print(jax.default_backend())'): $TRAIN_CONFIG"
  work="$OUT_DIR/pushbot"
  rm -rf "$work"
  start=$(date +%s)
  { "$PY" train.py --config "$TRAIN_CONFIG" --workdir "$work" "${TRAIN_ARGS[@]}" && "$PY" eval.py --workdir "$work"; } \
    > "$OUT_DIR/quickstart.log" 2>&1
  echo "train_and_eval_status=$? seconds=$(( $(date +%s) - start ))" >> "$OUT_DIR/quickstart.log"
  tail -n 8 "$OUT_DIR/quickstart.log"
  cp "$work/eval/test/metrics.json" "$OUT_DIR/quickstart_metrics.json" 2>/dev/null
fi

# The one JSON summary.
"$PY" - "$OUT_DIR" <<'EOF'
import json, os, re, sys
out = sys.argv[1]

def lines(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.startswith("{")]

def step(r):
    keys = ("config", "batch_size", "dtype", "remat", "grad_accum", "median_s", "sequences_per_s",
            "device_peak_mb", "xla_peak_mb", "peak_rss_mb", "compile_s", "loss", "error")
    return {k: r[k] for k in keys if k in r}

summary = {"env": json.load(open(os.path.join(out, "env.json")))}
log = os.path.join(out, "pytest.log")
if os.path.exists(log):
    text = open(log).read()
    m = re.findall(r"(\d+) (passed|failed|error|errors|skipped)", text.splitlines()[-1] if text else "")
    summary["tests"] = {k: int(v) for v, k in m} or {"output": text[-300:]}
summary["train_step"] = [step(r) for r in lines("jax.jsonl")]
summary["memory_options"] = [step(r) for r in lines("memory.jsonl")]
summary["torch"] = [{k: r.get(k) for k in ("batch_size", "amp", "pattern", "median_s", "peak_mb") if k in r}
                    for r in lines("torch.jsonl")]
qlog = os.path.join(out, "quickstart.log")
if os.path.exists(qlog):
    m = re.search(r"train_and_eval_status=(\d+) seconds=(\d+)", open(qlog).read())
    q = {"status": int(m.group(1)), "seconds": int(m.group(2))} if m else {"status": None}
    mpath = os.path.join(out, "quickstart_metrics.json")
    if os.path.exists(mpath):
        mj = json.load(open(mpath))
        q.update({k: mj.get(k) for k in ("psnr", "ssim", "psnr_moving")})
    summary["training"] = q
summary["ok"] = bool(
    not summary["env"]["cpu_kernels"] if summary["env"]["backend"] != "cpu" else True) and \
    summary.get("tests", {}).get("failed", 0) == 0 and summary.get("tests", {}).get("error", 0) == 0 and \
    all("error" not in r for r in summary["train_step"] + summary["memory_options"]) and \
    summary.get("training", {"status": 0}).get("status") == 0
json.dump(summary, open(os.path.join(out, "summary.json"), "w"))
print(json.dumps(summary))
EOF
