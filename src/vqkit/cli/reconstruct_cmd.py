"""``vqkit reconstruct``: test (or training) images above their reconstructions, as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqkit.cli.common import add_command, add_device_flag, ascii_int, positive_int
from vqkit.constants import COMPARISON_COLUMNS, SPLIT_NAMES
from vqkit.errors import VqkitError
from vqkit.wording import counted

HELP = f"""
Write a PNG with test images in the top row and the model's reconstructions below them
(--split train: training images, as the tutorial shows, to compare seen and unseen images);
past {COMPARISON_COLUMNS} images the next ones form another such pair of rows, and so on. An
--out ending in .npy gets the reconstructions alone, an (n, 28, 28) float32 array in [0, 1].

examples:
  vqkit reconstruct runs/RUN --out recon.png
  vqkit reconstruct runs/RUN --n 16 --start 100 --out recon.png
  vqkit reconstruct runs/RUN --split train --out train-recon.png
  vqkit reconstruct runs/RUN --n 10000 --out all-test-reconstructions.npy
"""


DEFAULT_COUNT = 8


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "reconstruct", "images above their reconstructions, as a PNG", HELP, run
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "--out", required=True, help="PNG file to write, or .npy for the reconstructions alone"
    )
    parser.add_argument(
        "--n",
        type=positive_int,
        help=f"how many images (default {DEFAULT_COUNT}, or as many as follow --start)",
    )
    parser.add_argument(
        "--start", type=ascii_int, default=0, help="first image's index (default 0)"
    )
    parser.add_argument(
        "--split", choices=SPLIT_NAMES, default="test", help="images of this split (default test)"
    )
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from vqkit.checkpoint import load_config, load_model
    from vqkit.codes_io import (
        IMAGE_SUFFIXES,
        decode_codes,
        encode_images,
        require_new_outputs,
        require_suffix,
        write_images,
    )
    from vqkit.data import load_split
    from vqkit.devices import resolve_device
    from vqkit.training import write_reconstructions

    require_suffix(args.out, IMAGE_SUFFIXES, "--out")
    require_new_outputs({"--out": args.out}, run_dir=args.run_dir)
    config = load_config(args.run_dir)
    model = load_model(args.run_dir, device=resolve_device(args.device))
    split = load_split(config.train.dataset, args.split, config.train.data_folder(args.data_dir))
    count, where = split.images.shape[0], SPLIT_NAMES[args.split]
    if args.start < 0 or args.start >= count:
        raise VqkitError(f"--start {args.start} is outside the {where} (0 to {count - 1}).")
    # Without --n, a small split (one's own data) shows what it has rather than refusing.
    wanted = args.n if args.n is not None else min(DEFAULT_COUNT, count - args.start)
    if args.start + wanted > count:
        raise VqkitError(
            f"--start {args.start} with --n {wanted} runs past the end of the {where} "
            f"({counted(count, 'image')}); ask for --n {count - args.start} or fewer."
        )
    images = split.images[args.start : args.start + wanted]
    if Path(args.out).suffix.lower() == ".npy":  # in batches: --n may ask for a whole split
        batch_size = config.train.eval_batch_size
        codes = encode_images(model, images, batch_size)
        path = write_images(decode_codes(model, codes, batch_size), args.out)
    else:
        with torch.no_grad():
            path = write_reconstructions(model, images, args.out)
    print(f"wrote {path}")
    return 0
