"""How the quantizer's cost grows with codebook size K and batch size N, vs vector-quantize-pytorch.

For each (N, K) both quantizers get identical inputs (N vectors of dim 64, as B×7×7 grids) and
run forward + backward (loss plus a random projection of the quantized output, so gradients
reach the input and the codebook). Time: median of several repeats after a warm-up.

Peak memory: each case runs in a fresh subprocess that builds its inputs, resets the kernel's
peak-RSS counter (writing 5 to /proc/self/clear_refs, Linux), reads its resident set (VmRSS),
runs one forward + backward and reads the peak (VmHWM); the difference is the extra memory the
step touched at its peak, whatever allocated it (torch's CPU allocator returns large blocks to
the system, so freed chunks do not hide later ones).

``vector-quantize-pytorch`` is optional (``pip install '.[bench]'``); without it only vqkit is
measured. It runs with its defaults (EMA codebook, the way most users call it).

    python bench/quantizer_scaling.py
    python bench/quantizer_scaling.py --batch 6272 --codes 4096 16384
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

DIM = 64
GRID = 49  # one 7×7 code grid per image
DEFAULT_CODES = (128, 512, 4096, 16384, 65536)
DEFAULT_BATCHES = (6272, 1568)
MIN_REPEATS, MIN_SECONDS = 3, 1.0
# Cases where the other library's N×K distance matrix alone would exceed this are skipped,
# since it materialises several such matrices at once on a machine shared with other work.
OTHER_LIBRARY_MAX_BYTES = 1 << 30


def build(library: str, codes: int):
    """A (module, forward+backward closure factory) for one library."""
    if library == "vqkit":
        from vqkit.config import QuantizerConfig
        from vqkit.vq import VectorQuantizer

        module = VectorQuantizer(QuantizerConfig(num_embeddings=codes, embedding_dim=DIM))

        def step(z: torch.Tensor, g: torch.Tensor) -> None:
            out = module(z)
            (out.loss + (out.quantized * g).sum()).backward()

        return module, step, "bdhw"
    from vector_quantize_pytorch import VectorQuantize

    module = VectorQuantize(dim=DIM, codebook_size=codes)
    module.train()

    def step(z: torch.Tensor, g: torch.Tensor) -> None:
        quantized, _indices, loss = module(z)
        (loss.sum() + (quantized * g).sum()).backward()

    return module, step, "bnd"


def measure_case(library: str, batch: int, codes: int) -> dict:
    """Runs inside the subprocess: peak extra memory and median time of forward + backward."""
    torch.manual_seed(0)
    _module, step, layout = build(library, codes)
    images = batch // GRID
    if layout == "bdhw":
        z = torch.randn(images, DIM, 7, 7, requires_grad=True)
    else:  # the same vectors as (B, 49, D) sequences
        z = torch.randn(images, DIM, 7, 7).permute(0, 2, 3, 1).reshape(images, GRID, DIM)
        z.requires_grad_(True)
    g = torch.randn_like(z)
    before = reset_peak_rss()
    step(z, g)
    peak_kib = memory_kib("VmHWM") - before
    times: list[float] = []
    while len(times) < MIN_REPEATS or sum(times) < MIN_SECONDS:
        z.grad = None
        started = time.perf_counter()
        step(z, g)
        times.append(time.perf_counter() - started)
    times.sort()
    return {"ms": 1000 * times[len(times) // 2], "peak_mib": peak_kib / 1024}


def memory_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def reset_peak_rss() -> int:
    """Set the peak-RSS counter to the current RSS and return it (KiB)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return memory_kib("VmRSS")


def run_case(library: str, batch: int, codes: int) -> dict | None:
    command = [sys.executable, __file__, "--case", library, str(batch), str(codes)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {library} N={batch} K={codes} failed: {done.stderr.strip()[-300:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def have_other_library() -> bool:
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, nargs="+", default=list(DEFAULT_CODES))
    parser.add_argument("--batch", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        library, batch, codes = args.case
        print(json.dumps(measure_case(library, int(batch), int(codes))))
        return 0
    other = have_other_library()
    if not other:
        print("vector-quantize-pytorch is not installed (pip install '.[bench]'): vqkit only.")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dim {DIM}")
    print(
        "\n| N | K | vqkit ms | vqkit peak MiB | v-q-p ms | v-q-p peak MiB | speed-up | "
        "floor ms (2NKD at peak) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    from flops import measure_peak_gflops

    peak = measure_peak_gflops(torch.float32)
    failed = 0
    for batch in args.batch:
        for codes in args.codes:
            ours = run_case("vqkit", batch, codes)
            failed += ours is None
            theirs = None
            if other and batch * codes * 4 <= OTHER_LIBRARY_MAX_BYTES:
                theirs = run_case("vqp", batch, codes)
            floor_ms = 2 * batch * codes * DIM / (peak * 1e9) * 1000
            cells = [f"{ours['ms']:.1f}", f"{ours['peak_mib']:.0f}"] if ours else ["-", "-"]
            cells += (
                [f"{theirs['ms']:.1f}", f"{theirs['peak_mib']:.0f}"] if theirs else ["skipped", "-"]
            )
            ratio = f"{theirs['ms'] / ours['ms']:.1f}x" if ours and theirs else "-"
            print(
                f"| {batch} | {codes} | {' | '.join(cells)} | {ratio} | {floor_ms:.1f} |",
                flush=True,
            )
    print(f"\nmeasured fp32 matmul peak: {peak:.0f} GFLOP/s")
    if failed:  # a broken vqkit case must not pass for a finished benchmark
        print(f"{failed} vqkit case(s) failed; see above.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
