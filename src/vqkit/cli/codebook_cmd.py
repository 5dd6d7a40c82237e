"""``vqkit codebook``: figures of how a run uses its codebook."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqkit.cli.common import add_command, add_device_flag, whole_number_at_least
from vqkit.constants import CODEMAP_IMAGES, MAX_CODEMAP_IMAGES
from vqkit.errors import VqkitError

HELP = """
Write four PNGs into a folder:
  codebook_usage.png    how often each code is chosen over the whole training set, most used
                        first; dead codes (never chosen) are marked in red
  codebook_atlas.png    what each used code "paints": a 7x7 grid filled with that one code,
                        decoded; most used first, each tile labelled with its code index
  codebook_exemplars.png
                        where the encoder chooses each used code: four patches of the first
                        1,000 test images around cells holding it (the cell bright in the
                        middle, a dimmed cell of margin around it; blank where fewer images
                        hold it)
                        (the atlas and the exemplars show the 1,024 most used codes when more
                        are used)
  codebook_codemap.png  a few test images with their 7x7 code indices written over them

The usage counts are cached in the run folder as code_usage.json (also used by
`vqkit sample --strategy used`).

examples:
  vqkit codebook runs/RUN --out runs/RUN/figures/
  vqkit codebook runs/RUN --out figs/ --images 6
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "codebook",
        "codebook health: usage histogram, dead codes, code atlas",
        HELP,
        run,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", required=True, help="folder for the four PNGs")
    parser.add_argument(
        "--images",
        type=whole_number_at_least(1, MAX_CODEMAP_IMAGES),
        default=CODEMAP_IMAGES,
        help=f"test images in the code map, 1 to {MAX_CODEMAP_IMAGES} (default {CODEMAP_IMAGES})",
    )
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    from vqkit.checkpoint import load_config, load_model
    from vqkit.codebook_exemplars import EXEMPLAR_IMAGES
    from vqkit.codebook_view import MAX_TILED_CODES, write_codebook_figures
    from vqkit.codes_io import IMAGE_SUFFIXES
    from vqkit.data import load_split
    from vqkit.devices import resolve_device
    from vqkit.provenance import stamp
    from vqkit.usage import code_usage

    if not args.out.strip():  # Path("") is the current folder, which nobody asked for
        raise VqkitError("--out needs a folder for the figures; it is empty.")
    config = load_config(args.run_dir)
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # refused before minutes of counting codes
        raise VqkitError(f"Cannot use '{out}' as a folder: a file of that name exists.")
    if not out.exists() and out.suffix.lower() in IMAGE_SUFFIXES:  # as other commands' --out
        raise VqkitError(
            f"--out is the folder for the codebook's four PNGs, and '{out}' names a file; give "
            f"a folder (e.g. '{out.with_suffix('')}')."
        )
    model = load_model(args.run_dir, device=resolve_device(args.device))
    counts = code_usage(args.run_dir, model, data_dir=args.data_dir)
    test = load_split(config.train.dataset, "test", config.train.data_folder(args.data_dir))
    test_images = test.images[: args.images]
    made_by = stamp(model)
    searched = test.images[:EXEMPLAR_IMAGES]
    figures = write_codebook_figures(
        model, counts, test_images, args.out, made_by, exemplar_images=searched
    )
    used = int((counts > 0).sum())
    print(f"codes used: {used} of {counts.numel()} on the training set")
    if used > MAX_TILED_CODES:
        print(f"the atlas and the exemplars show the {MAX_TILED_CODES:,} most used codes")
    for path in figures.paths():
        print(f"wrote {path}")
    return 0
