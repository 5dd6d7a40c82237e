"""vqkit: Vector-Quantized VAEs on small images — train, encode, sample, evaluate."""

from vqkit.errors import VqkitError
from vqkit.model import VQVAE
from vqkit.training import TrainResult, train

__all__ = ["VQVAE", "TrainResult", "VqkitError", "train"]
__version__ = "0.1.0"
