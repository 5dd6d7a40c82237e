"""One torchrun worker that trains with the real `vqkit train` command line and, on one rank
only, sends itself a stop signal before a given step: the other rank never sees a signal, so
both stopping after the same step shows that the ranks agree on it.

A signal name ending in ``+again`` sends the signalled rank the signal a second time as the job
leaves its process group, the moment a second Ctrl-C or torchrun's own copy of a scheduler's
SIGTERM may land in."""

from __future__ import annotations

import os
import signal
import sys

from vqkit import distributed, training
from vqkit.cli import main

if __name__ == "__main__":
    rank, signal_name, at_step, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    signal_name, _, again = signal_name.partition("+")
    signalled = os.environ["RANK"] == rank
    real_step, real_teardown = training._Run.train_step, distributed.teardown

    def step_signalled(self, batch, global_step):
        if global_step == at_step and signalled:
            os.kill(os.getpid(), getattr(signal, signal_name))
        return real_step(self, batch, global_step)

    def teardown_signalled(*args, **kwargs):
        if again and signalled:
            os.kill(os.getpid(), getattr(signal, signal_name))
        return real_teardown(*args, **kwargs)

    training._Run.train_step = step_signalled
    distributed.teardown = teardown_signalled
    sys.exit(main(argv))
