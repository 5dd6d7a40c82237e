"""One torchrun worker of a run whose non-finite guard is lazy, as on a GPU without
--skip-nonfinite, with a progress bar on rank 0 alone, as from a terminal."""

from __future__ import annotations

import os
import sys

from vqkit import guards
from vqkit.config import preset_config
from vqkit.training import train

if __name__ == "__main__":
    eager_init = guards.NonFiniteGuard.__init__

    def lazy_init(self, *args, eager=None, **kwargs):
        eager_init(self, *args, eager=False, **kwargs)

    guards.NonFiniteGuard.__init__ = lazy_init
    config = preset_config("efficient")
    config.train.epochs, config.train.batch_size = 1, 16
    config.train.train_limit, config.train.test_limit = 512, 64  # 32 steps: past a bar refresh
    train(config, sys.argv[1], device="cpu", progress=os.environ["RANK"] == "0")
