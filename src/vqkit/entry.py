"""The ``vqkit`` program's first step: a Ctrl-C while PyTorch is still loading ends quietly.

Loading the command line imports PyTorch (about 1.5 s on a small CPU). A KeyboardInterrupt
raised inside that import cannot be trusted to arrive: landing in Python's import machinery it
was swallowed ("Exception ignored in ... _get_module_lock"), so the command ran on as if never
interrupted, or it left NumPy half-imported and a later line failed with a traceback. So while
the import runs a Ctrl-C is only recorded, and acted on once the import is done. This module
imports nothing heavy itself (``vqkit/__init__`` loads its names lazily), so its handler is in
place first.
"""

from __future__ import annotations

import signal
import sys

from vqkit.wording import stopped_by


def main() -> int:
    requested: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not where Ctrl-C is ignored (nohup, `&`)
        signal.signal(signal.SIGINT, lambda number, frame: requested.append(number))
    try:
        from vqkit.cli import main as run_command_line
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        if requested:
            raise KeyboardInterrupt
        return run_command_line()
    except KeyboardInterrupt:  # the command line reports the ones it meets once it has started
        print(f"vqkit: {stopped_by(signal.SIGINT)}.", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
