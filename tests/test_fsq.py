"""Finite scalar quantization: the code range, exact index round trips, gradients."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from vqkit.config import QuantizerConfig
from vqkit.errors import VqkitError
from vqkit.fsq import FiniteScalarQuantizer
from vqkit.model import VQVAE, ModelConfig
from vqkit.quantize import build_quantizer
from vqkit.step import compute_losses

LEVEL_SETS = [[3], [2, 2], [8, 5, 5, 5], [3, 4, 2], [7, 6]]


def fsq(levels: list[int], dim: int | None = None) -> FiniteScalarQuantizer:
    config = QuantizerConfig(quantizer="fsq", fsq_levels=levels, embedding_dim=dim or len(levels))
    quantizer = build_quantizer(config)
    assert isinstance(quantizer, FiniteScalarQuantizer)
    return quantizer


def expected_values(levels: list[int]) -> torch.Tensor:
    """Grid values of every index, enumerated independently: mixed radix, first digit fastest."""
    rows = []
    for digits in itertools.product(*[range(n) for n in reversed(levels)]):
        digits = list(reversed(digits))  # itertools varies the last position fastest
        rows.append([(d - n // 2) / (n // 2) for d, n in zip(digits, levels, strict=True)])
    return torch.tensor(rows)


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_every_index_is_hit_on_a_grid_and_none_beyond(levels):
    quantizer = fsq(levels)
    axes = [torch.linspace(-3, 3, 4 * n + 1) for n in levels]
    grid = torch.cartesian_prod(*axes).reshape(-1, len(levels))  # (M, c)
    codes = quantizer.scalar_quantize(grid)[1]
    assert torch.equal(torch.unique(codes), torch.arange(math.prod(levels)))
    assert quantizer.num_codes == math.prod(levels) == quantizer.config.num_codes


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_indices_round_trip_to_grid_values_exactly(levels):
    quantizer = fsq(levels)
    indices = torch.arange(math.prod(levels))
    values = quantizer.codes_to_values(indices)
    assert torch.equal(values, expected_values(levels))
    # Re-quantize: inputs that the bound maps onto each grid value give the same index back.
    level_tensor = torch.tensor(levels, dtype=torch.float64)
    half = (level_tensor - 1) * 1.001 / 2
    offset = (torch.tensor(levels) % 2 == 0).double() / 2
    target = values.double() * (torch.tensor(levels) // 2).double() + offset  # integer + offset
    pre_bound = torch.atanh(target / half)
    returned_values, returned = quantizer.scalar_quantize(pre_bound.float())
    assert torch.equal(returned, indices)
    assert torch.equal(returned_values, values)


@pytest.mark.parametrize("dim", [4, 16])
def test_codes_decode_to_the_latents_seen_in_training(dim):
    torch.manual_seed(0)
    quantizer = fsq([8, 5, 5, 5], dim=dim)
    z = torch.randn(3, dim, 7, 7) * 3
    out = quantizer(z)
    assert out.codes.shape == (3, 7, 7) and out.quantized.shape == z.shape
    assert torch.equal(quantizer.quantize_codes(z), out.codes)
    torch.testing.assert_close(quantizer.codes_to_latents(out.codes), out.quantized)
    assert int(out.code_counts.sum()) == 3 * 49 and len(out.code_counts) == 1000
    # Each code's count is how many of the 147 positions hold it, tallied one by one.
    tally = [0] * 1000
    for code in out.codes.flatten().tolist():
        tally[code] += 1
    assert out.code_counts.tolist() == tally
    assert float(out.loss) == 0.0


def test_bf16_latents_get_the_codes_a_float64_rounding_gives():
    """Under bf16 autocast the encoder hands the quantizer bf16 latents; bounding and rounding
    them in bf16 would move values near a .5 boundary to the next level (about 1.5% of codes)."""
    torch.manual_seed(0)
    quantizer = fsq([8, 5, 5, 5])
    z = (torch.randn(64, 4, 7, 7) * 1.5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained_on = quantizer(z).codes
    assert torch.equal(trained_on, quantizer.quantize_codes(z.double()))


def test_straight_through_rounding_passes_the_bound_gradient():
    quantizer = fsq([8, 5])
    h = torch.randn(50, 2, requires_grad=True)
    values, _ = quantizer.scalar_quantize(h)
    values.sum().backward()
    reference = h.detach().clone().requires_grad_(True)
    (quantizer.bound(reference) / torch.tensor([4.0, 2.0])).sum().backward()
    torch.testing.assert_close(h.grad, reference.grad)


def test_fsq_model_encodes_and_decodes():
    config = ModelConfig(
        hidden_dim=8, quantizer=QuantizerConfig(quantizer="fsq", fsq_levels=[4, 4], embedding_dim=6)
    )
    model = VQVAE(config).eval()
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    codes = model.encode(images)
    assert codes.max() < 16 and model.num_codes == 16
    torch.testing.assert_close(model.decode(codes), model(images).reconstruction)


@pytest.mark.parametrize("dim", [2, 6])  # 2: no projection (identity), 6: linear projections
def test_an_fsq_model_cast_wholly_to_bf16_trains_and_decodes(dim):
    config = ModelConfig(
        hidden_dim=8,
        quantizer=QuantizerConfig(quantizer="fsq", fsq_levels=[4, 4], embedding_dim=dim),
    )
    model = VQVAE(config).to(torch.bfloat16)
    images = torch.rand(3, 1, 28, 28, dtype=torch.bfloat16)
    out = model(images)
    assert out.reconstruction.dtype == torch.bfloat16
    out.reconstruction.float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model.decode(out.codes), out.reconstruction)


LEVELS = "FSQ levels must be a list of whole numbers >= 2"
NO_CODEBOOK = "do not apply to --quantizer fsq, which has no codebook"


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"fsq_levels": [1, 5]}, LEVELS),
        ({"fsq_levels": []}, LEVELS),
        ({"fsq_levels": [8, 2.5]}, LEVELS),
        ({"quantizer": "fsq", "codebook_update": "ema"}, f"(--codebook-update ema) {NO_CODEBOOK}"),
        ({"quantizer": "fsq", "dead_code_restart": 5}, f"(--dead-code-restart) {NO_CODEBOOK}"),
        (
            {"quantizer": "fsq", "gradient_estimator": "rotation"},
            f"(--gradient-estimator rotation) {NO_CODEBOOK}",
        ),
    ],
)
def test_bad_fsq_settings_are_refused(settings, fragment):
    with pytest.raises(VqkitError, match=re.escape(fragment)):
        QuantizerConfig(**settings)


def test_latents_of_the_wrong_shape_are_one_sentence():
    quantizer = fsq([8, 5], dim=6)
    for call in (quantizer, quantizer.quantize_codes):
        with pytest.raises(VqkitError, match=r"\(B, 6, \.\.\.\) with the 6 channels.*\(2, 7, 7, 6"):
            call(torch.zeros(2, 7, 7, 6))


def test_saturated_channels_of_more_than_a_thousand_levels_keep_to_their_levels():
    # The bound's margin used to round one step past the ends once (L - 1) / 2000 >= 0.5.
    quantizer = fsq([1002], dim=1)
    far = torch.tensor([-50.0, 50.0]).view(2, 1, 1, 1)
    assert quantizer.quantize_codes(far).flatten().tolist() == [0, 1001]
    values = quantizer(far).quantized.flatten()
    assert values.tolist() == pytest.approx([-1.0, 500 / 501])  # the lowest and highest values
    assert torch.equal(
        quantizer.codes_to_latents(torch.tensor([0, 1001]).view(2, 1, 1)), values.view(2, 1, 1, 1)
    )


def test_a_nan_latent_gets_a_code_in_range_and_a_nan_loss_not_an_index_error():
    # forward used to fail inside index_add_ on the garbage index of a NaN digit.
    quantizer = fsq([8, 5])
    z = torch.tensor([float("nan"), 0.3]).view(1, 2, 1, 1)
    out = quantizer(z)
    assert 0 <= int(out.codes) < quantizer.num_codes and int(out.code_counts.sum()) == 1
    assert torch.isnan(out.quantized).any()


def test_the_bound_keeps_the_reference_margin():
    # tanh(h)·(L-1)(1 + 1e-3)/2 - offset, the reference implementation's eps = 1e-3: without the
    # margin a saved FSQ model would give other codes near a boundary (at tanh(h) = 1.5 / 2.001
    # for L = 5 the margin rounds up to 2, the bare bound down to 1).
    quantizer = fsq([5, 4], dim=2)
    h = torch.linspace(-3, 3, 61, dtype=torch.float64).unsqueeze(1).repeat(1, 2)
    expected = torch.stack(
        [torch.tanh(h[:, 0]) * 4 * 1.001 / 2, torch.tanh(h[:, 1]) * 3 * 1.001 / 2 - 0.5], dim=1
    )
    torch.testing.assert_close(quantizer.bound(h), expected, rtol=1e-12, atol=1e-12)
    edge = torch.atanh(torch.tensor([[1.5 / 2.001, 0.0]], dtype=torch.float64))
    assert quantizer.scalar_quantize(edge)[0][0, 0].item() == 1.0  # the top value, 2 of 2


def test_a_training_step_counts_no_codes_until_they_are_read(monkeypatch):
    """An FSQ grid of 2^24 codes made every step build a 2^24-long count tensor (128 MB,
    ~150 ms on 2 cores) that no training step reads; the counts are made when first read."""
    import vqkit.quantize

    made = []
    counting = vqkit.quantize.count_batch_codes
    monkeypatch.setattr(
        vqkit.quantize, "count_batch_codes", lambda *a: made.append(a[1]) or counting(*a)
    )
    model = VQVAE(ModelConfig(quantizer=QuantizerConfig(quantizer="fsq", fsq_levels=[256] * 3)))
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    reconstruction, vq_loss = compute_losses(model.train(), images)
    (reconstruction + vq_loss).backward()
    assert made == []
    out = model(images)
    counts = out.code_counts  # read: now counted, once
    assert made == [2**24] and out.code_counts is counts
    assert torch.equal(counts.nonzero().flatten(), out.codes.flatten().unique())
    assert int(counts.sum()) == 4 * 49
