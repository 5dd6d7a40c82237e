"""Every built-in quantizer on latents of any layout (B, D, *S), empty batches, other dtypes.

The VQ-VAE hands its quantizer image latents (B, D, H, W); used on its own in a model of one's
own, a quantizer also takes sequences (B, D, T), plain vectors (B, D) or volumes (B, D, T, H, W).
Codes are checked against a brute-force nearest-code search of each position, in float64.
"""

from __future__ import annotations

import pytest
import torch

from vqkit.config import QuantizerConfig
from vqkit.errors import VqkitError
from vqkit.fsq import FiniteScalarQuantizer
from vqkit.quantize import build_quantizer
from vqkit.vq import VectorQuantizer

DIM, CODES = 8, 16
VQ_VARIANTS = {
    "loss": {},
    "ema": {"codebook_update": "ema"},
    "ema-kmeans-restarts": {
        "codebook_update": "ema", "codebook_init": "kmeans", "dead_code_restart": 2,
    },
    "rotation": {"gradient_estimator": "rotation"},
}  # fmt: skip
LAYOUTS = [(5, DIM), (3, DIM, 4), (2, DIM, 3, 4), (2, DIM, 2, 3, 2)]


def vq(variant: str) -> VectorQuantizer:
    torch.manual_seed(0)
    config = QuantizerConfig(num_embeddings=CODES, embedding_dim=DIM, **VQ_VARIANTS[variant])
    quantizer = build_quantizer(config)
    with torch.no_grad():
        quantizer.codebook.normal_()
    return quantizer


def fsq() -> FiniteScalarQuantizer:
    """Levels 8, 5, 5: D = 8 onto 3 channels through linear projections."""
    torch.manual_seed(0)
    return build_quantizer(
        QuantizerConfig(quantizer="fsq", embedding_dim=DIM, fsq_levels=[8, 5, 5])
    )


def positions_last(z: torch.Tensor) -> torch.Tensor:
    """(B, D, *S) -> (B, *S, D), written out position by position (no movedim)."""
    return z.permute(0, *range(2, z.dim()), 1)


def brute_force_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    vectors = positions_last(z).double()  # (B, *S, D)
    distances = ((vectors.unsqueeze(-2) - codebook.double()) ** 2).sum(-1)  # (B, *S, K)
    return distances.argmin(-1)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda s: f"{len(s) - 2}d")
@pytest.mark.parametrize("variant", VQ_VARIANTS)
def test_vq_codes_and_latents_of_any_layout_match_brute_force(variant, layout):
    quantizer = vq(variant).eval()  # eval: the codebook stays what the brute force reads
    z = torch.randn(*layout, requires_grad=True)
    out = quantizer(z)
    codebook = quantizer.codebook.detach()
    expected = brute_force_codes(z.detach(), codebook)
    assert torch.equal(out.codes, expected)
    assert torch.equal(quantizer.quantize_codes(z), expected)
    assert torch.equal(positions_last(out.quantized.detach()), codebook[expected])
    assert torch.equal(quantizer.codes_to_latents(expected), out.quantized.detach())
    assert torch.equal(out.code_counts, torch.bincount(expected.flatten(), minlength=CODES))
    # The loss is that of the same vectors laid out as an image batch (N, D, 1, 1).
    rows = positions_last(z.detach()).reshape(-1, DIM)
    as_images = quantizer(rows[:, :, None, None])
    torch.testing.assert_close(out.loss.detach(), as_images.loss.detach())
    if variant == "loss":  # straight-through: the encoder's gradient of sum(q) is all ones
        out.quantized.sum().backward()
        assert torch.equal(z.grad, torch.ones_like(z))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda s: f"{len(s) - 2}d")
def test_fsq_codes_of_any_layout_equal_those_of_each_position_alone(layout):
    quantizer = fsq()
    z = torch.randn(*layout)
    out = quantizer(z)
    rows = positions_last(z).reshape(-1, DIM)
    one_by_one = torch.stack([quantizer.quantize_codes(row.view(1, DIM, 1, 1)) for row in rows])
    assert torch.equal(out.codes.flatten(), one_by_one.flatten())
    assert out.codes.shape == (layout[0], *layout[2:])
    torch.testing.assert_close(quantizer.codes_to_latents(out.codes), out.quantized.detach())


@pytest.mark.parametrize("variant", [*VQ_VARIANTS, "fsq"])
@pytest.mark.parametrize("layout", [(0, DIM, 7, 7), (0, DIM), (2, DIM, 0, 3)])
def test_an_empty_batch_gives_empty_codes_a_zero_loss_and_changes_nothing(variant, layout):
    quantizer = (fsq() if variant == "fsq" else vq(variant)).train()
    before = {name: t.clone() for name, t in quantizer.state_dict().items()}
    z = torch.randn(*layout, requires_grad=True)
    out = quantizer(z)
    assert out.quantized.shape == layout and out.codes.shape == (layout[0], *layout[2:])
    assert float(out.loss) == 0.0 and int(out.code_counts.sum()) == 0
    (out.loss + out.quantized.sum()).backward()  # still part of the graph
    after = quantizer.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    if "kmeans" in variant:  # the k-means init waits for a batch with rows in it
        assert quantizer.needs_initialization()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fsq_with_a_projection_takes_latents_of_lower_precision(dtype):
    quantizer = fsq()  # D = 8 onto 3 channels: linear projections in float32
    z = torch.randn(2, DIM, 7, 7).to(dtype)
    out = quantizer(z)
    assert torch.equal(out.codes, quantizer(z.float()).codes)
    assert torch.equal(out.codes, quantizer.quantize_codes(z))
    # The projections' float32: the latents the decoder sees, and a loss of the same precision.
    assert out.quantized.dtype == out.loss.dtype == torch.float32


def test_codes_out_of_range_or_not_integers_are_one_sentence():
    for quantizer in (vq("loss"), fsq()):
        top = quantizer.num_codes - 1
        with pytest.raises(VqkitError, match=f"lie in 0 to {top} .* range from 0 to {top + 1}"):
            quantizer.codes_to_latents(torch.tensor([[0, top + 1]]))
        with pytest.raises(VqkitError, match="range from -1"):
            quantizer.codes_to_latents(torch.tensor([-1, 2]))
        with pytest.raises(VqkitError, match=r"\(B, ...\) must hold integers, not torch.float32"):
            quantizer.codes_to_latents(torch.zeros(2, 3))
        with pytest.raises(VqkitError, match="batch dimension"):
            quantizer.codes_to_latents(torch.tensor(3))


def test_the_vq_class_refuses_an_fsq_config_and_shows_its_settings():
    with pytest.raises(VqkitError, match="asks for FSQ"):
        VectorQuantizer(QuantizerConfig(quantizer="fsq"))
    shown = repr(vq("ema"))
    assert "num_codes=16" in shown and "dim=8" in shown and "update='ema'" in shown
    assert "levels=[8, 5, 5]" in repr(fsq())


def test_latents_with_the_channels_last_are_refused_naming_the_transpose():
    with pytest.raises(VqkitError, match=r"x\.transpose\(1, 2\) for \(B, T, 8\).*\(4, 10, 8\)"):
        vq("loss")(torch.randn(4, 10, DIM))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_codes_of_any_integer_type_give_the_latents_of_int64_codes(dtype):
    for quantizer in (vq("loss"), fsq()):
        codes = torch.tensor([[0, 3], [7, 15]])
        expected = quantizer.codes_to_latents(codes)
        assert torch.equal(quantizer.codes_to_latents(codes.to(dtype)), expected)


def test_fsq_under_bf16_autocast_picks_the_codes_of_float32():
    quantizer, z = fsq(), torch.randn(2, DIM, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = quantizer(z.bfloat16()).codes
    # The projection runs in bf16 under autocast: compare with bf16 weights outside it.
    reference = fsq().bfloat16()
    assert torch.equal(under_autocast, reference.quantize_codes(z.bfloat16()))


@pytest.mark.parametrize("variant", ["ema", "ema-kmeans-restarts"])
def test_training_on_sequences_updates_the_codebook_as_on_one_column_images(variant):
    # (B, D, T) and (B, D, T, 1) hold the same rows in the same order with T per item: the
    # image path's statistics (checked against formulas in test_vq) must come out identical.
    z = torch.randn(6, DIM, 5)
    states = []
    for latents in (z, z.unsqueeze(-1)):
        quantizer = vq(variant).train()
        torch.manual_seed(1)  # the restarts' and k-means' draws
        for _ in range(3):
            quantizer(latents)
        states.append(quantizer.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["codebook"], vq(variant).codebook)  # it did learn
