#!/usr/bin/env bash
# The GPU measurements of the performance issue in one command, for a machine with a CUDA GPU:
#
#   1. benchmarks/train_step.py, lab config, batch 12 and 100, float32 and bfloat16;
#   2. benchmarks/torch_reference.py on the same GPU, both call patterns, batch 12 and 100,
#      float32 and bfloat16 autocast (skipped when torch is not installed);
#   3. a real training run: the quickstart (configs/pushbot.py) trained and evaluated on the GPU.
#
# Usage, from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]         # default runs/gpu_check; JSON lines + logs there
#
# OUT_DIR gets jax.jsonl, torch.jsonl, quickstart.log and quickstart_metrics.json. STEPS (default
# 10) sets the timed steps per measurement, SKIP_TORCH=1 / SKIP_TRAIN=1 leave parts out. The whole
# script takes about 6-8 minutes on one H100/H200 (each JAX measurement compiles in its own
# process). A machine without internet needs the packages vp_jax imports that it lacks as wheels:
# e.g. `pip download --no-deps -d .whl ml-collections` beside the checkout, then set WHEELS=.whl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/gpu_check}
PY=${PY:-python3}
STEPS=${STEPS:-10}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vp_jax_site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/vp_jax_site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import jax; d = jax.devices()[0]; print('jax', jax.__version__, d.platform, d.device_kind)" || exit 1
"$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" || { echo "gpu_check: JAX sees no GPU" >&2; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== vp_jax train step (lab config)"
"$PY" benchmarks/train_step.py --config configs/lab_bair.py --batch 12 100 --steps "$STEPS" --out "$OUT_DIR/jax.jsonl"
"$PY" benchmarks/train_step.py --config configs/lab_bair.py --batch 12 100 --steps "$STEPS" \
  --set model.dtype=bfloat16 --out "$OUT_DIR/jax.jsonl"

if [ -z "${SKIP_TORCH:-}" ] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "== PyTorch reference (same model, same GPU)"
  "$PY" benchmarks/torch_reference.py --device cuda --batch 12 100 --steps "$STEPS" | tee -a "$OUT_DIR/torch.jsonl"
  "$PY" benchmarks/torch_reference.py --device cuda --amp bf16 --batch 12 100 --steps "$STEPS" | tee -a "$OUT_DIR/torch.jsonl"
fi

if [ -z "${SKIP_TRAIN:-}" ]; then
  echo "== quickstart on the GPU"
  work="$OUT_DIR/pushbot"
  rm -rf "$work"
  { time ("$PY" train.py --config configs/pushbot.py --workdir "$work" && "$PY" eval.py --workdir "$work"); } \
    > "$OUT_DIR/quickstart.log" 2>&1
  tail -n 8 "$OUT_DIR/quickstart.log"
  cp "$work/eval/test/metrics.json" "$OUT_DIR/quickstart_metrics.json" 2>/dev/null
fi
