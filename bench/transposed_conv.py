"""The decoder's transposed convolutions: stock ``nn.ConvTranspose2d`` against vqkit's layer.

Both hold the same weights; each row times a training step of one layer (forward, then
backward of a fixed output gradient) and, separately, oneDNN's weight-gradient kernel asked
with and without the bias gradient, the behaviour ``vqkit.fast_conv`` works around. Variants
alternate inside each round and the 10th percentile over rounds is printed (the least disturbed
timing on a shared machine).

    python bench/transposed_conv.py
    python bench/transposed_conv.py --batch 256 --rounds 50
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from vqkit.acceleration import bf16_is_fast
from vqkit.fast_conv import ConvTranspose2d

# (input channels, output channels, input size): the efficient and default decoders' layers.
LAYERS = [(32, 64, 7), (64, 1, 14), (64, 128, 7), (128, 1, 14)]


def low_percentile_ms(timings: list[float]) -> float:
    timings = sorted(timings)
    return 1e3 * timings[len(timings) // 10]


def time_rounds(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for run in variants.values():  # warm-up: oneDNN builds its kernels on first use
        run(), run()
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {name: low_percentile_ms(values) for name, values in timings.items()}


def layer_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool):
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(x)
        out.backward(grad)

    return step


def weight_gradient(grad, x, weight, with_bias: bool):
    bias_sizes = [weight.shape[1]] if with_bias else None
    mask = [False, True, with_bias]
    return lambda: torch.ops.aten.convolution_backward(
        grad, x, weight, bias_sizes, [2, 2], [1, 1], [1, 1], True, [0, 0], 1, mask
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(
        "\n| layer | precision, layout | stock fwd+bwd ms | vqkit fwd+bwd ms | speed-up | "
        "weight grad with bias ms | without bias ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for c_in, c_out, size in LAYERS:
        # bf16 rows only where native: emulated bf16 would time the emulation.
        for bf16 in (True, False) if bf16_is_fast(torch.device("cpu")) else (False,):
            dtype = torch.bfloat16 if bf16 else torch.float32
            layout = torch.channels_last if bf16 else torch.contiguous_format
            torch.manual_seed(0)
            stock = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1).to(memory_format=layout)
            fast = ConvTranspose2d(c_in, c_out, 4, 2, 1).to(memory_format=layout)
            fast.load_state_dict(stock.state_dict())
            x = torch.randn(args.batch, c_in, size, size).contiguous(memory_format=layout)
            x = x.to(dtype).requires_grad_()
            grad = torch.randn(args.batch, c_out, 2 * size, 2 * size, dtype=dtype)
            grad = grad.contiguous(memory_format=layout)
            weight = stock.weight.detach().to(dtype)
            times = time_rounds(
                {
                    "stock": layer_step(stock, x, grad, bf16),
                    "vqkit": layer_step(fast, x, grad, bf16),
                    "with bias": weight_gradient(grad, x.detach(), weight, True),
                    "without bias": weight_gradient(grad, x.detach(), weight, False),
                },
                args.rounds,
            )
            setting = "bf16 autocast, channels-last" if bf16 else "fp32, NCHW"
            print(
                f"| {c_in}→{c_out}, {size}×{size} → {2 * size}×{2 * size} | {setting} | "
                f"{times['stock']:.2f} | {times['vqkit']:.2f} | "
                f"{times['stock'] / times['vqkit']:.2f}× | {times['with bias']:.2f} | "
                f"{times['without bias']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
