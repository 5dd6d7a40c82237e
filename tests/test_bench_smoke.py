"""The speed benchmarks still run end to end (on a tiny slice; their numbers are not checked)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from vqkit.acceleration import bf16_is_fast

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_interleaved_throughput_prints_both_sides_and_the_ratio():
    # Both sides' test MSE on 512 images: over all 10,000 it took half the script's time.
    out = run_bench(
        "throughput_interleaved.py", "--images", "1024", "--test-images", "512",
        "--round-batches", "2",
    )  # fmt: skip
    assert re.search(r"^\| vqkit \| 1024 \|", out, re.MULTILINE)
    assert re.search(r"^\| tutorial reference \(efficient\) \| 1024 \|", out, re.MULTILINE)
    # 1024 images = 8 batches per side in rounds of 2: 4 rounds with both sides.
    assert re.search(r"per-round ratios over 4 rounds: median [\d.]+x", out)


def test_transposed_conv_bench_prints_a_row_per_layer_and_setting():
    out = run_bench("transposed_conv.py", "--batch", "4", "--rounds", "2")
    rows = [line for line in out.splitlines() if re.match(r"^\| \d+→\d+", line)]
    settings = 2 if bf16_is_fast(torch.device("cpu")) else 1  # bf16 rows only where native
    assert len(rows) == 4 * settings and all(line.count("|") == 8 for line in rows)


def test_gpu_training_bench_prints_one_row_per_run_even_on_the_cpu():
    # The GPU session is short and rare: a broken bench/gpu_train.py must fail here first.
    out = run_bench(
        "gpu_train.py", "--device", "cpu", "--preset", "efficient", "--epochs", "2",
        "--batch-size", "64", "--train-limit", "256", "--test-limit", "128", "--repeat", "2",
        "--label", "smoke",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| smoke (run ")]
    assert len(rows) == 2
    assert all(line.count("|") == 12 for line in rows)
    assert re.search(r"\| 2 \| 64 \| 0.001 constant \| fp32 \| no \|", rows[0])


def test_onednn_share_reads_the_kernel_times_back():
    out = run_bench(
        "onednn_share.py", "--steps", "2", "--rounds", "1", "--batch-size", "32",
        "--train-limit", "256",
    )  # fmt: skip
    # A verbose format the parser no longer understands would leave no rows and a 0% share.
    assert re.search(r"^\| convolution backward_weights mb32_ic64oc32", out, re.MULTILINE)
    share = re.search(r"inside oneDNN [\d.]+ ms \((\d+)% of the step\)", out)
    assert share and 0 < int(share.group(1)) <= 100
    assert re.search(r"at most [\d.]+x faster$", out, re.MULTILINE)


def test_step_host_prints_the_step_time_and_the_host_heaviest_operators():
    out = run_bench(
        "step_host.py", "--device", "cpu", "--steps", "2", "--warmup-steps", "1",
        "--batch-size", "32", "--top", "3",
    )  # fmt: skip
    assert re.search(r"^efficient, batch 32, fp32, compile no, cpu: [\d.]+ ms per step", out, re.M)
    rows = [line for line in out.splitlines() if re.match(r"^\| aten::", line)]
    assert len(rows) == 3


def test_every_preset_has_a_gpu_target():
    # bench/gpu.sh names presets; one without a target stopped its row with a KeyError.
    sys.path.insert(0, str(BENCH))
    try:
        from vqkit_runner import TARGET_MSE
    finally:
        sys.path.remove(str(BENCH))
    from vqkit.config import PRESETS

    assert set(TARGET_MSE) == set(PRESETS)


def test_seed_spread_prints_a_row_per_seed_and_the_summary():
    out = run_bench(
        "seed_spread.py", "--preset", "efficient", "--seeds", "0", "1", "--epochs", "1",
        "--train-limit", "256", "--test-limit", "64",
    )  # fmt: skip
    rows = re.findall(r"^\| (\d) \| ([\d.]+) \|", out, re.MULTILINE)
    assert [seed for seed, _ in rows] == ["0", "1"]
    assert rows[0][1] != rows[1][1]  # the seed reaches the run
    assert re.search(r"^mean [\d.]+, sd [\d.]+, range .*; 0 of 2 seeds <= 0.0057$", out, re.M)


def test_step_operators_times_each_convolution_in_and_out_of_the_step():
    out = run_bench(
        "step_operators.py", "--steps", "2", "--rounds", "2", "--warmup-steps", "1",
        "--repeats", "2", "--flush-mib", "8", "--batch-size", "32", "--top", "3",
    )  # fmt: skip
    precision = "bf16" if bf16_is_fast(torch.device("cpu")) else "fp32"  # the default, auto
    assert re.search(
        rf"^efficient, batch 32, {precision}, .* 2 rounds: [\d.]+ ms per step plain", out, re.M
    )
    calls = [
        line for line in out.splitlines() if re.match(r"^\| (transposed )?(forward|backward)", line)
    ]
    # Encoder, decoder: 2 + 2 layers, each with a forward and a backward call.
    assert len(calls) == 8
    # The encoder's 64->32 4x4 stride-2 forward: 2 FLOP per multiply-add, batch x 7x7 outputs
    # x 32 channels x 64 inputs x 16 taps.
    encoder_2 = next(line for line in calls if line.startswith("| forward (32, 64, 14, 14)"))
    assert encoder_2.split("|")[5].strip() == str(round(2 * 32 * 49 * 32 * 64 * 16 / 1e6))


def test_quantizer_scaling_measures_vqkit_in_every_case():
    # An import moved in vqkit left every vqkit cell '-' while the script still exited 0.
    out = run_bench("quantizer_scaling.py", "--batch", "98", "--codes", "16", "32")
    rows = re.findall(r"^\| 98 \| (16|32) \| ([\d.]+) \| (\d+) \|", out, re.MULTILINE)
    assert [codes for codes, _, _ in rows] == ["16", "32"], out


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for a CUDA Python: every check passes, every run takes a second.
case "$1" in
  -c) exit 0 ;;
  -) script="$(cat)"  # the device line is faked; reading metrics.jsonl is real Python
     case "$script" in
       *get_device_properties*) echo "a fake GPU" ;;
       *) printf '%s\\n' "$script" | "%s" - "${@:2}" ;;
     esac ;;
  bench/gpu_train.py) sleep 1; echo "| ran $* |" ;;
  bench/step_host.py) sleep 1; echo "profiled $*" ;;
  -m) sleep 1; mkdir -p "${@: -1}"
      echo '{"epoch_seconds": 0.5, "test_mse": 0.005}' > "${@: -1}/metrics.jsonl" ;;
esac
"""


def test_gpu_script_runs_its_rows_most_important_first_and_stops_at_its_budget(tmp_path):
    # One short device session is all a GPU check gets: a script that runs past the session,
    # or spends it on minor rows first, loses the numbers the issue asks for.
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.replace('"%s"', f'"{sys.executable}"'))
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "BUDGET": "24"}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu.sh")], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    ran = re.findall(r"^\| ran bench/gpu_train.py (.*) \|$", done.stdout, re.MULTILINE)
    assert ran[0] == "--preset efficient --cuda-graph --repeat 2 --label efficient whole-step graph"
    skipped = re.findall(r"^\| (.*) \| skipped: BUDGET=24 s spent \|$", done.stdout, re.M)
    assert ran and skipped and len(ran) + len(skipped) == 10
    assert "vqkit train --preset efficient --cuda-graph: 0.50 s of training" in done.stdout
    assert re.search(r"^\d+ s of BUDGET=24 s$", done.stdout, re.MULTILINE)
