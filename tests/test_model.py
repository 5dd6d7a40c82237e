"""Encoder/decoder shapes, encode/decode consistency, and checkpoint round trips."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors

from vqkit.checkpoint import load_model, load_weights_into, save_config, save_weights
from vqkit.config import ModelConfig, QuantizerConfig, RunConfig, preset_config
from vqkit.errors import VqkitError
from vqkit.model import VQVAE, ResidualBlock, input_for


def images(count: int = 4) -> torch.Tensor:
    return torch.randint(
        0, 256, (count, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def small_config(residual_blocks: int, hidden: int, codes: int, dim: int) -> ModelConfig:
    quantizer = QuantizerConfig(num_embeddings=codes, embedding_dim=dim)
    return ModelConfig(hidden_dim=hidden, residual_blocks=residual_blocks, quantizer=quantizer)


@pytest.mark.parametrize("residual_blocks", [0, 2])
def test_shapes_28x28_to_7x7_grid_and_back(residual_blocks):
    config = small_config(residual_blocks, hidden=16, codes=10, dim=8)
    model = VQVAE(config).eval()
    with torch.no_grad():
        out = model(images())
    assert out.reconstruction.shape == (4, 1, 28, 28)
    assert out.codes.shape == (4, 7, 7) and out.codes.dtype == torch.int64
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < 10
    assert float(out.reconstruction.min()) >= 0 and float(out.reconstruction.max()) <= 1


def test_encode_then_decode_equals_forward_in_eval_mode():
    model = VQVAE(preset_config("efficient").model).eval()
    batch = images(6)
    with torch.no_grad():
        out = model(batch)
        codes = model.encode(batch)
        decoded = model.decode(codes)
    assert torch.equal(codes, out.codes)
    assert torch.allclose(decoded, out.reconstruction, atol=1e-6)


def test_uint8_and_float_inputs_agree():
    model = VQVAE(preset_config("efficient").model).eval()
    batch = images(3)
    with torch.no_grad():
        from_uint8 = model(batch).reconstruction
        from_float = model((batch.float() / 255).unsqueeze(1)).reconstruction
    assert torch.equal(from_uint8, from_float)


@pytest.mark.parametrize("wide", [torch.uint16, torch.uint32, torch.uint64])
def test_wide_unsigned_pixels_and_codes_work_as_int64_ones(wide):
    # torch has no min or max of these types: encode and decode raised NotImplementedError.
    model = VQVAE(preset_config("efficient").model).eval()
    batch = images(3)
    codes = model.encode(batch)
    assert torch.equal(model.encode(batch.to(wide)), codes)
    assert torch.equal(model.decode(codes.to(wide)), model.decode(codes))
    assert torch.equal(
        model.quantizer.codes_to_latents(codes.to(wide)), model.quantizer.codes_to_latents(codes)
    )
    with pytest.raises(VqkitError, match="pixels 0-255, and these range from 256 to 256"):
        model.encode(torch.full((1, 28, 28), 256).to(wide))
    with pytest.raises(VqkitError, match="lie in 0 to 127 for this model's codebook"):
        model.decode(torch.full((1, 7, 7), 128).to(wide))


def test_fp8_pixels_are_read_as_floats():
    model = VQVAE(preset_config("efficient").model).eval()
    pixels = torch.rand(2, 28, 28).to(torch.float8_e4m3fn)
    assert torch.equal(model.encode(pixels), model.encode(pixels.float()))


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_a_float64_model_computes_in_float64_what_the_float32_one_does(quantizer):
    """``model.double()`` (for gradient checks) takes uint8 or float64 images and keeps every
    step in float64, training forward and backward included, with the fp32 model's answers."""
    config = preset_config("best").model
    if quantizer == "fsq":
        config = ModelConfig(quantizer=QuantizerConfig(quantizer="fsq", embedding_dim=4))
    single = VQVAE(config).eval()
    double = copy.deepcopy(single).double()
    batch = images(5)
    with torch.no_grad():
        expected = single(batch).reconstruction
        for pixels in (batch, batch.double() / 255):
            out = double(pixels)
            assert out.reconstruction.dtype == torch.float64
            torch.testing.assert_close(out.reconstruction.float(), expected, atol=1e-5, rtol=0)
    out = double.train()(batch)  # k-means init, EMA and restarts in float64 too
    (out.reconstruction.mean() + out.vq_loss).backward()
    assert all(p.grad.dtype == torch.float64 for p in double.parameters() if p.grad is not None)


def test_decoded_images_carry_no_autograd_history():
    # What a tutorial user does next: plot them, through numpy.
    model = VQVAE(preset_config("efficient").model).eval()
    codes = model.encode(images(2))
    decoded = model.decode(codes)
    assert not codes.requires_grad and not decoded.requires_grad
    assert decoded.numpy().shape == (2, 1, 28, 28)


def test_float_pixels_above_one_are_refused_not_misencoded():
    model = VQVAE(preset_config("efficient").model).eval()
    with pytest.raises(VqkitError, match=r"in \[0, 1\], and these range from 0 to 255; pass uint8"):
        model.encode(images(2).float())
    model.encode(images(2).float() / 255)  # in range: accepted
    for bad in (-0.5, float("nan")):
        pixels = images(2).float() / 255
        pixels[0, 3, 3] = bad
        with pytest.raises(VqkitError, match="Float images must hold pixels in"):
            model.encode(pixels)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    config = preset_config("efficient")
    torch.manual_seed(3)
    model = VQVAE(config.model).eval()
    save_config(tmp_path, config)
    save_weights(tmp_path / "model.safetensors", model)
    restored = load_model(tmp_path)
    batch = images(5)
    with torch.no_grad():
        a, b = model(batch), restored(batch)
    assert torch.equal(a.reconstruction, b.reconstruction) and torch.equal(a.codes, b.codes)
    assert RunConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert VQVAE.from_run(tmp_path).training is False


def test_weights_stored_in_another_dtype_are_refused(tmp_path):
    # A float64 codebook in a float32 model's file: loading would silently round it, so the
    # file is called damaged instead.
    model = VQVAE(ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(8, 4)))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["quantizer.codebook"] = tensors["quantizer.codebook"].double()
    path = tmp_path / "model.safetensors"
    path.write_bytes(save_safetensors(tensors))
    with pytest.raises(VqkitError, match="'quantizer.codebook' is stored as torch.float64"):
        load_weights_into(model, path, "model weights file")


def test_weights_with_tensors_the_configuration_lacks_or_needs_are_refused(tmp_path):
    # An EMA-trained model holds two buffers (ema_cluster_size, ema_embed_sum) that a
    # loss-updated model of the same shape lacks: either way round, one sentence naming them.
    def model(update: str) -> VQVAE:
        quantizer = QuantizerConfig(num_embeddings=8, embedding_dim=4, codebook_update=update)
        return VQVAE(ModelConfig(hidden_dim=8, quantizer=quantizer))

    path = tmp_path / "model.safetensors"
    save_weights(path, model("ema"))
    with pytest.raises(VqkitError, match=r"does not fit its configuration \(unexpected"):
        load_weights_into(model("loss"), path, "model weights file")
    save_weights(path, model("loss"))
    with pytest.raises(VqkitError, match=r"does not fit its configuration \(missing"):
        load_weights_into(model("ema"), path, "model weights file")


def test_residual_block_adds_its_branch_to_the_input():
    # The paper's block, x + conv1x1(relu(conv3x3(relu(x)))), written out with its weights.
    torch.manual_seed(0)
    block = ResidualBlock(6).double()
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    inner = F.conv2d(F.relu(x), block.conv3.weight, block.conv3.bias, padding=1)
    branch = F.conv2d(F.relu(inner), block.conv1.weight, block.conv1.bias)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + branch)
        block.conv1.weight.zero_()  # the last convolution silenced: exactly the skip path
        block.conv1.bias.zero_()
        assert torch.equal(block(x), x)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_codes_outside_the_codebook_are_refused_by_decode(quantizer):
    config = preset_config("efficient").model
    if quantizer == "fsq":
        config = ModelConfig(
            hidden_dim=16, quantizer=QuantizerConfig(quantizer="fsq", fsq_levels=[4, 4])
        )
    model = VQVAE(config).eval()
    top = model.num_codes - 1
    assert model.decode(torch.full((1, 7, 7), top)).shape == (1, 1, 28, 28)
    for bad, shown in ((top + 1, f"from {top + 1} to {top + 1}"), (-1, "from -1 to -1")):
        # FSQ used to wrap these to another code's image without a word.
        with pytest.raises(VqkitError, match=f"lie in 0 to {top} .*; these range {shown}"):
            model.decode(torch.full((1, 7, 7), bad))
    with pytest.raises(VqkitError, match="must hold integers"):
        model.decode(torch.zeros(1, 7, 7))


def test_a_whole_run_config_given_for_a_model_config_is_one_sentence():
    with pytest.raises(VqkitError, match=r"VQVAE takes a ModelConfig .*not a RunConfig"):
        VQVAE(preset_config("efficient"))


@pytest.mark.parametrize(
    ("section", "field", "value", "fragment"),
    [
        ("quantizer", "quantizer", "fsg", "Unknown --quantizer 'fsg'"),
        ("quantizer", "codebook_update", "emma", "Unknown --codebook-update 'emma'"),
        ("quantizer", "gradient_estimator", "rotate", "Unknown --gradient-estimator 'rotate'"),
        ("quantizer", "num_embeddings", 0, "at least 2 codes"),
        ("model", "hidden_dim", "big", "'hidden_dim' must be an integer, not 'big'"),
        ("model", "image_size", 32, "image_size must be 28, not 32"),
    ],
)
def test_a_config_edited_after_it_was_made_is_checked_again_by_the_model(
    section, field, value, fragment
):
    # Edited in place, the fields skip the checks their constructors ran: a typo'd quantizer
    # name used to build the plain quantizer, a bad estimator to raise a KeyError.
    config = preset_config("efficient").model
    setattr(config.quantizer if section == "quantizer" else config, field, value)
    with pytest.raises(VqkitError, match=re.escape(fragment)):
        VQVAE(config)


def test_images_in_channels_last_order_are_named_by_their_shape():
    model = VQVAE(preset_config("efficient").model).eval()
    expected = (
        r"\(B, 28, 28\) or \(B, 1, 28, 28\), channels first; these have shape \(2, 28, 28, 1\)"
    )
    with pytest.raises(VqkitError, match=expected):
        model.encode(torch.zeros(2, 28, 28, 1, dtype=torch.uint8))


def test_images_go_to_the_device_of_the_weights_as_pixels():
    # The meta device stands in for a GPU here (tests/test_cuda.py runs encode and decode there).
    network = torch.nn.Conv2d(1, 4, 3).to("meta")
    x = input_for(network, images(2))
    assert x.device.type == "meta" and x.dtype == torch.float32 and x.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("residual_blocks", [0, 2])
def test_relus_in_place_train_exactly_as_out_of_place_ones(residual_blocks):
    # The ReLUs after convolutions overwrite their input (no convolution's backward reads its
    # output); three steps must end in the very weights of a copy whose ReLUs all allocate.
    config = small_config(residual_blocks, hidden=8, codes=16, dim=4)
    torch.manual_seed(0)
    fast = VQVAE(config)
    stock = copy.deepcopy(fast)
    assert any(getattr(m, "inplace", False) for m in fast.modules())
    for module in stock.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    real_relu = F.relu
    images = torch.randint(0, 256, (3, 6, 28, 28), dtype=torch.uint8)
    for model, relu in ((fast, real_relu), (stock, lambda x, inplace=False: real_relu(x))):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(F, "relu", relu)  # the residual block's functional ReLUs
            for batch in images:
                out = model(batch)
                target = batch.float().unsqueeze(1) / 255
                loss = F.mse_loss(out.reconstruction, target) + out.vq_loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    for (name, a), b in zip(fast.state_dict().items(), stock.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
