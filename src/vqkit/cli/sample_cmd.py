"""``vqkit sample``: new images from code grids drawn by a sampling strategy."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqkit.cli.common import (
    add_command,
    add_device_flag,
    ascii_float,
    ascii_int,
    positive_int,
    seed,
)
from vqkit.constants import GRID_COLUMNS
from vqkit.errors import VqkitError

HELP = """
Draw 7x7 code grids with a sampling strategy and decode them into images.

strategies:
  random    every code of the codebook equally likely (dead codes too: mostly noise)
  used      only codes the encoder uses on the training set; --weighted draws them by how
            often they are used. The counts are computed once over the whole training set and
            cached in the run folder as code_usage.json.
  Other strategies (such as a trained prior) take their own options: --digit, --temperature,
  --top-k are passed to the strategy only when given.

--out FILE.png writes a grid of the samples; --out FILE.npy writes the images as an
(n, 28, 28) float32 array in [0, 1]; --codes-out FILE.npy also writes the (n, 7, 7) code grids.

examples:
  vqkit sample runs/RUN --strategy random --out random.png
  vqkit sample runs/RUN --strategy used --weighted --n 16 --seed 1 --out used.png
  vqkit sample runs/RUN --strategy used --out samples.npy --codes-out codes.npy
"""

# Strategy options: argparse destination -> flag shown in errors. Each is forwarded only when
# given, so a strategy added later needs no change here.
OPTION_FLAGS = {
    "weighted": "--weighted",
    "digit": "--digit",
    "temperature": "--temperature",
    "top_k": "--top-k",
}


class StrategyNames:
    """--strategy's choices, read from the registry (vqkit.generate.strategies) only when
    argparse checks a value or shows them: the strategies' modules import PyTorch, which
    `vqkit sample --out` without a run folder, for one, has no need to wait for."""

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())

    @staticmethod
    def _names() -> list[str]:
        from vqkit.generate import strategies

        return strategies()


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "sample", "new images from sampled code grids (random, used, prior)", HELP, run
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    # The metavar only while argparse checks it: with none, the help shows the choices as
    # {prior,random,used}, read when it is shown.
    strategy = parser.add_argument(
        "--strategy", choices=StrategyNames(), required=True, metavar="STRATEGY"
    )
    strategy.metavar = None
    parser.add_argument("--n", type=positive_int, default=64, help="how many (default 64)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="PNG grid or .npy array of the images")
    parser.add_argument("--codes-out", help=".npy file for the (n, 7, 7) code grids")
    parser.add_argument(
        "--columns",
        type=positive_int,
        help=f"PNG grid width (default {GRID_COLUMNS}; a conditional prior's mix of classes: "
        "one column per class, so each column is one class)",
    )
    options = parser.add_argument_group("strategy options (passed on only when given)")
    options.add_argument(
        "--weighted",
        action="store_true",
        default=None,
        help="draw codes by how often they are used",
    )
    options.add_argument("--digit", type=ascii_int, help="class to sample (conditional strategies)")
    options.add_argument("--temperature", type=ascii_float, help="sampling temperature")
    options.add_argument(
        "--top-k",
        type=positive_int,
        help="sample among the k likeliest codes (k at least the codebook size: all of them)",
    )
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def strategy_kwargs(args: argparse.Namespace) -> dict:
    """The strategy options given on the command line, checked against what the strategy takes."""
    from vqkit.generate import strategy_options

    accepted = strategy_options(args.strategy)
    given = {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}
    for name in given:
        if accepted is not None and name not in accepted:
            flag = OPTION_FLAGS[name]
            raise VqkitError(f"{flag} does not apply to the '{args.strategy}' strategy.")
    return given


def run(args: argparse.Namespace) -> int:
    from vqkit.checkpoint import load_config, load_model
    from vqkit.codes_io import (
        IMAGE_SUFFIXES,
        require_new_outputs,
        require_suffix,
        save_codes,
        write_images,
    )
    from vqkit.devices import resolve_device
    from vqkit.generate import SamplingContext, sample_images
    from vqkit.prior import class_mix_classes, sample_grid_columns
    from vqkit.provenance import stamp
    from vqkit.usage import code_usage

    require_suffix(args.out, IMAGE_SUFFIXES, "--out")
    if args.codes_out is not None:
        require_suffix(args.codes_out, (".npy",), "--codes-out")
    require_new_outputs({"--out": args.out, "--codes-out": args.codes_out}, run_dir=args.run_dir)
    options = strategy_kwargs(args)
    config = load_config(args.run_dir)
    batch_size = config.train.eval_batch_size
    if args.data_dir is not None:  # refused as a typo even where the strategy reads no data
        config.train.data_folder(args.data_dir)
    model = load_model(args.run_dir, device=resolve_device(args.device))
    data_dir = Path(args.data_dir) if args.data_dir else None
    context = SamplingContext(model, Path(args.run_dir), data_dir)
    codes, images = sample_images(
        context, args.strategy, args.n, args.seed, batch_size=batch_size, **options
    )
    settings = {"command": "sample", "strategy": args.strategy, "n": args.n, "seed": args.seed}
    made_by = stamp(model, prior_sha256=context.prior_sha256, made_with=settings | options)
    if args.strategy == "used":  # the tutorial's "found N used codes out of K"
        counts = code_usage(context.run_dir, model, data_dir=data_dir)  # cached by the draw
        drawn = "by their frequency" if options.get("weighted") else "uniformly"
        print(
            f"drew {drawn} from the {int((counts > 0).sum())} codes of {model.num_codes} that "
            "the encoder uses on the training set"
        )
    digit = options.get("digit")
    columns = args.columns or sample_grid_columns(args.run_dir, args.strategy, digit)
    classes = class_mix_classes(args.run_dir, args.strategy, digit)
    if classes is not None:  # the PNG has no labels: say how the classes are laid out
        where = (
            "column c holds class c"
            if columns == classes
            else f"sample i (row by row) has class i mod {classes}"
        )
        print(f"a mix of the prior's {classes} classes: {where}")
    print(f"wrote {write_images(images, args.out, columns, made_by)}")
    if args.codes_out is not None:
        print(f"wrote {save_codes(codes, args.codes_out)}")
    return 0
