"""``vqkit encode``: images to their 7x7 code grids, saved as .npy."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command, add_device_flag, note_light_backgrounds
from vqkit.wording import counted

HELP = """
Encode images into code grids: each 28x28 image becomes 7x7 integers in [0, K). The codes are
written as an (N, 7, 7) int64 .npy array, in the order the inputs were given; `vqkit decode`
turns them back into images.

INPUT is a 28x28 PNG file (colour is converted to gray), a test-set index (17 or test:17), a
test-set range (test:0-99, both ends included), a training image or range (train:17,
train:0-99) or digit:3 (the first test image labelled 3).

examples:
  vqkit encode runs/RUN test:0-99 --out codes.npy
  vqkit encode runs/RUN mine.png digit:7 --out codes.npy
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "encode", "images to 7x7 code grids, saved as .npy", HELP, run)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="indices (17, test:17, train:17), ranges (test:0-99, train:0-9), digit:D or PNGs",
    )
    parser.add_argument("--out", required=True, help=".npy file for the (N, 7, 7) codes")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    from vqkit.checkpoint import load_config, load_model
    from vqkit.codes_io import encode_images, require_new_outputs, require_suffix, save_codes
    from vqkit.devices import resolve_device
    from vqkit.inputs import resolve_images, split_loader

    require_suffix(args.out, (".npy",), "--out")
    require_new_outputs({"--out": args.out}, args.inputs, args.run_dir)
    config = load_config(args.run_dir)
    splits = split_loader(config.train.dataset, config.train.data_folder(args.data_dir))
    found = resolve_images(args.inputs, splits, config.model.image_size)
    model = load_model(args.run_dir, device=resolve_device(args.device))
    note_light_backgrounds(found, config.train.dataset)  # once nothing is left to refuse
    codes = encode_images(model, found.images, config.train.eval_batch_size)
    print(f"wrote {save_codes(codes, args.out)} ({counted(codes.shape[0], 'code grid')})")
    return 0
