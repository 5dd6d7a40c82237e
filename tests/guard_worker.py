"""One torchrun worker of the two-rank guard test: rank 0 sees a NaN reconstruction loss, rank 1
an infinite quantizer loss, in the same step; each rank prints the sentence its guard raises."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vqkit import distributed
from vqkit.errors import VqkitError
from vqkit.guards import NonFiniteGuard

if __name__ == "__main__":
    eager = sys.argv[1] == "eager"
    context = distributed.setup(torch.device("cpu"))
    bad = torch.tensor(float("nan") if context.rank == 0 else float("inf"))
    fine = torch.tensor(1.0)
    losses = (bad, fine) if context.rank == 0 else (fine, bad)
    guard = NonFiniteGuard(0, torch.device("cpu"), context, Path("nowhere"), eager=eager)
    try:
        guard.step_is_bad(5, *losses)
        guard.check()
    except VqkitError as error:
        print(f"rank {context.rank}: {error}")
    # Both ranks got here: wait for each other before leaving, as a finished run does, so
    # that neither aborts at its exit while the other still talks to it.
    distributed.teardown(context, finished=True)
