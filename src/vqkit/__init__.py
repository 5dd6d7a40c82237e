"""vqkit: Vector-Quantized VAEs on small images — train, encode, sample, evaluate.

The pipeline as functions (each is also a ``vqkit`` subcommand):
``train`` -> ``evaluate_run`` / ``VQVAE.from_run`` (and the model's ``encode`` / ``decode``) ->
``train_prior`` -> ``sample_codes`` / ``interpolation`` -> ``score_run`` -> ``write_report``;
``run_demo`` runs them all. Their settings: ``preset_config`` (a ``RunConfig`` of a
``ModelConfig`` with its ``QuantizerConfig`` and a ``TrainConfig``), ``PriorConfig``,
``DemoSettings``. A quantizer of one's own: ``register_quantizer``. Images and labels of a
dataset split: ``load_split``.
"""

from typing import TYPE_CHECKING

# Each name is imported from its module when first used, so that `import vqkit` (and the
# program's first line) does not wait ~1.5 s for PyTorch: a Ctrl-C in that time is then caught
# by the command line's own handler (vqkit.entry), and a tool that needs only a light module
# (the errors, the wording) does not pay for PyTorch.
_HOMES = {
    "ModelConfig": "vqkit.config",
    "QuantizerConfig": "vqkit.config",
    "RunConfig": "vqkit.config",
    "TrainConfig": "vqkit.config",
    "preset_config": "vqkit.config",
    "load_split": "vqkit.data",
    "DemoSettings": "vqkit.demo",
    "run_demo": "vqkit.demo",
    "InvalidValue": "vqkit.errors",
    "VqkitError": "vqkit.errors",
    "evaluate_run": "vqkit.evaluate",
    "SamplingContext": "vqkit.generate",
    "sample_codes": "vqkit.generate",
    "interpolation": "vqkit.interpolate",
    "VQVAE": "vqkit.model",
    "PriorConfig": "vqkit.prior",
    "train_prior": "vqkit.prior_training",
    "register_quantizer": "vqkit.quantize",
    "write_report": "vqkit.report",
    "score_run": "vqkit.score",
    "TrainResult": "vqkit.training",
    "train": "vqkit.training",
}

if TYPE_CHECKING:  # what static tools and editors read; at run time, __getattr__ below
    from vqkit.config import ModelConfig, QuantizerConfig, RunConfig, TrainConfig, preset_config
    from vqkit.data import load_split
    from vqkit.demo import DemoSettings, run_demo
    from vqkit.errors import InvalidValue, VqkitError
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


if not TYPE_CHECKING:  # static tools see the imports above, and flag any other name

    def __getattr__(name: str) -> object:
        import importlib
        import importlib.util

        home = _HOMES.get(name)
        if home is not None:
            value = getattr(importlib.import_module(home), name)
        elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
            # A submodule (vqkit.codes_io, vqkit.quantize): `import vqkit` used to import them
            # all, and code written then reaches them through the package.
            value = importlib.import_module(f"{__name__}.{name}")
        else:
            raise AttributeError(f"module 'vqkit' has no attribute {name!r}")
        globals()[name] = value  # later look-ups skip this function
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "VQVAE",
    "DemoSettings",
    "InvalidValue",
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
