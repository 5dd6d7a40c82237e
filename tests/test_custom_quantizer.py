"""A quantizer of one's own, registered by name, trains, saves and loads like the built-ins."""

from __future__ import annotations

import pytest
import torch

import vqkit
from vqkit.config import QuantizerConfig, preset_config
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
    result = vqkit.train(config, tmp_path / "run", device="cpu", progress=False)
    assert CountingVQ.forwards == 512 // 64  # it, not the built-in, ran every training step
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
