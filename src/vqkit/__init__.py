"""vqkit: Vector-Quantized VAEs on small images — train, encode, sample, evaluate.

The pipeline as functions (each is also a ``vqkit`` subcommand):
``train`` -> ``evaluate_run`` / ``VQVAE.from_run`` / ``encode`` / ``decode`` -> ``train_prior`` ->
``generate.sample_codes`` -> ``score_run`` -> ``write_report``; ``run_demo`` runs them all.
"""

from vqkit.demo import run_demo
from vqkit.errors import VqkitError
from vqkit.evaluate import evaluate_run
from vqkit.model import VQVAE
from vqkit.prior_training import train_prior
from vqkit.report import write_report
from vqkit.score import score_run
from vqkit.training import TrainResult, train

__all__ = [
    "VQVAE",
    "TrainResult",
    "VqkitError",
    "evaluate_run",
    "run_demo",
    "score_run",
    "train",
    "train_prior",
    "write_report",
]
__version__ = "0.1.0"
