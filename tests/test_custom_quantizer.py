"""A quantizer of one's own, registered by name, trains, saves and loads like the built-ins."""

from __future__ import annotations

import functools

import pytest
import torch

import vqkit
from vqkit import runfiles
from vqkit.checkpoint import load_model, save_config, save_weights
from vqkit.config import QuantizerConfig, RunConfig, preset_config
from vqkit.errors import VqkitError
from vqkit.model import VQVAE
from vqkit.quantize import register_quantizer
from vqkit.vq import VectorQuantizer


@register_quantizer("counting-vq")
class CountingVQ(VectorQuantizer):
    """The plain vector quantizer, counting its training forwards."""

    forwards = 0

    def forward(self, z):
        if self.training:
            type(self).forwards += 1
        return super().forward(z)


def test_a_registered_quantizer_trains_saves_and_loads(tmp_path):
    config = preset_config("efficient")
    config.model.quantizer.quantizer = "counting-vq"
    config.train.epochs, config.train.batch_size = 1, 64
    config.train.train_limit, config.train.test_limit = 512, 128
    before = CountingVQ.forwards
    result = vqkit.train(config, tmp_path / "run", device="cpu", progress=False)
    assert CountingVQ.forwards - before == 512 // 64  # it, not the built-in, ran every step
    loaded = VQVAE.from_run(tmp_path / "run")
    assert type(loaded.quantizer) is CountingVQ
    # Its weights are a plain VQ-VAE's: the built-in quantizer on them gives the same codes.
    plain = VQVAE(preset_config("efficient").model).eval()
    plain.load_state_dict(result.model.state_dict())
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    assert torch.equal(plain.encode(images), loaded.encode(images))


def test_an_unregistered_quantizer_says_how_to_register_one():
    with pytest.raises(VqkitError, match="registered with vqkit.quantize.register_quantizer"):
        QuantizerConfig(quantizer="nobody-registered-this")


def test_a_built_in_name_cannot_be_taken():
    with pytest.raises(VqkitError, match="'fsq' is a built-in quantizer"):
        register_quantizer("fsq")


@pytest.mark.parametrize("name", [["x"], "", None])
def test_a_quantizer_name_must_be_a_non_empty_string(name):
    # A list raised "unhashable type" from inside the registry.
    with pytest.raises(VqkitError, match="registered under a name \\(a non-empty str\\)"):
        register_quantizer(name)


@pytest.mark.parametrize("made", [lambda config: 1, type("NotAModule", (), {})])
def test_only_a_module_class_can_be_registered(made):
    # A function was taken, and building a model raised AttributeError: type object 'int' has
    # no attribute 'forward'.
    with pytest.raises(VqkitError, match="decorates a class derived from torch.nn.Module"):
        register_quantizer("not-a-module")(made)
    with pytest.raises(VqkitError, match="registered with vqkit.quantize.register_quantizer"):
        QuantizerConfig(quantizer="not-a-module")


def test_another_class_cannot_take_a_registered_name_but_the_same_class_may_return():
    with pytest.raises(VqkitError, match="'counting-vq' is already registered by"):

        @register_quantizer("counting-vq")
        class Impostor(VectorQuantizer):
            pass

    # A notebook cell run again defines the class anew under the same qualified name.
    again = type("CountingVQ", (VectorQuantizer,), {"__module__": CountingVQ.__module__})
    assert register_quantizer("counting-vq")(again) is again
    register_quantizer("counting-vq")(CountingVQ)


class NoCounters(torch.nn.Module):
    """Keeps forward but not the rest of the contract."""

    def __init__(self, config):
        super().__init__()

    def forward(self, z):
        return z


class TupleVQ(VectorQuantizer):
    """Returns its output as a tuple instead of a QuantizerOutput."""

    def forward(self, z):
        out = super().forward(z)
        return out.quantized, out.codes, out.loss, out.code_counts


register_quantizer("no-counters")(NoCounters)
register_quantizer("tuple-vq")(TupleVQ)


def test_a_quantizer_missing_part_of_the_contract_is_refused_when_built(tmp_path):
    config = preset_config("efficient")
    config.model.quantizer.quantizer = "no-counters"
    with pytest.raises(VqkitError, match="lacks quantize_codes, codes_to_latents, num_codes"):
        VQVAE(config.model)
    # Training refuses it before it makes the run folder.
    with pytest.raises(VqkitError, match="no-counters"):
        vqkit.train(config, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


class NoForward(torch.nn.Module):
    """Keeps nothing of the contract, forward included (nn.Module's own raises when called)."""

    def __init__(self, config):
        super().__init__()


register_quantizer("no-forward")(NoForward)


def test_a_quantizer_without_a_forward_of_its_own_is_refused_when_built():
    config = preset_config("efficient").model
    config.quantizer.quantizer = "no-forward"
    with pytest.raises(VqkitError, match="lacks forward, quantize_codes"):
        VQVAE(config)


def test_a_quantizer_returning_a_tuple_is_named_at_the_first_forward():
    config = preset_config("efficient")
    config.model.quantizer.quantizer = "tuple-vq"
    model = VQVAE(config.model)
    with pytest.raises(VqkitError, match="TupleVQ returned a tuple from forward"):
        model(torch.zeros(2, 28, 28, dtype=torch.uint8))


def test_a_misspelt_quantizer_gets_a_suggestion():
    with pytest.raises(VqkitError, match="did you mean 'counting-vq'"):
        QuantizerConfig(quantizer="countingvq")


@functools.lru_cache
def sign_table(dim: int) -> torch.Tensor:
    """A fixed tensor made once per size, as a quantizer of one's own may keep one."""
    return torch.tensor([1.0, -1.0]).repeat(dim)[:dim]


@register_quantizer("cached-table-vq")
class CachedTableVQ(VectorQuantizer):
    """Flips the sign of every other latent channel by a table made once (cached)."""

    built_on: list[str] = []

    def __init__(self, config):
        super().__init__(config)
        type(self).built_on.append(torch.empty(0).device.type)
        self.signs = sign_table(config.embedding_dim)

    def forward(self, z):
        return super().forward(z * self.signs.view(1, -1, 1, 1))


def test_a_quantizer_of_ones_own_is_loaded_built_once_and_for_real(tmp_path):
    """load_model built the whole model once on the meta device to check the weights' sizes:
    a quantizer of one's own ran there too, and a tensor it cached while built was a meta
    tensor in the real model ('Tensor on device meta is not on the expected device cpu')."""
    config = RunConfig(model=preset_config("efficient").model)
    config.model.hidden_dim = 8
    config.model.quantizer.quantizer = "cached-table-vq"
    save_config(tmp_path, config)
    save_weights(tmp_path / runfiles.WEIGHTS, VQVAE(config.model))
    sign_table.cache_clear()
    CachedTableVQ.built_on.clear()
    model = load_model(tmp_path)
    assert CachedTableVQ.built_on == ["cpu"]
    out = model(torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8))
    assert out.codes.shape == (2, 7, 7)
    # The encoder's and decoder's sizes are still checked before anything is built for real.
    config.model.hidden_dim = 4096
    save_config(tmp_path, config)
    CachedTableVQ.built_on.clear()
    with pytest.raises(VqkitError, match="does not fit its configuration"):
        load_model(tmp_path)
    assert CachedTableVQ.built_on == []
