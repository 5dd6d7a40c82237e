"""The vector quantizer against brute force and the loss/gradient formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqkit import quantize
from vqkit.config import QuantizerConfig
from vqkit.errors import VqkitError
from vqkit.quantize import nearest_codes, perplexity
from vqkit.vq import VectorQuantizer


def brute_force_nearest(vectors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Full N×K×D squared distances in float64, then argmin: the definition itself."""
    distances = ((vectors[:, None, :] - codebook[None, :, :]) ** 2).sum(axis=-1)
    return distances.argmin(axis=1)


@pytest.mark.parametrize("num_codes,dim,rows", [(7, 3, 50), (128, 32, 1000), (512, 64, 300)])
def test_nearest_codes_match_brute_force(num_codes, dim, rows):
    generator = torch.Generator().manual_seed(num_codes)
    vectors = torch.randn(rows, dim, generator=generator)
    codebook = torch.randn(num_codes, dim, generator=generator)
    expected = brute_force_nearest(vectors.double().numpy(), codebook.double().numpy())
    assert np.array_equal(nearest_codes(vectors, codebook).numpy(), expected)


def test_chunked_distances_match_brute_force(monkeypatch):
    # 1000 rows in chunks of 7 (the last one 6 rows short), against the definition.
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(1000, 16, generator=generator)
    codebook = torch.randn(300, 16, generator=generator)
    monkeypatch.setattr(quantize, "DISTANCE_CHUNK_ELEMENTS", 300 * 7)
    expected = brute_force_nearest(vectors.double().numpy(), codebook.double().numpy())
    assert np.array_equal(nearest_codes(vectors, codebook).numpy(), expected)


def make_quantizer(num=16, dim=4, beta=0.25, seed=0) -> VectorQuantizer:
    torch.manual_seed(seed)
    quantizer = VectorQuantizer(QuantizerConfig(num_embeddings=num, embedding_dim=dim, beta=beta))
    with torch.no_grad():
        quantizer.codebook.normal_()
    return quantizer


def test_forward_returns_nearest_codes_and_their_vectors():
    quantizer = make_quantizer()
    z = torch.randn(2, 4, 3, 5)
    out = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    expected = brute_force_nearest(flat, quantizer.codebook.detach().numpy())
    assert out.codes.shape == (2, 3, 5)
    assert np.array_equal(out.codes.flatten().numpy(), expected)
    chosen = quantizer.codebook.detach().numpy()[expected]  # (N, D)
    got = out.quantized.detach().permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    assert np.allclose(got, chosen, atol=1e-6)
    assert torch.equal(out.code_counts, torch.bincount(out.codes.flatten(), minlength=16))


def test_quantize_codes_match_brute_force_at_every_grid_position():
    # A non-square grid (3 rows, 5 columns): reading the latents in the wrong axis order would
    # still give 15 valid codes, but not each one at its own (row, column).
    quantizer = make_quantizer()
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(4))
    codebook = quantizer.codebook.detach().double().numpy()
    codes = quantizer.quantize_codes(z)
    assert codes.shape == (2, 3, 5)
    for b in range(2):
        for row in range(3):
            for col in range(5):
                vector = z[b, :, row, col].double().numpy()[None]
                assert int(codes[b, row, col]) == brute_force_nearest(vector, codebook)[0]


def test_loss_equals_codebook_plus_beta_commitment_formula():
    beta = 0.4
    quantizer = make_quantizer(beta=beta)
    z = torch.randn(3, 4, 2, 2)
    out = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4).double().numpy()
    chosen = quantizer.codebook.detach().double().numpy()[out.codes.flatten().numpy()]
    mse = ((flat - chosen) ** 2).mean()
    assert out.loss.item() == pytest.approx((1 + beta) * mse, rel=1e-5)


def test_straight_through_passes_decoder_gradient_unchanged_to_encoder():
    quantizer = make_quantizer()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    quantizer(z).quantized.backward(upstream)
    assert torch.equal(z.grad, upstream)
    assert quantizer.codebook.grad is None or torch.count_nonzero(quantizer.codebook.grad) == 0


def test_codebook_gets_codebook_loss_gradient_and_encoder_gets_commitment_gradient():
    beta = 0.25
    quantizer = make_quantizer(num=8, dim=3, beta=beta)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = quantizer(z)
    out.loss.backward()
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3).double()
    codes = out.codes.flatten()
    chosen = quantizer.codebook.detach().double()[codes]
    count = flat.numel()
    # d/de mean((e_c - z)^2) summed over the rows that chose each code.
    expected_codebook = torch.zeros(8, 3, dtype=torch.float64)
    expected_codebook.index_add_(0, codes, 2 * (chosen - flat) / count)
    assert torch.allclose(quantizer.codebook.grad.double(), expected_codebook, atol=1e-7)
    # Only beta * commitment reaches z: d/dz beta * mean((z - e_c)^2).
    expected_z = (beta * 2 * (flat - chosen) / count).view(2, 2, 2, 3).permute(0, 3, 1, 2)
    assert torch.allclose(z.grad.double(), expected_z, atol=1e-7)


def test_codes_to_latents_is_a_codebook_lookup():
    quantizer = make_quantizer()
    codes = torch.randint(0, 16, (2, 7, 7))
    latents = quantizer.codes_to_latents(codes)
    assert latents.shape == (2, 4, 7, 7)
    assert torch.equal(latents[1, :, 3, 5], quantizer.codebook[codes[1, 3, 5]])


def test_perplexity_formula():
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([9, 0, 0])) == pytest.approx(1.0)
    probs = np.array([0.5, 0.25, 0.25])
    expected = np.exp(-(probs * np.log(probs)).sum())
    assert perplexity(torch.tensor([2, 1, 1])) == pytest.approx(expected)
    assert perplexity([2, 1, 1]) == perplexity(np.array([2, 1, 1])) == pytest.approx(expected)
    assert perplexity(np.array([1, 1, 2])[::-1]) == pytest.approx(expected)  # reversed strides
    # Wide unsigned types: torch has no min of them.
    assert perplexity(np.array([2, 1, 1], np.uint32)) == pytest.approx(expected)
    assert perplexity(torch.tensor([2, 1, 1]).to(torch.uint16)) == pytest.approx(expected)


def test_perplexity_of_no_counts_at_all_is_one():
    # Nothing chosen (or no codes): an entropy of 0, not the NaN of 0 / 0.
    assert perplexity(torch.zeros(4, dtype=torch.long)) == 1.0
    assert perplexity([]) == 1.0


def test_perplexity_depends_only_on_the_shares_of_the_counts():
    # Fractional counts (EMA cluster sizes, shares) are normalised by their own sum, whatever it
    # is: two codes of equal weight give 2 whether the weights are 0.1 each or 10 each.
    assert perplexity([0.1, 0.1]) == pytest.approx(2.0)
    shares = np.array([0.3, 0.05, 0.15])
    expected = float(np.exp(-(shares / shares.sum() * np.log(shares / shares.sum())).sum()))
    for scale in (0.01, 1.0, 1000.0):
        assert perplexity(shares * scale) == pytest.approx(expected)


@pytest.mark.parametrize(
    "counts", [[[1, 2]], "ab", None, torch.tensor([True, False]), np.array(5), torch.tensor(5)]
)
def test_perplexity_of_what_are_not_counts_is_one_sentence(counts):
    # A list raised AttributeError ('list' object has no attribute 'double').
    with pytest.raises(VqkitError, match="Code counts must be one \\(K,\\) tensor, list or array"):
        perplexity(counts)


@pytest.mark.parametrize("counts", [[3, -1], [1.0, float("nan")], [float("inf"), 1.0]])
def test_negative_or_non_finite_counts_are_refused(counts):
    # [3, -1] gave a perplexity of 5e-16, NaN counts a NaN.
    with pytest.raises(VqkitError, match="Code counts must be finite and not negative."):
        perplexity(counts)


def test_the_straight_through_latents_are_exactly_the_codes_sampling_decodes():
    # z + (e - z) differed from e by a rounding of |z|: 1.5e-5 at |z| = 100 in float32.
    quantizer = make_quantizer()
    z = 100 + torch.randn(2, 4, 3, 3)
    out = quantizer(z)
    assert torch.equal(out.quantized, quantizer.codes_to_latents(out.codes))


def test_outputs_stay_dataclasses_whose_counts_are_a_field_counted_when_read():
    """Counting on first read made QuantizerOutput and VQVAEOutput plain classes: fields()
    and dataclasses.replace failed, and out.code_counts = ... raised AttributeError."""
    import dataclasses

    from vqkit.model import VQVAEOutput

    codes = torch.tensor([[0, 2], [2, 3]], dtype=torch.int32)  # a quantizer's own int32 codes
    out = quantize.QuantizerOutput(torch.zeros(2, 1, 2), codes, torch.zeros(()), 4)
    names = [f.name for f in dataclasses.fields(out)]
    assert names == ["quantized", "codes", "loss", "code_counts"]
    assert out.counts_or_num_codes() == 4  # not counted yet
    moved = dataclasses.replace(out, quantized=torch.ones(2, 1, 2))
    assert moved.code_counts.tolist() == [1, 0, 2, 1] and moved.code_counts.dtype == torch.long
    out.code_counts = torch.tensor([9, 9, 9, 9])  # set by a quantizer of one's own
    assert out.code_counts.tolist() == [9, 9, 9, 9]
    with pytest.raises(TypeError, match="code_counts"):
        quantize.QuantizerOutput(torch.zeros(1), codes, torch.zeros(()))  # still required
    whole = VQVAEOutput(torch.zeros(1), codes, torch.zeros(()), 5)
    assert dataclasses.is_dataclass(whole) and whole.code_counts.tolist() == [1, 0, 2, 1, 0]


def test_a_model_in_ddp_finding_unused_parameters_trains(tmp_path):
    """DistributedDataParallel(find_unused_parameters=True) looks for the output's tensors in
    a dataclass's fields; in a plain class it found none, marked every parameter unused, and
    the backward raised 'Expected to mark a variable ready only once'."""
    import torch.distributed as dist

    from vqkit.config import preset_config
    from vqkit.model import VQVAE

    config = preset_config("efficient").model
    config.hidden_dim = 8
    model = VQVAE(config)
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        for _ in range(2):
            out = wrapped(images)
            (out.reconstruction.float().mean() + out.vq_loss).backward()
    finally:
        dist.destroy_process_group()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
