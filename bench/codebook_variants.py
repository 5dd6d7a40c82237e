"""Codebook health of each quantizer variant: the efficient preset on MNIST, one run per variant.

Prints a markdown table of test MSE, codes used, perplexity (over the whole test set), restarts
and seconds per epoch, with each variant's test MSE as a ratio to the tutorial's quantizer
(``loss``) measured in the same invocation.

    python bench/codebook_variants.py                          # the full table, 3 epochs
    python bench/codebook_variants.py --epochs 1 --train-limit 6000 --variants loss,ema
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from vqkit.config import RunConfig, preset_config
from vqkit.training import train

# Restart window used by the restart variants: about a tenth of an epoch at batch 128.
RESTART_STEPS = 50

# Variant name -> quantizer settings on top of the efficient preset. "loss" is the reference.
VARIANTS: dict[str, dict[str, Any]] = {
    "loss": {},
    "ema": {"codebook_update": "ema"},
    "ema+restart": {"codebook_update": "ema", "dead_code_restart": RESTART_STEPS},
    "kmeans+ema+restart": {
        "codebook_update": "ema",
        "dead_code_restart": RESTART_STEPS,
        "codebook_init": "kmeans",
    },
    "loss+restart": {"dead_code_restart": RESTART_STEPS},
    "rotation": {"gradient_estimator": "rotation"},
    "rotation+ema+restart": {
        "codebook_update": "ema",
        "dead_code_restart": RESTART_STEPS,
        "gradient_estimator": "rotation",
    },
    "fsq 8,4,4": {"quantizer": "fsq", "fsq_levels": [8, 4, 4]},
    "fsq 8,5,5,5": {"quantizer": "fsq", "fsq_levels": [8, 5, 5, 5]},
    "best": {},  # the `best` preset itself (today the same settings as kmeans+ema+restart)
}
DEFAULT_VARIANTS = "loss,ema,ema+restart,kmeans+ema+restart,rotation,fsq 8,4,4"


def variant_config(name: str, epochs: int, train_limit: int | None) -> RunConfig:
    config = preset_config("best" if name == "best" else "efficient")
    for field, value in VARIANTS[name].items():
        setattr(config.model.quantizer, field, value)
    config.model.quantizer.__post_init__()  # re-validate the combination
    config.train.epochs = epochs
    config.train.train_limit = train_limit
    return config


def run_variant(name: str, epochs: int, train_limit: int | None, root: Path) -> dict[str, Any]:
    config = variant_config(name, epochs, train_limit)
    result = train(config, root / name.replace(" ", "_"), device="cpu", progress=False)
    final = result.final
    seconds = [record["epoch_seconds"] for record in result.history]
    return {
        "variant": name,
        "test_mse": final["test_mse"],
        "codes_used": final["codes_used"],
        "num_codes": final["num_codes"],
        "perplexity": final["perplexity"],
        "restarts": final.get("codebook_restarts", 0),
        "epoch_seconds": sum(seconds) / len(seconds),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    reference = next((r["test_mse"] for r in rows if r["variant"] == "loss"), None)
    lines = [
        "| variant | test MSE | MSE vs loss | codes used | perplexity | restarts | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['test_mse'] / reference:.3f}" if reference else "n/a"
        used = (
            f"{r['codes_used']} / {r['num_codes']} ({100 * r['codes_used'] / r['num_codes']:.0f}%)"
        )
        lines.append(
            f"| {r['variant']} | {r['test_mse']:.5f} | {ratio} | {used} | {r['perplexity']:.1f} "
            f"| {r['restarts']} | {r['epoch_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, help="train on the first N images only")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma-free names separated by ';' or ',' from: {'; '.join(VARIANTS)}",
    )
    parser.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args(argv)
    names = parse_variants(args.variants)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        for name in names:
            rows.append(run_variant(name, args.epochs, args.train_limit, root))
            print(f"done: {rows[-1]}", flush=True)  # partial results survive an interrupted run
    print(markdown_table(rows))


def parse_variants(text: str) -> list[str]:
    """Variant names from a ','-separated list; FSQ names contain commas, so match greedily."""
    names, rest = [], text
    while rest:
        match = max((v for v in VARIANTS if rest.startswith(v)), key=len, default=None)
        if match is None:
            raise SystemExit(f"unknown variant at {rest!r}; choose from: {'; '.join(VARIANTS)}")
        names.append(match)
        rest = rest[len(match) :].lstrip(",;")
    return names


if __name__ == "__main__":
    main()
