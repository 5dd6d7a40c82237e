#!/usr/bin/env bash
# GPU training benchmark: efficient and default presets, their full epochs, on one CUDA GPU.
# Prints a markdown table (training seconds exclude evaluation; compilation happens in epoch 1,
# so later epochs show the steady cost), then where a step's time goes (bench/step_host.py).
# Installs nothing: needs a Python with a CUDA build of torch plus numpy, pillow, tqdm and
# safetensors. Budget: about 6 minutes on an H100 (compilation is most of it).
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
echo "| run | epochs | batch | lr, schedule | precision | compile | train s | epoch 1 s | later epochs s (median) | img/s | test MSE |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
run() { timeout "${RUN_LIMIT:-100}" "$PYTHON" bench/gpu_train.py "$@" || echo "| $* | failed or timed out (rc $?) |"; }
# The presets exactly as on the CPU (batch 128, Adam 1e-3, fp32, constant rate).
run --preset efficient --label "efficient as-is"
run --preset default --label "default as-is"
# Each whole step (forward, backward, Adam) captured once as a CUDA graph and replayed: the
# same eager kernels without the host launching them one by one (no compilation).
run --preset efficient --cuda-graph --repeat 2 --label "efficient whole-step graph"
run --preset default --cuda-graph --repeat 2 --label "default whole-step graph"
run --preset fast --cuda-graph --repeat 2 --label "fast whole-step graph"
# The same learning with torch.compile's CUDA-graph replay (run 2 shows the steady cost).
run --preset efficient --compile-mode reduce-overhead --repeat 2 --label "efficient graphs"
run --preset default --compile-mode reduce-overhead --repeat 2 --label "default graphs"
# Half the steps: batch 256 at twice the rate (test MSE 0.00515 after 3 epochs on the CPU).
run --preset efficient --batch-size 256 --lr 2e-3 --compile-mode reduce-overhead --repeat 2 \
    --label "efficient batch 256 graphs"
# The k-means presets (k-means runs before the first compiled step, so one graph per shape).
run --preset fast --compile-mode reduce-overhead --repeat 2 --label "fast graphs"
run --preset best --batch-size 256 --lr 3e-3 --lr-schedule onecycle \
    --compile-mode reduce-overhead --repeat 2 --label "best batch 256 graphs"
# The user's path: `vqkit train --cuda-graph` with its own loop (non-finite guard, progress
# counters, a state saved after each epoch); epoch seconds and test MSE from its metrics.jsonl.
echo
cli_run="$(mktemp -d)/efficient-cuda-graph"
if timeout "${RUN_LIMIT:-100}" "$PYTHON" -m vqkit train --preset efficient --cuda-graph \
    --device cuda --quiet --out "$cli_run" >/dev/null; then
    "$PYTHON" - "$cli_run/metrics.jsonl" <<'PY'
import json, sys
epochs = [json.loads(line) for line in open(sys.argv[1])]
seconds = [e["epoch_seconds"] for e in epochs]
print(f"vqkit train --preset efficient --cuda-graph: {sum(seconds):.2f} s of training "
      f"(epochs {', '.join(f'{s:.2f}' for s in seconds)}), test MSE {epochs[-1]['test_mse']:.5f}")
PY
else
    echo "vqkit train --preset efficient --cuda-graph: failed or timed out"
fi
# Where a step's time goes: wall time against GPU kernel time, and the host's heaviest operators.
echo
timeout "${RUN_LIMIT:-100}" "$PYTHON" bench/step_host.py --preset efficient || true
echo
timeout "${RUN_LIMIT:-100}" "$PYTHON" bench/step_host.py --preset efficient \
    --compile-mode reduce-overhead || true
echo
timeout "${RUN_LIMIT:-100}" "$PYTHON" bench/step_host.py --preset efficient --cuda-graph || true
date -u
