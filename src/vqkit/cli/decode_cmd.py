"""``vqkit decode``: code grids from a .npy file back to images."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command, add_device_flag, positive_int
from vqkit.constants import GRID_COLUMNS
from vqkit.wording import counted

HELP = """
Decode code grids into images. CODES is a .npy file holding an (N, 7, 7) integer array (a single
(7, 7) grid also works) with every value in [0, K), K the run's codebook size: what
`vqkit encode` and `vqkit sample --codes-out` write. Anything else is refused with a reason.

--out FILE.png writes a grid of the images; --out FILE.npy an (N, 28, 28) float32 array in [0, 1].

examples:
  vqkit encode runs/RUN test:0-15 --out codes.npy
  vqkit decode runs/RUN codes.npy --out decoded.png
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "decode", "code grids (.npy) back to images", HELP, run)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("codes", metavar="CODES", help=".npy file of (N, 7, 7) code grids")
    parser.add_argument("--out", required=True, help="PNG grid or .npy array of the images")
    parser.add_argument(
        "--columns",
        type=positive_int,
        default=GRID_COLUMNS,
        help=f"PNG grid width (default {GRID_COLUMNS})",
    )
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    from vqkit.checkpoint import load_config, load_model
    from vqkit.codes_io import (
        IMAGE_SUFFIXES,
        decode_codes,
        load_codes,
        require_new_outputs,
        require_suffix,
        write_images,
    )
    from vqkit.devices import resolve_device
    from vqkit.provenance import stamp

    require_suffix(args.out, IMAGE_SUFFIXES, "--out")
    require_new_outputs({"--out": args.out}, [args.codes], args.run_dir)
    config = load_config(args.run_dir)
    codes = load_codes(args.codes, config.model.quantizer.num_codes, config.model.grid_size)
    model = load_model(args.run_dir, device=resolve_device(args.device))
    images = decode_codes(model, codes, config.train.eval_batch_size)
    path = write_images(images, args.out, args.columns, stamp(model))
    print(f"wrote {path} ({counted(codes.shape[0], 'image')})")
    return 0
