"""The ``vqkit`` command line: a thin layer of subcommands over the library's functions.

Each subcommand lives in its own module with a ``register(subparsers)`` function; adding one is
adding a module to ``COMMAND_MODULES``. Nothing runs at import.

Building the parser and parsing import no PyTorch (nor NumPy, PIL, matplotlib): a command
module imports what its work needs inside its handler, and its help and checks read light
modules (vqkit.constants, vqkit.config). So ``vqkit --help``, a command's ``--help`` and a
mistyped flag answer in a fraction of a second, not after the ~2 s PyTorch takes to load.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import signal
import sys
import threading
from typing import NoReturn

import vqkit
from vqkit import distributed, plugins
from vqkit.entry import interrupts_held
from vqkit.errors import OutOfMemory, VqkitError, is_out_of_memory, out_of_memory_sentence
from vqkit.wording import one_line, stopped_by

COMMAND_MODULES = (
    "demo",
    "train",
    "evaluate",
    "reconstruct",
    "encode",
    "decode",
    "codebook",
    "train-prior",
    "sample",
    "interpolate",
    "score",
    "report",
    "runs",
)

DESCRIPTION = """\
vqkit trains Vector-Quantized VAEs (van den Oord et al. 2017) on 28x28 images and works with
their discrete codes: each image becomes a 7x7 grid of integers from a learned codebook.
Every command reads or writes a run folder (runs/DATE-TIME-DATASET-PRESET by default).
"""

EXAMPLES = """examples:
  vqkit demo                                train, sample, score and report in a few minutes
  vqkit train --preset efficient            train the small model on MNIST (about a minute)
  vqkit evaluate runs/RUN                   test MSE, PSNR, codebook usage of a run
  vqkit report runs/RUN                     write runs/RUN/report.html
  vqkit runs                                every run in runs/ with its numbers

Run 'vqkit COMMAND --help' for what a command does, its options and examples.
"""


class OneLineErrors(argparse.ArgumentParser):
    """A mistyped flag or value ends in one line saying what is wrong and where to read more,
    not argparse's whole usage block (26 lines for train) above it."""

    command_parsers: dict[str, argparse.ArgumentParser]  # the top level's, by command name

    def error(self, message: str) -> NoReturn:
        sentence = f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help').\n"
        self.exit(2, sentence if distributed.prints_refusals() else None)


def build_parser() -> OneLineErrors:
    parser = OneLineErrors(
        prog="vqkit",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # --plugin is taken out before parsing; an abbreviation of it would be accepted here
        # and ignored.
        allow_abbrev=False,
    )
    # The package's own version: also right when run from a source tree (PYTHONPATH=src)
    # that no installed distribution describes.
    parser.add_argument("--version", action="version", version=f"vqkit {vqkit.__version__}")
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="FILE.py|MODULE",
        help="import this code first, for a quantizer or sampling strategy of your own it "
        "registers (repeatable)",
    )
    subparsers = parser.add_subparsers(
        title="the pipeline, in order",
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=OneLineErrors,
    )
    for name in COMMAND_MODULES:
        importlib.import_module(f"vqkit.cli.{name.replace('-', '_')}_cmd").register(subparsers)
    parser.command_parsers = subparsers.choices
    return parser


# A value that starts with a dash but is a number (or a list of them): -1e-3, -.5, -inf, -3,5.
NEGATIVE_VALUE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def attach_negative_values(parser: OneLineErrors, argv: list[str]) -> list[str]:
    """``argv`` with ``--flag -1e-3`` written as ``--flag=-1e-3`` where the flag takes a value.

    argparse reads only plain negative numbers (-5, -0.5) as values; -1e-3 or -3,5 it takes for
    an unknown flag and says the flag "expected one argument", which the user did give. Written
    with "=" it reaches the flag's own check and its sentence ("must be > 0").
    """
    command = next((token for token in argv if token in parser.command_parsers), None)
    if command is None:
        return argv
    flags = parser.command_parsers[command]._option_string_actions
    joined: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":  # what follows is positional, as the user wrote it
            joined += ["--", *tokens]
            break
        action = flags.get(token)
        takes_a_value = action is not None and action.nargs is None and action.const is None
        if takes_a_value and action.option_strings:
            value = next(tokens, None)
            if value is not None and NEGATIVE_VALUE.match(value) and value not in flags:
                joined.append(f"{token}={value}")
                continue
            joined.append(token)
            if value is not None:
                joined.append(value)
            continue
        joined.append(token)
    return joined


def parse_command_line(parser: OneLineErrors, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that a flag the command does not have is refused by that
    command's parser, so the message points at its own --help (argparse's top level would)."""
    if argv is not None:
        argv = attach_negative_values(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.command_parsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


# What each command can ask for less of, for the out-of-memory sentence.
LESS_AT_ONCE = {
    "train": "a smaller --batch-size or --eval-batch-size, or a smaller model (--hidden-dim, "
    "--num-embeddings, --embedding-dim)",
    "train-prior": "a smaller --batch-size, --channels or --layers",
    "sample": "a smaller --n",
    "score": "a smaller --n",
    "reconstruct": "a smaller --n",
    "codebook": "fewer --images",
    "interpolate": "fewer --steps",
    "demo": "fewer --score-samples",
}


def symlink_loop_message(exc: BaseException) -> str | None:
    """One sentence for a path whose symbolic links point at each other (pathlib's resolve
    raises RuntimeError, the system calls ELOOP), else None."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        where = exc.filename
    elif isinstance(exc, RuntimeError) and str(exc).startswith(_PATHLIB_LOOP):
        where = str(exc)[len(_PATHLIB_LOOP) :].strip("'\"")
    else:
        return None
    return f"The path '{where}' goes through symbolic links that point at each other; fix them."


_PATHLIB_LOOP = "Symlink loop from "


def system_limit_message(exc: BaseException) -> str | None:
    """One sentence for a path with a name longer than the file system allows, or for output
    that could not be written for want of space (``vqkit runs > /dev/full``), else None."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno == errno.ENAMETOOLONG:
        where = f"The path '{exc.filename}'" if exc.filename else "A path"
        return f"{where} is too long: a name in it is longer than the file system allows."
    if exc.errno == errno.ENOSPC and not exc.filename:  # a file's own write names the file
        return "vqkit could not write its output: no space is left on the device."
    return None


def permission_message(exc: BaseException) -> str | None:
    """One sentence for a file or folder this user may not read or write (wherever the command
    met it: a run folder, a data folder, a cache), else None."""
    if not isinstance(exc, PermissionError):
        return None
    where = f"'{exc.filename}'" if exc.filename else "a file it needs"
    return f"vqkit may not use {where} (permission denied); check its permissions."


def out_of_memory_message(exc: BaseException, command: str | None = None) -> str | None:
    """One sentence for an allocation that failed on the CPU or the GPU, else None."""
    if not is_out_of_memory(exc):
        return None
    return out_of_memory_sentence(str(exc), LESS_AT_ONCE.get(command or ""))


def take_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """The --plugin values, wherever they stand, and the command line without them: plugins
    are imported before anything is parsed, so the flag may follow the command too."""
    specs, rest = [], []
    tokens = iter(argv)
    for token in tokens:
        if token == "--plugin":
            specs.append(next(tokens, ""))
        elif token.startswith("--plugin="):
            specs.append(token.split("=", 1)[1])
        else:
            rest.append(token)
    return specs, rest


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; user errors print one sentence and exit with status 2.

    As the program (no ``argv``), a Ctrl-C that lands once the command has ended is ignored:
    its files are written and its summary printed, and Python's shutdown would otherwise end
    the process killed by SIGINT (status -2, without a word).
    """
    if sys.stdout is None:  # started with stdout closed (`vqkit runs >&-`): nothing to show
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - open for the process's life
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # Under an ASCII or Latin-1 locale (or PYTHONIOENCODING=ascii) a run folder named in
        # another script ended the command in a UnicodeEncodeError after its work was done:
        # such characters are written escaped, as Python writes them to stderr.
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        status = run_command(argv)
        sys.stdout.flush()  # here, not at exit: a reader that left is then caught below
        return status
    except BrokenPipeError:
        # The reader of the output left (`vqkit runs | head -3`): it has what it wanted. The
        # status is that of a process SIGPIPE ended, as the shell reports one.
        _drop_output()
        return 128 + signal.SIGPIPE
    except OSError as exc:  # the output's last flush failed (`vqkit runs > /dev/full`)
        message = system_limit_message(exc)
        if message is None:
            raise
        _drop_output()
        _print_error(message)
        return 2
    finally:
        if argv is None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _print_error(message: object) -> None:
    print(f"vqkit: error: {one_line(str(message))}", file=sys.stderr)


def _drop_output() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of output that cannot
    be written does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)  # main() may be called again in this process


def run_command(argv: list[str] | None) -> int:
    """:func:`main` itself: the command line (``sys.argv`` when None) run to an exit status."""
    specs, argv = take_plugins(sys.argv[1:] if argv is None else list(argv))
    # Until PyTorch is loaded a Ctrl-C is only recorded (see vqkit.entry): a plugin may import
    # it, and so may checking a --strategy (the registry's modules); the command's work needs it.
    with interrupts_held() as requested:
        try:
            for spec in specs:
                plugins.import_plugin(spec)
        except VqkitError as exc:
            if distributed.prints_refusals():
                _print_error(exc)
            return 2
        args = parse_command_line(build_parser(), argv)
        # Every command but `vqkit runs` (folders read only: 0.3 s instead of 3) needs PyTorch.
        if args.uses_torch:  # set, as the handler is, by add_command for every command
            import torch  # noqa: F401 - loaded here, whole, rather than inside the handler
    try:
        if requested:
            raise KeyboardInterrupt
        distributed.require_one_process(args.command)
        return int(args.handler(args) or 0)
    except VqkitError as exc:
        sentence = str(exc)
        if isinstance(exc, OutOfMemory):  # a flag to lower, not a Python argument
            sentence = out_of_memory_sentence(exc.failure, LESS_AT_ONCE.get(args.command))
        if distributed.prints_refusals(exc):  # one line for a torchrun job's identical refusals
            _print_error(sentence)
        return 2
    except (MemoryError, RuntimeError, OSError) as exc:
        message = symlink_loop_message(exc) or permission_message(exc) or system_limit_message(exc)
        if message is None and not isinstance(exc, OSError):  # the others are torch's errors
            message = out_of_memory_message(exc, args.command) or distributed.lost_process_message(
                exc
            )
        if message is None:
            raise  # a bug, not a user's mistake: the traceback is what to report
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not exc.filename:
            _drop_output()  # the output itself could not be written
        _print_error(message)
        return 2
    except KeyboardInterrupt as exc:  # a training stop the command itself does not report (demo)
        number = getattr(exc, "signal_number", signal.SIGINT)
        print(f"vqkit: {stopped_by(number)}.", file=sys.stderr)
        return 128 + number


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
