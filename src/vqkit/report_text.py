"""Plain-text summaries of metrics for the terminal."""

from __future__ import annotations

from typing import Any

from vqkit.metrics import psnr
from vqkit.wording import on_test_images


def format_metrics(metrics: dict[str, Any]) -> str:
    """The headline test metrics of a run, one per line."""
    ratio = metrics["eight_bit_image_bits"] / metrics["bits_per_image"]
    where = on_test_images(metrics)
    lines = [
        f"test MSE:        {metrics['test_mse']:.5f}",
        # From the MSE, not the record: JSON holds an infinite PSNR (MSE 0) as null.
        f"test PSNR:       {psnr(metrics['test_mse']):.2f} dB",
        # Both over the test set's codes; perplexity is 2**entropy of their frequencies, the
        # number of equally used codes that would be as uncertain.
        f"perplexity:      {metrics['perplexity']:.1f} (codes in effective use {where})",
        f"codes used:      {metrics['codes_used']} of {metrics['num_codes']} {where}",
        *(
            [f"code restarts:   {metrics['codebook_restarts']} during training"]
            if metrics.get("codebook_restarts")
            else []
        ),
        f"bits per image:  {metrics['bits_per_image']:.1f} for the code grid, against "
        f"{metrics['binarized_image_bits']} (binarized) and {metrics['eight_bit_image_bits']} "
        f"(8-bit) for the image: {ratio:.0f}x smaller than 8-bit",
    ]
    return "\n".join(lines)
