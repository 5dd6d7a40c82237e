"""One torchrun worker that trains with the real `vqkit train` command line and, on one rank
only, sends itself a stop signal before a given step: the other rank never sees a signal, so
both stopping after the same step shows that the ranks agree on it."""

from __future__ import annotations

import os
import signal
import sys

from vqkit import training
from vqkit.cli import main

if __name__ == "__main__":
    rank, signal_name, at_step, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    real_step = training._Run.train_step

    def step_signalled(self, batch, global_step):
        if global_step == at_step and os.environ["RANK"] == rank:
            os.kill(os.getpid(), getattr(signal, signal_name))
        return real_step(self, batch, global_step)

    training._Run.train_step = step_signalled
    sys.exit(main(argv))
