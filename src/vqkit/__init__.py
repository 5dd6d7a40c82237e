"""vqkit: Vector-Quantized VAEs on small images — train, encode, sample, evaluate.

The pipeline as functions (each is also a ``vqkit`` subcommand):
``train`` -> ``evaluate_run`` / ``VQVAE.from_run`` (and the model's ``encode`` / ``decode``) ->
``train_prior`` -> ``sample_codes`` / ``interpolation`` -> ``score_run`` -> ``write_report``;
``run_demo`` runs them all. Their settings: ``preset_config`` (a ``RunConfig`` of a
``ModelConfig`` with its ``QuantizerConfig`` and a ``TrainConfig``), ``PriorConfig``,
``DemoSettings``. A quantizer of one's own: ``register_quantizer``. Images and labels of a
dataset split: ``load_split``.
"""

from vqkit.config import ModelConfig, QuantizerConfig, RunConfig, TrainConfig, preset_config
from vqkit.data import load_split
from vqkit.demo import DemoSettings, run_demo
from vqkit.errors import VqkitError
from vqkit.evaluate import evaluate_run
from vqkit.generate import SamplingContext, sample_codes
from vqkit.interpolate import interpolation
from vqkit.model import VQVAE
from vqkit.prior import PriorConfig
from vqkit.prior_training import train_prior
from vqkit.quantize import register_quantizer
from vqkit.report import write_report
from vqkit.score import score_run
from vqkit.training import TrainResult, train

__all__ = [
    "VQVAE",
    "DemoSettings",
    "ModelConfig",
    "PriorConfig",
    "QuantizerConfig",
    "RunConfig",
    "SamplingContext",
    "TrainConfig",
    "TrainResult",
    "VqkitError",
    "evaluate_run",
    "interpolation",
    "load_split",
    "preset_config",
    "register_quantizer",
    "run_demo",
    "sample_codes",
    "score_run",
    "train",
    "train_prior",
    "write_report",
]
__version__ = "0.1.0"
