"""The ``vqkit`` command line: a thin layer of subcommands over the library's functions.

Each subcommand lives in its own module with a ``register(subparsers)`` function; adding one is
adding a module to ``COMMAND_MODULES``. Nothing runs at import.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vqkit.errors import VqkitError

COMMAND_MODULES = (
    "train",
    "evaluate",
    "reconstruct",
    "sample",
    "interpolate",
    "encode",
    "decode",
    "codebook",
)

DESCRIPTION = """\
vqkit trains Vector-Quantized VAEs (van den Oord et al. 2017) on 28x28 images and works with
their discrete codes: each image becomes a 7x7 grid of integers from a learned codebook.

examples:
  vqkit train --preset efficient            train the small model on MNIST (about a minute)
  vqkit evaluate runs/RUN                   test MSE, PSNR, codebook usage of a run
  vqkit reconstruct runs/RUN --out r.png    originals above their reconstructions
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqkit",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"vqkit.cli.{name.replace('-', '_')}_cmd").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors print one sentence and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except VqkitError as exc:
        print(f"vqkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqkit: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
