"""``vqkit train``: train a VQ-VAE and write a run folder."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command, add_device_flag
from vqkit.config import LR_SCHEDULES, PRECISIONS, PRESETS, RunConfig, preset_config
from vqkit.data import DATASETS
from vqkit.report_text import format_metrics
from vqkit.training import train

HELP = """
Train a VQ-VAE on MNIST or Fashion-MNIST and write a run folder holding config.json,
model.safetensors, metrics.jsonl (one line per epoch) and reconstructions.png.

Defaults are the tutorial's model (hidden 128, embedding 64, 512 codes, beta 0.25, Adam 1e-3,
batch 128, 5 epochs); --preset efficient is its smaller Exercise 2 model (hidden 64,
embedding 32, 128 codes, 3 epochs). Any flag given overrides the preset.

examples:
  vqkit train --preset efficient
  vqkit train --dataset fashion-mnist --epochs 10 --out runs/fashion
  vqkit train --num-embeddings 256 --beta 0.5 --seed 3
  vqkit train --preset fast            # efficient model, tuned for time to quality
  vqkit train --precision bf16 --channels-last --batch-size 256 --lr 3e-3 --lr-schedule onecycle
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
