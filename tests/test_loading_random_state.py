"""Loading what a run saved leaves the caller's random numbers alone.

A model is built before its weights are read, and building draws its throw-away initial
weights from PyTorch's global generator. In a notebook that loads a run between two draws of
its own, the second draw then depended on whether (and how often) a cell loading the run had
run, although nothing vqkit returns depends on those numbers.
"""

from __future__ import annotations

import torch

from vqkit.classifier import ClassifierConfig, load_or_train_classifier
from vqkit.evaluate import evaluate_run
from vqkit.model import VQVAE
from vqkit.prior import PriorConfig, load_prior
from vqkit.prior_training import train_prior

TINY_PRIOR = PriorConfig(channels=8, layers=2, epochs=1, train_limit=64, test_limit=32)
TINY_CLASSIFIER = ClassifierConfig(channels=(4, 8), features=8, epochs=1, train_limit=64)


def draws_after(call) -> torch.Tensor:
    """What the global generator gives after ``call``, seeded as the caller seeded it."""
    torch.manual_seed(1234)
    call()
    return torch.rand(4)


def test_loading_a_run_draws_nothing_from_the_callers_generator(
    gridded_copy, tmp_path, monkeypatch
):
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))
    train_prior(gridded_copy, TINY_PRIOR, device="cpu", progress=False)
    load_or_train_classifier(TINY_CLASSIFIER, device="cpu")  # trained and cached here
    untouched = draws_after(lambda: None)
    loads = {
        "VQVAE.from_run": lambda: VQVAE.from_run(gridded_copy),
        "evaluate_run": lambda: evaluate_run(gridded_copy, device="cpu"),
        "load_prior": lambda: load_prior(gridded_copy),
        "the cached classifier": lambda: load_or_train_classifier(TINY_CLASSIFIER, device="cpu"),
    }
    moved = [name for name, load in loads.items() if not torch.equal(draws_after(load), untouched)]
    assert moved == []
