#!/usr/bin/env bash
# GPU training benchmark: efficient and default presets, their full epochs, on one CUDA GPU.
# Prints a markdown table (training seconds exclude evaluation; compile time is inside run 1).
# Installs nothing: needs a Python with a CUDA build of torch plus numpy, pillow, tqdm and
# safetensors. Budget: well under 8 minutes on an H100.
#   bash bench/gpu.sh                 # PYTHON=/path/to/python bash bench/gpu.sh to pick one
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "bench/gpu.sh: '$PYTHON' cannot import torch; set PYTHON to a Python with CUDA torch." >&2
    exit 2
fi
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: torch sees no CUDA GPU (torch.cuda.is_available() is False)." >&2
    exit 2
fi
if ! "$PYTHON" -c 'import numpy, PIL, tqdm, safetensors' 2>/dev/null; then
    echo "bench/gpu.sh: missing one of numpy, pillow, tqdm, safetensors (pip install them)." >&2
    exit 2
fi
"$PYTHON" - <<'PY'
import torch
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, {p.name}, {p.total_memory / 2**30:.0f} GiB, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY
date -u
echo
echo "| run | epochs | batch | lr, schedule | precision | compile | train s | img/s | test MSE |"
echo "|---|---|---|---|---|---|---|---|---|"
run() { timeout "${RUN_LIMIT:-100}" "$PYTHON" bench/gpu_train.py "$@" || echo "| $* | failed or timed out (rc $?) |"; }
# The presets exactly as on the CPU (batch 128, Adam 1e-3, fp32).
run --preset efficient --label "efficient as-is"
run --preset default --label "default as-is"
# Same learning, bf16 autocast.
run --preset efficient --precision bf16 --label "efficient bf16"
# Large batches, scaled peak rate, one-cycle, bf16, compiled: the < 2 s target.
# GPU_BATCH / GPU_LR / EXTRA (e.g. quantizer options) let one call try other points.
run --preset efficient --batch-size "${GPU_BATCH:-1024}" --lr "${GPU_LR:-8e-3}" \
    --lr-schedule onecycle --precision bf16 --compile --repeat 2 --label "efficient large-batch" \
    ${EXTRA:-}
run --preset efficient --batch-size 256 --lr 4e-3 --lr-schedule onecycle --precision bf16 \
    --compile --repeat 2 --label "efficient batch 256"
run --preset default --batch-size "${GPU_BATCH:-1024}" --lr "${GPU_LR:-8e-3}" \
    --lr-schedule onecycle --precision bf16 --compile --repeat 2 --label "default large-batch" \
    ${EXTRA:-}
date -u
