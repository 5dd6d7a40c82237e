"""Sampling code grids. Strategies are registered by name, so new ones slot in untouched.

A strategy is a function ``(context, n, generator, **options) -> (n, h, w) int64 codes``.
``context`` gives it the trained model and its run folder (for cached statistics such as code
usage or a trained prior). Register one with ``@register_strategy("name")`` in any module listed
in ``STRATEGY_MODULES``; ``sample_codes`` imports those lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vqkit.errors import VqkitError
from vqkit.model import VQVAE

# Modules whose import registers strategies (kept lazy: the prior pulls in more code).
STRATEGY_MODULES = ("vqkit.generate", "vqkit.prior")


@dataclass
class SamplingContext:
    model: VQVAE
    run_dir: Path | None = None

    @property
    def grid_size(self) -> int:
        return self.model.config.grid_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


Strategy = Callable[..., torch.Tensor]
_STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    def decorate(function: Strategy) -> Strategy:
        _STRATEGIES[name] = function
        return function

    return decorate


def strategies() -> list[str]:
    """Names of every available strategy."""
    for module in STRATEGY_MODULES:
        importlib.import_module(module)
    return sorted(_STRATEGIES)


def sample_codes(
    strategy: str,
    n: int,
    context: SamplingContext,
    generator: torch.Generator | None = None,
    **options,
) -> torch.Tensor:
    """``n`` code grids (n, h, w) int64 drawn with the named strategy."""
    names = strategies()
    if strategy not in _STRATEGIES:
        raise VqkitError(
            f"Unknown sampling strategy '{strategy}'; choose one of: {', '.join(names)}."
        )
    if n < 1:
        raise VqkitError("The number of samples must be at least 1.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return _STRATEGIES[strategy](context, n, generator, **options)


@register_strategy("random")
def _random_codes(context: SamplingContext, n: int, generator: torch.Generator) -> torch.Tensor:
    """Codes drawn uniformly from the whole codebook (dead codes included)."""
    size = context.grid_size
    return torch.randint(0, context.model.num_codes, (n, size, size), generator=generator)
