"""The shared training step: its losses by definition, and the update it takes from them."""

from __future__ import annotations

import copy

import pytest
import torch

from vqkit.config import ModelConfig, QuantizerConfig
from vqkit.model import VQVAE
from vqkit.step import apply_step, compute_losses


def test_the_step_takes_the_codebook_loss_gradient_onto_the_codebook():
    # Loss-updated codebook, plain SGD: only the codebook loss ||sg[z] - e||² reaches the codes
    # (the straight-through estimator routes the decoder's gradient to the encoder), so after
    # one step with rate lr each chosen code e_k has moved by -lr · 2/(N·D) · Σ_{i→k} (e_k - z_i)
    # and every other code is unchanged. A step that left out the quantizer loss moves none.
    torch.manual_seed(0)
    model = VQVAE(ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(8, 4))).train()
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        z = model.encoder(model.model_input(images))  # (B, D, 7, 7)
        # Codes on eight of the batch's own encoder outputs, so it chooses several of them.
        model.quantizer.codebook.copy_(z.permute(0, 2, 3, 1).reshape(-1, 4)[::18][:8])
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4).double()
    before = model.quantizer.codebook.detach().double().clone()
    codes = ((flat[:, None, :] - before[None]) ** 2).sum(dim=2).argmin(dim=1)
    expected = before.clone()
    lr = 0.5
    for k in codes.unique().tolist():
        members = flat[codes == k]
        gradient = 2 * (before[k] - members).sum(dim=0) / flat.numel()
        expected[k] -= lr * gradient

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    reconstruction, quantizer_loss = compute_losses(model, images)
    total = apply_step(optimizer, reconstruction, quantizer_loss)

    assert total.item() == pytest.approx(reconstruction.item() + quantizer_loss.item())
    assert len(codes.unique()) > 1
    after = model.quantizer.codebook.detach().double()
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-7)
    assert not torch.equal(after, before)


def test_the_reconstruction_loss_is_the_mean_squared_pixel_error():
    torch.manual_seed(1)
    model = VQVAE(ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(8, 4))).eval()
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        reconstruction, quantizer_loss = compute_losses(model, images)
        out = model(images)
    target = images.double() / 255
    expected = (out.reconstruction[:, 0].double() - target).pow(2).sum() / (2 * 28 * 28)
    assert float(reconstruction) == pytest.approx(float(expected), rel=1e-6)
    assert float(quantizer_loss) == pytest.approx(float(out.vq_loss))


def test_each_step_takes_the_gradient_of_its_own_batch_alone():
    # Gradients left over from the step before would add to this step's: with plain SGD the
    # second step must move every weight by -lr times the gradient of the second loss alone,
    # taken here on a copy of the model as it stood after the first step.
    torch.manual_seed(2)
    model = VQVAE(ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(8, 4))).train()
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    first, second = torch.randint(0, 256, (2, 2, 28, 28), dtype=torch.uint8)
    apply_step(optimizer, *compute_losses(model, first))
    twin = copy.deepcopy(model)
    reconstruction, quantizer_loss = compute_losses(twin, second)
    (reconstruction + quantizer_loss).backward()
    before = [parameter.detach().clone() for parameter in model.parameters()]
    apply_step(optimizer, *compute_losses(model, second))
    for parameter, old, alone in zip(model.parameters(), before, twin.parameters(), strict=True):
        assert alone.grad is not None
        torch.testing.assert_close(parameter.detach(), old - lr * alone.grad)
