"""Sampling code grids. Strategies are registered by name, so new ones slot in untouched.

A strategy is a function ``(context, n, generator, **options) -> (n, h, w) int64 codes``.
``context`` gives it the trained model and its run folder (for cached statistics such as code
usage or a trained prior). Register one with ``@register_strategy("name")``: vqkit's own live in
the modules of ``STRATEGY_MODULES``, which ``sample_codes`` imports lazily; one's own, in code
imported first (``vqkit --plugin my_strategies.py sample ...`` on the command line).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqkit import arguments
from vqkit.checkpoint import require_run_model
from vqkit.config import EVAL_BATCH_SIZE
from vqkit.errors import InvalidValue, VqkitError, out_of_memory_said
from vqkit.model import VQVAE

# Modules whose import registers strategies (kept lazy: the prior pulls in more code).
STRATEGY_MODULES = ("vqkit.generate", "vqkit.prior")
# Grids decoded at once by sample_images when the caller gives no batch size: bounds decoder
# memory for large n.
DECODE_BATCH_SIZE = EVAL_BATCH_SIZE


@dataclass
class SamplingContext:
    """What a sampling strategy draws for: a model, and the run folder it came from (which
    holds its prior and code usage) when a strategy needs one."""

    model: VQVAE
    run_dir: Path | None = None
    data_dir: Path | None = None  # where the dataset lives, for strategies that read it
    # The SHA-256 of the prior weights file the 'prior' strategy last drew with (None before).
    prior_sha256: str | None = field(default=None, init=False)

    # Written out (the dataclass keeps a class's own __init__) so that its hints say what it
    # takes, a str as well as a Path; the fields above hold the Paths made of them.
    def __init__(
        self,
        model: VQVAE,
        run_dir: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        # A compiled model (torch.compile) wraps the VQVAE; its config is the wrapped one's.
        unwrapped = getattr(model, "_orig_mod", model)
        arguments.instance(unwrapped, VQVAE, "The model", "VQVAE.from_run(run)")
        run_dir = arguments.path_or_none(run_dir, "The run folder")
        data_dir = arguments.path_or_none(data_dir, "The data folder")
        self.model = model
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.prior_sha256 = None
        if self.run_dir is not None:
            require_run_model(unwrapped, self.run_dir)

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


def registered_strategies() -> dict[str, Strategy]:
    """Every strategy by name, vqkit's own modules imported first (a copy: comparing two tells
    what code imported in between registered)."""
    strategies()
    return dict(_STRATEGIES)


def strategies() -> list[str]:
    """Names of every available strategy."""
    for module in STRATEGY_MODULES:
        importlib.import_module(module)
    return sorted(_STRATEGIES)


def strategy_options(strategy: str) -> set[str] | None:
    """Keyword options a strategy accepts beyond (context, n, generator); None means any."""
    strategies()
    if strategy not in _STRATEGIES:
        return set()
    parameters = list(inspect.signature(_STRATEGIES[strategy]).parameters.values())[3:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def sample_codes(
    strategy: str,
    n: int,
    context: SamplingContext,
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    """``n`` code grids (n, h, w) int64 drawn with the named strategy."""
    names = strategies()
    if not isinstance(strategy, str) or strategy not in _STRATEGIES:
        raise InvalidValue(
            f"Unknown sampling strategy {strategy!r}; choose one of: {', '.join(names)}."
        )
    n = arguments.whole_number(n, "The number of samples", 1)
    arguments.instance(context, SamplingContext, "The sampling context", "SamplingContext(model)")
    if generator is not None:
        arguments.instance(generator, torch.Generator, "The generator", "torch.Generator()")
    accepted = strategy_options(strategy)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise InvalidValue(f"The '{strategy}' strategy takes no option '{unknown[0]}'.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    with out_of_memory_said("a smaller n"):
        codes = _STRATEGIES[strategy](context, n, generator, **options)
    # A strategy of one's own (a plugin) may return anything: say so here, not in a traceback
    # later, nor by writing fewer images than asked for.
    codes = arguments.integers(codes, f"What the '{strategy}' strategy returned")
    size = context.grid_size
    if tuple(codes.shape) != (n, size, size):
        raise VqkitError(
            f"The '{strategy}' strategy returned code grids of shape {tuple(codes.shape)}; "
            f"asked for {n}, it must return ({n}, {size}, {size})."
        )
    return codes


@register_strategy("random")
def _random_codes(context: SamplingContext, n: int, generator: torch.Generator) -> torch.Tensor:
    """Codes drawn uniformly from the whole codebook (dead codes included)."""
    size = context.grid_size
    return torch.randint(0, context.model.num_codes, (n, size, size), generator=generator)


@register_strategy("used")
def _used_codes(
    context: SamplingContext, n: int, generator: torch.Generator, weighted: bool = False
) -> torch.Tensor:
    """Codes drawn only from those the encoder uses on the whole training set.

    Uniform over the used codes, or by their empirical frequency when ``weighted``. The counts
    are cached in the run folder (see :func:`vqkit.usage.code_usage`).
    """
    from vqkit.usage import code_usage, used_codes

    weighted = arguments.switch(weighted, "weighted")
    if context.run_dir is None:
        raise InvalidValue("The 'used' strategy needs the model's run folder to count code usage.")
    counts = code_usage(context.run_dir, context.model, data_dir=context.data_dir)
    size = context.grid_size
    if weighted:
        weights = counts.double()
        picks = torch.multinomial(weights, n * size * size, replacement=True, generator=generator)
        return picks.view(n, size, size)
    used = used_codes(counts)
    index = torch.randint(0, used.numel(), (n, size, size), generator=generator)
    return used[index]


def sample_images(
    context: SamplingContext,
    strategy: str,
    n: int,
    seed: int = 0,
    batch_size: int = DECODE_BATCH_SIZE,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` code grids with a strategy and decode them (in batches of ``batch_size``).

    Returns codes (n, h, w) int64 and images (n, C, H, W) in [0, 1], both on the CPU.
    """
    from vqkit.codes_io import decode_codes

    generator = torch.Generator().manual_seed(arguments.seed(seed))
    codes = sample_codes(strategy, n, context, generator, **options).cpu()
    with out_of_memory_said("a smaller n or batch_size"):  # n images, decoded in batches
        return codes, decode_codes(context.model, codes, batch_size)
