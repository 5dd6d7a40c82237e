"""One torchrun worker that trains with the real `vqkit train` command line and dies abruptly at
a given step: both ranks alike, as a killed job (what survives is the last periodic save), or
with STEP@RANK only that rank, as one lost process (the others must say so)."""

from __future__ import annotations

import os
import sys

from vqkit import training
from vqkit.cli import main

if __name__ == "__main__":
    step, _, rank = sys.argv[1].partition("@")
    crash_at, argv = int(step), sys.argv[2:]
    real_step = training._Run.train_step

    def step_or_die(self, batch, global_step):
        if global_step == crash_at and rank in ("", os.environ["RANK"]):
            os._exit(3)  # no cleanup, no save: like SIGKILL
        return real_step(self, batch, global_step)

    training._Run.train_step = step_or_die
    sys.exit(main(argv))
