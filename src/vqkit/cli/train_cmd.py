"""``vqkit train``: train a VQ-VAE and write a run folder."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command, add_device_flag, int_list
from vqkit.config import (
    CODEBOOK_INITS,
    CODEBOOK_UPDATES,
    GRADIENT_ESTIMATORS,
    LR_SCHEDULES,
    PRECISIONS,
    PRESETS,
    QUANTIZERS,
    RunConfig,
    preset_config,
)
from vqkit.data import DATASETS
from vqkit.report_text import format_metrics
from vqkit.training import train

HELP = """
Train a VQ-VAE on MNIST or Fashion-MNIST and write a run folder holding config.json,
model.safetensors, metrics.jsonl (one line per epoch) and reconstructions.png.

Defaults are the tutorial's model (hidden 128, embedding 64, 512 codes, beta 0.25, Adam 1e-3,
batch 128, 5 epochs); --preset efficient is its smaller Exercise 2 model (hidden 64,
embedding 32, 128 codes, 3 epochs); --preset best is the efficient model with the codebook
options that measured best on MNIST. Any flag given overrides the preset.

Codebook health: --codebook-update ema (moving-average codebook, commitment loss only),
--dead-code-restart N (re-seed codes unused for N steps), --codebook-init kmeans, or
--quantizer fsq --fsq-levels 8,5,5,5 (finite scalar quantization: 1000 codes, no codebook).
Restarts so far are logged per epoch in metrics.jsonl as codebook_restarts.

examples:
  vqkit train --preset efficient
  vqkit train --dataset fashion-mnist --epochs 10 --out runs/fashion
  vqkit train --num-embeddings 256 --beta 0.5 --seed 3
  vqkit train --preset fast            # efficient model, tuned for time to quality
  vqkit train --precision bf16 --channels-last --batch-size 256 --lr 3e-3 --lr-schedule onecycle
  vqkit train --preset efficient --codebook-update ema --dead-code-restart 50
  vqkit train --preset efficient --quantizer fsq --fsq-levels 8,4,4
"""

# Flags that override one field of the preset: flag name -> (section, field).
OVERRIDES = {
    "dataset": ("train", "dataset"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "seed": ("train", "seed"),
    "eval_batch_size": ("train", "eval_batch_size"),
    "train_limit": ("train", "train_limit"),
    "test_limit": ("train", "test_limit"),
    "precision": ("train", "precision"),
    "channels_last": ("train", "channels_last"),
    "compile": ("train", "compile"),
    "lr_schedule": ("train", "lr_schedule"),
    "warmup_fraction": ("train", "warmup_fraction"),
    "hidden_dim": ("model", "hidden_dim"),
    "residual_blocks": ("model", "residual_blocks"),
    "num_embeddings": ("quantizer", "num_embeddings"),
    "embedding_dim": ("quantizer", "embedding_dim"),
    "beta": ("quantizer", "beta"),
    "quantizer": ("quantizer", "quantizer"),
    "codebook_update": ("quantizer", "codebook_update"),
    "ema_decay": ("quantizer", "ema_decay"),
    "dead_code_restart": ("quantizer", "dead_code_restart"),
    "dead_code_threshold": ("quantizer", "dead_code_threshold"),
    "codebook_init": ("quantizer", "codebook_init"),
    "kmeans_iters": ("quantizer", "kmeans_iters"),
    "fsq_levels": ("quantizer", "fsq_levels"),
    "gradient_estimator": ("quantizer", "gradient_estimator"),
}


def register(subparsers) -> None:
    parser = add_command(subparsers, "train", "train a VQ-VAE and write a run folder", HELP, run)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--dataset", choices=DATASETS, help="training data (default: mnist)")
    parser.add_argument("--data-dir", help="folder holding the four IDX files (optional)")
    parser.add_argument("--out", help="run folder to create (default: a new folder in runs/)")
    add_device_flag(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--lr", type=float, help="Adam learning rate")
    group.add_argument("--seed", type=int)
    group.add_argument("--eval-batch-size", type=int)
    group.add_argument("--train-limit", type=int, help="train on the first N images only")
    group.add_argument("--test-limit", type=int, help="evaluate on the first N test images only")
    group = parser.add_argument_group("speed")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32, bf16 autocast of the convolutions (distances stay fp32), or auto: bf16 "
        "where the hardware runs it natively",
    )
    group.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory layout (faster convolutions on CPU)",
    )
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training forward pass",
    )
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="per-step LR schedule")
    group.add_argument("--warmup-fraction", type=float, help="share of steps warming up")
    group = parser.add_argument_group("model")
    group.add_argument("--hidden-dim", type=int, help="convolution width")
    group.add_argument("--residual-blocks", type=int, help="the paper's residual blocks (0: none)")
    group.add_argument("--num-embeddings", type=int, help="codebook size K")
    group.add_argument("--embedding-dim", type=int, help="code vector size D")
    group.add_argument("--beta", type=float, help="commitment loss weight")
    group = parser.add_argument_group("quantizer")
    group.add_argument("--quantizer", choices=QUANTIZERS, help="vq: codebook; fsq: scalar grid")
    group.add_argument(
        "--codebook-update",
        choices=CODEBOOK_UPDATES,
        help="loss (tutorial) or ema (moving average)",
    )
    group.add_argument("--ema-decay", type=float, help="EMA decay gamma in (0, 1) (default 0.99)")
    group.add_argument(
        "--dead-code-restart",
        type=int,
        metavar="N",
        help="move codes unused for N training steps onto batch encoder outputs (0: off)",
    )
    group.add_argument(
        "--dead-code-threshold",
        type=float,
        help="with ema, also restart codes whose cluster size falls below this (in [0, 1))",
    )
    group.add_argument(
        "--codebook-init", choices=CODEBOOK_INITS, help="uniform, or kmeans on the first batch"
    )
    group.add_argument("--kmeans-iters", type=int, help="k-means iterations (default 10)")
    group.add_argument(
        "--fsq-levels", type=int_list, metavar="L1,L2,...", help="FSQ values per channel"
    )
    group.add_argument(
        "--gradient-estimator", choices=GRADIENT_ESTIMATORS, help="ste or rotation (rotation trick)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset's config with every explicitly given flag applied (and re-validated)."""
    data = preset_config(args.preset).to_dict()
    sections = {
        "train": data["train"],
        "model": data["model"],
        "quantizer": data["model"]["quantizer"],
    }
    for flag, (section, name) in OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            sections[section][name] = value
    return RunConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = train(
        config,
        args.out,
        device=args.device,
        data_dir=args.data_dir,
        progress=False if args.quiet else None,
    )
    print(format_metrics(result.final))
    print(f"run folder:      {result.run_dir}")
    print(f"reconstructions: {result.run_dir / 'reconstructions.png'}")
    return 0
