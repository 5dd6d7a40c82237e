"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vqkit.config import SEED_MAX, SEED_RANGE, is_seed
from vqkit.errors import VqkitError
from vqkit.fileio import json_text
from vqkit.wording import stopped_by

if TYPE_CHECKING:  # the training loop imports torch; the CLI's helpers need not
    from vqkit.inputs import ImageSet
    from vqkit.training import TrainingInterrupted


def add_command(
    subparsers, name: str, summary: str, body: str, handler, *, uses_torch: bool = True
) -> argparse.ArgumentParser:
    """A subcommand whose --help reads like a man page: what it does, then examples.
    ``uses_torch=False``: one that only reads files, run without loading PyTorch."""
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=textwrap.dedent(body).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Like the top-level parser: --epoch must not quietly mean --epochs (and a shortened
        # flag before a negative value would get argparse's 'expected one argument').
        allow_abbrev=False,
    )
    parser.set_defaults(handler=handler, uses_torch=uses_torch)
    return parser


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu or cuda (default: auto)"
    )


def add_reliability_flags(group) -> None:
    """--checkpoint-every, --skip-nonfinite and --deterministic of a training command (its
    config checks their values)."""
    group.add_argument(
        "--checkpoint-every",
        type=ascii_int,
        metavar="N",
        help="also save a resumable state every N steps",
    )
    group.add_argument(
        "--skip-nonfinite",
        type=ascii_int,
        metavar="N",
        help="skip up to N steps whose loss is NaN or infinite instead of stopping (default 0)",
    )
    group.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="reproducible kernels: a resumed run matches an uninterrupted one bit for bit",
    )


def ascii_int(text: str) -> int:
    """int(text) for ASCII digits only: int() also reads other scripts' digits ("٣" is 3),
    which no one means on a command line."""
    if not text.isascii():
        raise ValueError(f"not an ASCII number: {text!r}")
    return int(text)


def ascii_float(text: str) -> float:
    """float(text) for ASCII text only, as :func:`ascii_int`."""
    if not text.isascii():
        raise ValueError(f"not an ASCII number: {text!r}")
    return float(text)


# argparse names a type by its __name__: "invalid int value: 'x'", as with int itself.
ascii_int.__name__, ascii_float.__name__ = "int", "float"


def whole_number_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum`` (nor larger than
    ``maximum``) that fits 64 bits (torch fails with a traceback on a wider one)."""

    def parse(text: str) -> int:
        value = ascii_int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {text}")
        if value > SEED_MAX:  # the int64 bound, which seeds share
            raise argparse.ArgumentTypeError(f"must fit a 64-bit integer (< 2**63), not {text}")
        return value

    parse.__name__ = "integer"  # argparse's "invalid integer value: 'abc'" names it so
    return parse


positive_int = whole_number_at_least(1)


def seed(text: str) -> int:
    """A --seed that torch accepts; a wider one would end in a traceback inside torch."""
    try:
        value = ascii_int(text)
    except ValueError:
        value = None
    if not is_seed(value):
        raise argparse.ArgumentTypeError(f"must be {SEED_RANGE}, not {text}")
    return value


def int_list(text: str) -> list[int]:
    """A comma-separated list of whole numbers, e.g. "8,5,5,5"."""
    try:
        return [ascii_int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be whole numbers separated by commas, like 8,5,5,5, not {text!r}"
        ) from None


def print_json(obj) -> None:
    print(json_text(obj, indent=2))


def refuse_resume_conflicts(conflicts: Sequence[str], allowed: Sequence[str]) -> None:
    """One sentence naming the flags (argparse dest names) that --resume cannot take: those
    given with values other than the stored ones, and those that never go with it."""
    if conflicts:
        names = ", ".join("--" + flag.replace("_", "-") for flag in conflicts)
        allowed_names = ", ".join("--" + flag.replace("_", "-") for flag in allowed)
        raise VqkitError(
            f"--resume continues a run with its stored settings, so it cannot take {names} "
            f"(a flag may repeat its stored value; only {allowed_names}, --device, --data-dir "
            "and --quiet may change)."
        )


def say_nothing_was_trained(what: str, why: str, flags: str) -> None:
    """A resume that found its run finished: say so on stderr (the exit status stays 0)."""
    print(
        f"vqkit: {what} had already {why}, so nothing more was trained; give {flags} to "
        "train it further.",
        file=sys.stderr,
    )


def report_interrupted(stop: TrainingInterrupted) -> int:
    """Ctrl-C or SIGTERM stopped a run after saving: say how to continue it (the first process
    of a torchrun job alone); exit status 128 + the signal's number (130, 143), as the shell's."""
    if distributed_rank_is_main():
        outcome = stop.outcome or f"the run is saved, continue it with: {stop.resume_command}"
        print(f"vqkit: {stopped_by(stop.signal_number)}; {outcome}", file=sys.stderr)
    return 128 + stop.signal_number


def distributed_rank_is_main() -> bool:
    """Whether this is the first process of a torchrun job (or no such job): the one that
    prints summaries."""
    return os.environ.get("RANK", "0") == "0"


def note_light_backgrounds(found: ImageSet, dataset: str) -> None:
    """Print, as a note on stderr, which PNG inputs are drawn dark on light for a model of
    light-on-dark images (the command goes on: the user may mean it)."""
    from vqkit.inputs import light_background_note  # torch: only for the commands that read

    note = light_background_note(found, dataset)
    if note is not None:
        print(f"vqkit: note: {note}", file=sys.stderr)
