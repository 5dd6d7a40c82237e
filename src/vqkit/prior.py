"""Gated PixelCNN (van den Oord et al. 2016) over the 7×7 grids of code indices.

Two stacks of causal convolutions remove the blind spot of a masked PixelCNN:

* the **vertical** stack sees every row at or above the current one (kernel ``(k//2+1, k)``,
  padded on top and both sides). Its features reach the horizontal stack only after a shift down
  by one row, so a position sees only rows strictly above it;
* the **horizontal** stack sees the current row up to the current column (kernel ``(1, k//2+1)``,
  padded on the left). Its first layer shifts its input right by one so a position never sees
  its own code ("mask A"); later layers include the current column ("mask B") and are residual.

With L layers and s = k//2 a position sees up to L·s+1 rows above it, L·s columns to either side,
and L·s+1 columns to its left on its own row: a finite field without a blind spot. The defaults
(L = 7, k = 3) reach every earlier position of a 7×7 grid.

Each layer gates ``tanh(a) · sigmoid(b)``; a class label, when the prior is conditional, adds a
learned bias inside every gate of both stacks.

Because every convolution only looks up or left, the features of row ``r`` never depend on rows
below it. The sampler uses that: per row it runs the vertical stack once on the rows above, then
the horizontal stack on the single current row, cropped to the columns sampled so far (see
:func:`sample_prior`). ``tests/test_prior.py`` checks both the causality (exact zero gradients)
and that the cropped computation gives the same logits as the full forward pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit import arguments, runfiles
from vqkit.checkpoint import (
    load_config,
    load_tensors_into,
    prior_digest,
    prior_is_stale,
    read_tensors,
    run_path,
)

# PriorConfig lives with the other settings, free of PyTorch (the command line reads its
# defaults while it parses); these names are re-exported here, where they used to be defined.
from vqkit.config import MAX_PRIOR_KERNEL as MAX_PRIOR_KERNEL
from vqkit.config import MAX_PRIOR_LAYERS as MAX_PRIOR_LAYERS
from vqkit.config import PriorConfig
from vqkit.devices import built_for_saved_weights, evaluation_mode
from vqkit.errors import InvalidValue, VqkitError, refused_file
from vqkit.fileio import read_json_object, write_json_atomic
from vqkit.generate import SamplingContext, register_strategy
from vqkit.images import GRID_COLUMNS
from vqkit.prior_status import incomplete_prior as incomplete_prior
from vqkit.prior_status import unfinished_prior as unfinished_prior

# Smallest value fed to a logarithm in the Gumbel noise.
TINY = 1e-20


def gate(x: torch.Tensor) -> torch.Tensor:
    """(B, 2C, H, W) -> (B, C, H, W): tanh of the first half times sigmoid of the second."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row one step down (zeros enter on top): row r then holds row r-1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """Move every column one step right (zeros enter on the left)."""
    return F.pad(x, (1, 0))[:, :, :, :-1]


class GatedLayer(nn.Module):
    """One layer of both stacks; ``first`` hides the current position from the horizontal one."""

    def __init__(self, config: PriorConfig, first: bool) -> None:
        super().__init__()
        c, k = config.channels, config.kernel_size
        self.first = first
        # Not 'half': that would hide nn.Module.half(), and layer.half() would call an int.
        self.reach = k // 2
        self.v_conv = nn.Conv2d(c, 2 * c, (self.reach + 1, k))
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_conv = nn.Conv2d(c, 2 * c, (1, self.reach + 1))
        self.h_out = nn.Conv2d(c, c, 1)
        self.dropout = nn.Dropout(config.dropout)

    def vertical(
        self, v: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v (B, C, H, W) -> (next v (B, C, H, W), its contribution to h (B, 2C, H, W)).

        Row r of both outputs depends on rows <= r of ``v`` only; the contribution must still be
        shifted down one row before it is added to the horizontal stack.
        """
        pre = self.v_conv(F.pad(v, (self.reach, self.reach, self.reach, 0)))
        to_h = self.v_to_h(pre)
        if cond is not None:
            pre = pre + cond
        return gate(pre), to_h

    def horizontal(
        self, h: torch.Tensor, from_v: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """h (B, C, H, W) and the down-shifted vertical contribution (B, 2C, H, W) -> next h."""
        source = shift_right(h) if self.first else h
        pre = self.h_conv(F.pad(source, (self.reach, 0))) + from_v
        if cond is not None:
            pre = pre + cond
        out = self.h_out(self.dropout(gate(pre)))
        return out if self.first else h + out


class PixelCNNPrior(nn.Module):
    """codes (B, H, W) int64 [+ labels (B,)] -> logits (B, K, H, W) of p(code_i | codes_<i)."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        self.weights_sha256: str | None = None  # the weights file it was loaded from (load_prior)
        c = config.channels
        self.embedding = nn.Embedding(config.num_codes, c)
        self.layers = nn.ModuleList(GatedLayer(config, i == 0) for i in range(config.layers))
        # One learned bias per class for each gate: 2C for the vertical, 2C for the horizontal.
        self.label_bias = (
            nn.Embedding(config.num_classes, config.layers * 4 * c) if config.conditional else None
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, config.num_codes, 1)
        )

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, C, H, W)."""
        return self.embedding(codes).permute(0, 3, 1, 2)

    def conditions(self, labels: torch.Tensor | None) -> list[tuple[Any, Any]]:
        """Per layer, the (vertical, horizontal) gate biases (B, 2C, 1, 1) of the labels."""
        if self.label_bias is None:
            if labels is not None:
                raise InvalidValue("This prior is unconditional; it cannot be given a class label.")
            return [(None, None)] * self.config.layers
        if labels is None:
            raise InvalidValue("This prior is conditional; it needs a class label per sample.")
        per_gate = 2 * self.config.channels
        bias = self.label_bias(labels).view(len(labels), self.config.layers, 2, per_gate, 1, 1)
        return [(bias[:, i, 0], bias[:, i, 1]) for i in range(self.config.layers)]

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Code grids (B, H, W) (and a conditional prior's labels (B,)) -> logits (B, K, H, W)
        of every position given the positions before it in raster order."""
        return self.forward_embedded(self.embed(codes), labels)

    def forward_embedded(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded codes (B, C, H, W) -> logits (B, K, H, W) (teacher forcing, all positions)."""
        v, h = x, x
        for layer, (cond_v, cond_h) in zip(self.layers, self.conditions(labels), strict=True):
            v, to_h = layer.vertical(v, cond_v)
            h = layer.horizontal(h, shift_down(to_h), cond_h)
        return self.head(h)

    def vertical_context(
        self, rows_above: torch.Tensor, conditions: list[tuple[Any, Any]]
    ) -> list[torch.Tensor]:
        """Codes of the rows above (B, r, W) -> per layer, what row r's h receives (B, 2C, 1, W).

        For r = 0 nothing lies above, and the (zero) shifted-in row is returned.
        """
        batch, rows, width = rows_above.shape
        c = self.config.channels
        if rows == 0:
            zero = self.embedding.weight.new_zeros(batch, 2 * c, 1, width)
            return [zero] * self.config.layers
        v, context = self.embed(rows_above), []
        for layer, (cond_v, _) in zip(self.layers, conditions, strict=True):
            v, to_h = layer.vertical(v, cond_v)
            context.append(to_h[:, :, -1:, :])
        return context

    def row_logits(
        self,
        row: torch.Tensor,
        context: list[torch.Tensor],
        conditions: list[tuple[Any, Any]],
    ) -> torch.Tensor:
        """Codes of the current row so far (B, 1, w) -> logits (B, K, 1, w) of that row."""
        width = row.shape[-1]
        h = self.embed(row)
        for layer, from_v, (_, cond_h) in zip(self.layers, context, conditions, strict=True):
            h = layer.horizontal(h, from_v[..., :width], cond_h)
        return self.head(h)


def restrict_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """(B, K) logits divided by the temperature, with all but the ``top_k`` largest at -inf.

    Logits equal to the k-th largest are all kept, so exact ties at the boundary keep more than
    k codes rather than an arbitrary k of them.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits / temperature


def draw(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of (B, K) logits, by the Gumbel-max trick with the given generator."""
    uniform = torch.rand(logits.shape, generator=generator, device=generator.device)
    # u is in [0, 1): clamping keeps both logarithms finite (u = 0 would give -inf noise).
    exponential = (-torch.log(uniform.clamp_min(TINY))).clamp_min(TINY)
    gumbel = -torch.log(exponential)
    return (logits + gumbel.to(logits.device)).argmax(dim=-1)


@torch.no_grad()
def sample_prior(
    prior: PixelCNNPrior,
    n: int,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """``n`` code grids (n, H, W) int64, drawn position by position in raster order.

    All samples advance together: 49 steps for a 7×7 grid. At row r, the vertical stack runs once
    on rows < r (cropping the rows below, which cannot influence row r), then each of the W
    steps runs the horizontal stack on row r cropped to the columns <= the current one. So one
    sample costs the vertical stack over H(H-1)/2 rows and the horizontal stack over
    H·W(W+1)/2 positions, instead of H·W full-grid passes.
    """
    n = arguments.whole_number(n, "The number of grids to sample (n)", 0)
    arguments.instance(generator, torch.Generator, "The generator", "torch.Generator()")
    temperature = arguments.real_number(temperature, "The temperature (--temperature)")
    if not math.isfinite(temperature) or temperature <= 0:
        raise InvalidValue("The temperature must be a finite number > 0 (--temperature).")
    if top_k is not None:
        top_k = arguments.whole_number(top_k, "The top-k cut (--top-k)", 1)
    size = prior.config.grid_size
    device = prior.embedding.weight.device
    codes = torch.zeros(n, size, size, dtype=torch.long, device=device)
    if labels is not None and prior.label_bias is not None:  # an unconditional prior refuses any
        labels = _labels(prior, labels, n, device)
    conditions = prior.conditions(labels)
    if n == 0:
        return codes
    with evaluation_mode(prior):
        for r in range(size):
            context = prior.vertical_context(codes[:, :r], conditions)
            for c in range(size):
                logits = prior.row_logits(codes[:, r : r + 1, : c + 1], context, conditions)
                codes[:, r, c] = draw(
                    restrict_logits(logits[:, :, 0, c], temperature, top_k), generator
                )
    return codes


def _labels(prior: PixelCNNPrior, labels: Any, n: int, device: torch.device) -> torch.Tensor:
    """A conditional prior's labels as (n,) int64 on ``device``, or one sentence."""
    labels = arguments.integers(labels, "The labels", arrays=True)
    if tuple(labels.shape) != (n,):
        raise InvalidValue(
            f"The labels must have the shape ({n},), one per grid; these have "
            f"{tuple(labels.shape)}."
        )
    classes = prior.config.num_classes
    if n and not (0 <= int(labels.min()) and int(labels.max()) < classes):
        raise InvalidValue(
            f"The labels must lie in 0 to {classes - 1} for this prior's {classes} classes; "
            f"these range from {int(labels.min())} to {int(labels.max())}."
        )
    return labels.to(device, torch.long)


def save_prior_config(run_dir: str | Path, config: PriorConfig) -> None:
    write_json_atomic(run_path(run_dir, runfiles.PRIOR_CONFIG), config.to_dict())


def load_prior_config(run_dir: str | Path) -> PriorConfig:
    path = run_path(run_dir, runfiles.PRIOR_CONFIG)
    data = read_json_object(path, "prior settings file")
    try:
        return PriorConfig.from_dict(data)
    except VqkitError as exc:
        raise refused_file(path, exc) from None


def class_mix_classes(run_dir: str | Path, strategy: str, digit: int | None = None) -> int | None:
    """C when a run's samples are a class mix (a conditional prior asked for no class draws
    sample i of class i mod C), else None."""
    if strategy == "prior" and digit is None:
        settings = load_prior_config(run_dir)
        if settings.conditional:
            return settings.num_classes
    return None


def sample_grid_columns(run_dir: str | Path, strategy: str, digit: int | None = None) -> int:
    """Grid columns for a run's samples: a class mix of C classes gets C columns, one class in
    each (GRID_COLUMNS would cut across the classes); everything else gets GRID_COLUMNS."""
    return class_mix_classes(run_dir, strategy, digit) or GRID_COLUMNS


def has_prior(run_dir: str | Path) -> bool:
    return (
        run_path(run_dir, runfiles.PRIOR_CONFIG).exists()
        and run_path(run_dir, runfiles.PRIOR_WEIGHTS).exists()
    )


def require_prior_fits_the_model(run_dir: str | Path) -> None:
    """Refuse a prior learned on the code grids of other VQ-VAE weights than the run's own (the
    model was resumed or retrained after train-prior): its codes would mean other images."""
    if prior_is_stale(run_dir):
        raise VqkitError(
            f"The prior in '{run_dir}' was trained on the codes of earlier VQ-VAE weights; "
            f"train a new one with vqkit train-prior {run_dir} --restart."
        )


def load_prior(run_dir: str | Path, device: str | torch.device = "cpu") -> PixelCNNPrior:
    """The trained prior of a run folder, in eval mode."""
    reason = incomplete_prior(run_dir)  # also a whole-looking prior left by a cut-off one
    if reason is not None or not has_prior(run_dir):
        raise VqkitError(
            reason
            or f"The run '{run_dir}' has no trained prior; run 'vqkit train-prior {run_dir}' first."
        )
    require_prior_fits_the_model(run_dir)
    settings = load_prior_config(run_dir)
    model = load_config(run_dir).model
    made_for = (settings.num_codes, settings.grid_size)
    if made_for != (model.quantizer.num_codes, model.grid_size):
        raise VqkitError(
            f"The prior in '{run_dir}' ({runfiles.PRIOR_CONFIG}) models {made_for[0]} codes on a "
            f"{made_for[1]}×{made_for[1]} grid, but the run's model has "
            f"{model.quantizer.num_codes} codes on a {model.grid_size}×{model.grid_size} grid; "
            f"train a new one with vqkit train-prior {run_dir} --restart."
        )
    # The file's digest names what was drawn from (figures, scores); read around the load, so
    # a train-prior saving meanwhile cannot lend the samples its newer prior's name.
    digest = prior_digest(run_dir)
    path, what = run_path(run_dir, runfiles.PRIOR_WEIGHTS), "prior weights file"
    tensors = read_tensors(path, what)
    _require_sizes_of(tensors, settings, run_dir)
    prior = built_for_saved_weights(lambda: PixelCNNPrior(settings))
    load_tensors_into(prior, tensors, path, what)
    if prior_digest(run_dir) != digest:
        raise VqkitError(
            f"The prior in '{run_dir}' changed while it was read (a train-prior is saving it); "
            "run the command again."
        )
    prior.weights_sha256 = digest
    return prior.to(device).eval()


def _require_sizes_of(
    tensors: dict[str, torch.Tensor], settings: PriorConfig, run_dir: str | Path
) -> None:
    """Refuse settings whose sizes differ from those of the stored weights, before a network
    of those settings is built: an edited prior_config.json of 10**9 layers hung the command
    building them, where the weights hold 7."""

    def size(name: str, dim: int) -> int | None:
        tensor = tensors.get(name)
        return int(tensor.shape[dim]) if tensor is not None and tensor.dim() > dim else None

    stored = {
        "layers": len({name.split(".")[1] for name in tensors if name.startswith("layers.")}),
        "channels": size("embedding.weight", 1),
        "kernel_size": size("layers.0.v_conv.weight", 3),  # (2C, C, k//2 + 1, k)
    }
    if settings.conditional:
        stored["num_classes"] = size("label_bias.weight", 0)
    for name, value in stored.items():
        if value is not None and value != getattr(settings, name):
            raise VqkitError(
                f"The prior's settings ({runfiles.PRIOR_CONFIG} in '{run_dir}') say "
                f"{name} {getattr(settings, name)}, but its weights ({runfiles.PRIOR_WEIGHTS}) "
                f"have {name} {value}; restore the file or train a new prior with "
                f"vqkit train-prior {run_dir} --restart."
            )


@register_strategy("prior")
def _prior_codes(
    context: SamplingContext,
    n: int,
    generator: torch.Generator,
    digit: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """Codes drawn from the run's trained PixelCNN prior, optionally of one class.

    A conditional prior given no ``digit`` draws a class-balanced mix (sample i gets class
    i mod num_classes); an unconditional prior refuses a ``digit``.
    """
    if context.run_dir is None:
        raise InvalidValue("The 'prior' strategy needs the model's run folder to load its prior.")
    if digit is not None:
        digit = arguments.whole_number(digit, "The class to sample (--digit)", 0)
    prior = load_prior(context.run_dir, context.device)
    context.prior_sha256 = prior.weights_sha256
    config = prior.config
    if digit is not None and not config.conditional:
        raise InvalidValue(
            "This run's prior is unconditional, so no class (--digit) can be asked; retrain "
            f"it with 'vqkit train-prior {context.run_dir} --conditional'."
        )
    if digit is not None and not 0 <= digit < config.num_classes:
        raise InvalidValue(
            f"The class to sample (--digit) must be between 0 and {config.num_classes - 1}, "
            f"not {digit}."
        )
    labels = None
    if config.conditional:
        labels = (
            torch.full((n,), digit, dtype=torch.long)
            if digit is not None
            else torch.arange(n) % config.num_classes
        )
    return sample_prior(prior, n, generator, labels, temperature, top_k).cpu()
