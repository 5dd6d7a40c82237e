"""The training loop reads no tensor value back per step (what would stall a GPU), on the CPU.

tests/test_cuda.py checks this with CUDA's sync debugging, but only where a GPU is present.
Here every read of a tensor's value into Python (``aten::_local_scalar_dense``: ``.item()``,
``float()``, ``bool()``) is counted at the dispatcher while the real training loop runs with
the GPU's lazy non-finite guard; four more steps must add no read.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vqkit import prior_loop, training
from vqkit.config import preset_config
from vqkit.guards import NonFiniteGuard
from vqkit.prior import PriorConfig
from vqkit.prior_training import code_grids, train_prior


class HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def reads_per_run(preset: str, folder, steps: tuple[int, ...]) -> list[int]:
    counts = []
    for count in steps:
        config = preset_config(preset)
        config.train = dataclasses.replace(
            config.train, epochs=1, train_limit=64 * count, test_limit=100, batch_size=64
        )
        with HostReads() as reads:
            training.train(config, folder / f"{preset}-{count}", device="cpu", progress=False)
        counts.append(reads.count)
    return counts


def lazy_guard(*args, **kwargs) -> NonFiniteGuard:
    """The guard as it runs on a GPU: it remembers a bad step on the device."""
    return NonFiniteGuard(*args, eager=False, **kwargs)


@pytest.mark.parametrize("preset", ["efficient", "best"])
def test_no_value_is_read_back_per_step_with_the_gpu_guard(preset, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "NonFiniteGuard", lazy_guard)
    four, eight = reads_per_run(preset, tmp_path, (4, 8))
    assert four == eight > 0  # the epoch's end reads its metrics once


def test_the_count_sees_the_cpu_guards_read_per_step(tmp_path):
    # On the CPU the guard looks at every step (a read costs nothing there): one read each.
    four, eight = reads_per_run("efficient", tmp_path, (4, 8))
    assert eight - four == 4


def test_the_prior_loop_reads_no_value_back_per_step_either(small_run, tmp_path, monkeypatch):
    monkeypatch.setattr(prior_loop, "NonFiniteGuard", lazy_guard)
    run_dir = shutil.copytree(small_run.run_dir, tmp_path / "run")
    code_grids(run_dir)  # encoded once, outside the counts
    counts = []
    for steps in (4, 8):
        settings = PriorConfig(
            channels=8, layers=2, epochs=1, batch_size=64, train_limit=64 * steps, test_limit=200
        )
        with HostReads() as reads:
            train_prior(run_dir, settings, device="cpu", progress=False)
        counts.append(reads.count)
    assert counts[0] == counts[1] > 0
