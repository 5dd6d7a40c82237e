"""The ``vqkit`` program's first step: a Ctrl-C while PyTorch is still loading ends quietly.

A command imports PyTorch (about 1.5 s on a small CPU) once its command line is parsed (the
parsing itself needs none of it: ``vqkit --help`` and a mistyped flag answer at once). A
KeyboardInterrupt raised inside that import cannot be trusted to arrive: landing in Python's
import machinery it was swallowed ("Exception ignored in ... _get_module_lock"), so the command
ran on as if never interrupted, or it left NumPy half-imported and a later line failed with a
traceback. So while the import runs a Ctrl-C is only recorded (:func:`interrupts_held`), and
acted on once the import is done. This module imports nothing heavy itself (``vqkit/__init__``
loads its names lazily), so its handler is in place first.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from vqkit.wording import stopped_by


@contextlib.contextmanager
def interrupts_held() -> Iterator[list[int]]:
    """Inside, a Ctrl-C (SIGINT) is only recorded in the list yielded; the caller raises
    KeyboardInterrupt for it after the block. Where Ctrl-C is ignored (nohup, ``&``) or already
    handled otherwise, or off the main thread, nothing changes."""
    requested: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    holds = (
        previous is signal.default_int_handler
        and threading.current_thread() is threading.main_thread()
    )
    if holds:
        signal.signal(signal.SIGINT, lambda number, frame: requested.append(number))
    try:
        yield requested
    finally:
        if holds:
            signal.signal(signal.SIGINT, previous)


def main() -> int:
    with interrupts_held() as requested:
        from vqkit.cli import main as run_command_line
    try:
        if requested:
            raise KeyboardInterrupt
        return run_command_line()
    except KeyboardInterrupt:  # the command line reports the ones it meets once it has started
        print(f"vqkit: {stopped_by(signal.SIGINT)}.", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
