"""Shared fixtures: one small real training run that many tests reuse."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vqkit.config import preset_config
from vqkit.training import TrainResult, train

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> TrainResult:
    """The efficient model trained 1 epoch on 4000 MNIST images (a few seconds on 2 cores).

    A higher learning rate and smaller batches than the preset's give it enough steps to learn
    recognisable reconstructions (test MSE about 0.03 against 0.26 untrained).

    Tests must not modify this folder; copy it (shutil.copytree) when a test needs to write.
    """
    config = preset_config("efficient")
    config.train.epochs = 1
    config.train.train_limit = 4000
    config.train.batch_size = 64
    config.train.lr = 3e-3
    config.train.test_limit = 500
    run_dir = tmp_path_factory.mktemp("small_run")
    return train(config, run_dir, device="cpu", progress=False)


@pytest.fixture(scope="session")
def usage_run(small_run, tmp_path_factory):
    """A copy of ``small_run`` whose code_usage.json (a pass over all 60000 training images) is
    computed once per session; returns (run_dir, counts). Copy it again before writing into it.
    """
    import shutil

    from vqkit.usage import code_usage

    run_dir = tmp_path_factory.mktemp("usage_run") / "run"
    shutil.copytree(small_run.run_dir, run_dir)
    return run_dir, code_usage(run_dir, small_run.model)


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    """A writable copy of ``small_run``'s folder, for a test that changes or damages it."""
    return Path(shutil.copytree(small_run.run_dir, tmp_path / "run"))


@pytest.fixture(scope="session")
def gridded_run(small_run, tmp_path_factory) -> Path:
    """A copy of ``small_run`` whose code grids of the whole train and test splits (the 70,000
    images train-prior encodes before it trains) are cached, encoded once per session, for tests
    about what a prior's training does rather than its encoding. Copy it before writing."""
    from vqkit.prior_training import code_grids

    run_dir = Path(shutil.copytree(small_run.run_dir, tmp_path_factory.mktemp("gridded") / "run"))
    code_grids(run_dir, small_run.model)
    return run_dir


@pytest.fixture
def gridded_copy(gridded_run, tmp_path) -> Path:
    """A writable copy of ``gridded_run``: train-prior on it starts training at once."""
    return Path(shutil.copytree(gridded_run, tmp_path / "run"))
