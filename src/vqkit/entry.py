"""The ``vqkit`` program's first step: a Ctrl-C while PyTorch is still loading ends quietly.

Loading the command line imports PyTorch (about 1.5 s on a small CPU); an interrupt in that
time would otherwise end in Python's KeyboardInterrupt traceback. This module imports nothing
heavy itself (``vqkit/__init__`` loads its names lazily), so its handler is in place first.
"""

from __future__ import annotations

import signal
import sys

from vqkit.wording import stopped_by


def main() -> int:
    try:
        from vqkit.cli import main as run_command_line

        return run_command_line()
    except KeyboardInterrupt:  # the command line reports the ones it meets once it has started
        print(f"vqkit: {stopped_by(signal.SIGINT)}.", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
