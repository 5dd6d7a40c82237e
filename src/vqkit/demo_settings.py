"""What ``vqkit demo`` (and :func:`vqkit.demo.run_demo`) trains and how much it samples.

Apart from :mod:`vqkit.demo`, so that the command line reads the defaults (``--help``) without
importing PyTorch; the checks import what they need when settings are made.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqkit.config import PRECISIONS, PRESETS, SEED_MAX, ClassifierConfig, require_typed_settings
from vqkit.errors import InvalidValue

# Upper bounds of the demo's sampling settings, far above its defaults: a figure of 4,096
# samples, a strip of 1,000 steps, scores over a million samples.
MOST = {"samples_per_figure": 4096, "interpolation_steps": 1000, "score_samples": 1_000_000}


@dataclass
class DemoSettings:
    """What the demo trains and how much it samples (chosen for a few minutes on 2 cores)."""

    dataset: str = "mnist"
    preset: str = "best"  # efficient-sized model with k-means init, EMA and restarts
    # Two epochs with bf16 convolutions (where native) and channels-last: most of the 'best'
    # preset's quality (test MSE ~0.004) in well under half its time on a laptop CPU.
    epochs: int | None = 2
    precision: str = "auto"
    channels_last: bool = True
    prior_epochs: int = 2  # the third epoch gains ~0.08 bits per code for another minute
    prior_conditional: bool = True
    samples_per_figure: int = 64
    score_samples: int = 2000
    interpolation_pair: tuple[int, int] = (3, 8)  # first test images of these classes
    interpolation_steps: int = 8
    seed: int = 0
    # Shortcuts for quick trials and tests; None keeps the preset's and stages' own settings.
    train_limit: int | None = None
    prior_train_limit: int | None = None
    classifier: ClassifierConfig | None = None

    def __post_init__(self) -> None:
        """Checked now, not at the stage that uses a setting, minutes of training later."""
        from vqkit import arguments
        from vqkit.data import DATASETS, OWN_DATASET, dataset_classes

        require_typed_settings(self, "demo")
        if self.classifier is not None:
            arguments.instance(
                self.classifier,
                ClassifierConfig,
                "The 'demo' setting 'classifier'",
                "ClassifierConfig()",
            )
        choices = {
            "dataset": tuple(name for name in DATASETS if name != OWN_DATASET),  # no --data-dir
            "preset": tuple(PRESETS),
            "precision": PRECISIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InvalidValue(
                    f"The 'demo' setting '{name}' must be one of {', '.join(allowed)}, not "
                    f"{getattr(self, name)!r}."
                )
        least = {"epochs": 1, "prior_epochs": 1, "samples_per_figure": 1, "score_samples": 2}
        least |= {"interpolation_steps": 2, "prior_train_limit": 1, "train_limit": 1}
        for name, minimum in least.items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise InvalidValue(
                    f"The 'demo' setting '{name}' must be at least {minimum}, not {value}."
                )
        for name, most in MOST.items():  # else the stage failed to allocate, after training
            if getattr(self, name) > most:
                raise InvalidValue(
                    f"The 'demo' setting '{name}' must be at most {most:,}, not "
                    f"{getattr(self, name):,}."
                )
        pair = self.interpolation_pair
        if len(pair) != 2 or not all(type(c) is int and c >= 0 for c in pair):
            raise InvalidValue(f"The interpolation pair must be two class numbers, not {pair!r}.")
        classes = dataset_classes(self.dataset)
        if max(pair) >= len(classes):
            raise InvalidValue(
                f"The interpolation pair {pair} names a class that {self.dataset} does not "
                f"have (its classes are 0 to {len(classes) - 1})."
            )
        highest_seed = SEED_MAX - (len(classes) - 1)  # row d of the conditional figure: seed + d
        if self.prior_conditional and self.seed > highest_seed:
            raise InvalidValue(
                f"--seed must be at most {highest_seed} with a conditional prior (class d's "
                f"samples are drawn with seed + d), not {self.seed}."
            )
