"""``vqkit interpolate``: a strip of images morphing from one image into another."""

from __future__ import annotations

import argparse

from vqkit.cli.common import (
    add_command,
    add_device_flag,
    note_light_backgrounds,
    seed,
    whole_number_at_least,
)
from vqkit.constants import INTERPOLATION_MODES, MIN_INTERPOLATION_STEPS

HELP = """
Encode two images, walk from the codes of the first to the codes of the second, and write one
PNG row: original A, the decoded steps, original B. An --out ending in .npy gets the same
images as a (steps + 2, 28, 28) float32 array in [0, 1]; --codes-out FILE.npy also writes the
(steps, 7, 7) code grids of the walk.

A and B are a test-set index (17), a training-set index (train:10, as the tutorial picks),
digit:3 (the first test image labelled 3) or the path of a 28x28 PNG (colour is converted to
gray).

modes:
  crossfade  patches switch from A's code to B's in a random order (--seed); a switched patch
             stays switched, so the row goes from exactly A's codes to exactly B's
  wipe       patches switch in reading order, top-left to bottom-right
  random-mask
             the tutorial's recipe: each step takes every patch from B with probability t,
             a fresh random mask per step (--seed), so patches may switch back
  latent     the continuous encoder outputs are blended linearly, then quantized

examples:
  vqkit interpolate runs/RUN --from digit:3 --to digit:8 --out morph.png
  vqkit interpolate runs/RUN --from 0 --to 1 --mode latent --steps 12 --out latent.png
  vqkit interpolate runs/RUN --from mine.png --to digit:1 --mode wipe --out wipe.png
  vqkit interpolate runs/RUN --from train:0 --to train:10 --mode random-mask --out t.png
  vqkit interpolate runs/RUN --from 0 --to 1 --out frames.npy --codes-out walk.npy
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "interpolate", "walk between two images through their code grids", HELP, run
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="A",
        help="first image: an index (17, test:17, train:17), digit:D or a PNG file",
    )
    parser.add_argument(
        "--to", dest="target", required=True, metavar="B", help="last image, as --from"
    )
    parser.add_argument(
        "--steps",
        type=whole_number_at_least(MIN_INTERPOLATION_STEPS),
        default=8,
        help="decoded steps (default 8)",
    )
    parser.add_argument(
        "--mode", choices=INTERPOLATION_MODES, default="crossfade", help="default: crossfade"
    )
    parser.add_argument(
        "--seed", type=seed, default=0, help="seed of crossfade's order and the masks (default 0)"
    )
    parser.add_argument("--out", required=True, help=".png (or .npy) file to write")
    parser.add_argument("--codes-out", help=".npy file for the (steps, 7, 7) code grids")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from vqkit.checkpoint import load_config, load_model
    from vqkit.codes_io import (
        IMAGE_SUFFIXES,
        require_new_outputs,
        require_suffix,
        save_codes,
        write_images,
    )
    from vqkit.devices import resolve_device
    from vqkit.inputs import ImageSet, resolve_image, split_loader
    from vqkit.interpolate import interpolation, interpolation_strip
    from vqkit.provenance import stamp

    require_suffix(args.out, IMAGE_SUFFIXES, "--out")
    if args.codes_out is not None:
        require_suffix(args.codes_out, (".npy",), "--codes-out")
    outputs = {"--out": args.out, "--codes-out": args.codes_out}
    require_new_outputs(outputs, [args.source, args.target], args.run_dir)
    config = load_config(args.run_dir)
    splits = split_loader(config.train.dataset, config.train.data_folder(args.data_dir))
    size = config.model.image_size
    image_a = resolve_image(args.source, splits, size)
    image_b = resolve_image(args.target, splits, size)
    model = load_model(args.run_dir, device=resolve_device(args.device))
    ends = ImageSet(torch.stack([image_a, image_b]), [args.source, args.target])
    note_light_backgrounds(ends, config.train.dataset)  # once nothing is left to refuse
    codes = interpolation(model, image_a, image_b, args.steps, args.mode, args.seed)
    strip = interpolation_strip(model, image_a, image_b, codes)
    settings = {"command": "interpolate", "from": args.source, "to": args.target}
    settings |= {"mode": args.mode, "steps": args.steps, "seed": args.seed}
    made_by = stamp(model, made_with=settings)
    print(f"wrote {write_images(strip, args.out, columns=strip.shape[0], stamp=made_by)}")
    if args.codes_out is not None:
        print(f"wrote {save_codes(codes, args.codes_out)}")
    return 0
