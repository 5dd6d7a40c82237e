"""One torchrun worker of the two-process test: the real `vqkit train` command line, then a dump
of this rank's final weights (outside the run folder) so the test can compare the ranks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch.distributed as dist

from vqkit import training
from vqkit.checkpoint import save_weights
from vqkit.cli import main

if __name__ == "__main__":
    dump_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    results = []
    real_train = training.train

    def keep_result(*args, **kwargs):
        results.append(real_train(*args, **kwargs))
        return results[-1]

    training.train = keep_result  # `vqkit train` imports it when it runs
    code = main(argv)
    assert not dist.is_initialized(), "the process group was left open"
    if code == 0:
        save_weights(dump_dir / f"rank{os.environ['RANK']}.safetensors", results[0].model)
    sys.exit(code)
