"""Typed settings for the model, its quantizer and training, with JSON round trips and presets.

A run folder's ``config.json`` holds a :class:`RunConfig`; it is everything needed to rebuild the
model, so checkpoints are self-describing (no pickled objects, no guessing of sizes).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import os
import sys
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqkit.errors import InvalidValue, UnknownQuantizer

# Bumped when a saved config can no longer be read by this code; older folders are refused.
CONFIG_VERSION = 1

# Choices of the speed settings in TrainConfig (implemented in vqkit.acceleration).
PRECISIONS = ("fp32", "bf16", "auto")
# Bounds far above any sensible model of 28×28 images (the paper: 2 residual blocks, width 256),
# below sizes that only a typo asks for: a model of 10^5 blocks takes minutes merely to build,
# and a width of 10^5 fills 10 GiB per feature map of a batch, so the kernel kills the process
# without a word (the parameter count alone is checked against memory when training starts).
MAX_RESIDUAL_BLOCKS = 100
MAX_WIDTH = 4096
# Lloyd's k-means settles in tens of iterations; each runs inside the first training step,
# which a single Ctrl-C lets finish, so a typo's 10^8 held the process for a quarter hour.
MAX_KMEANS_ITERS = 1000
# FSQ codes: 2^24 is 256 times the largest codebooks of the FSQ paper (2^16); every training
# step counts each code's use in a tensor of this many entries, so 2^62 could not even start.
MAX_FSQ_CODES = 2**24
LR_SCHEDULES = ("constant", "onecycle", "cosine")
# torch.compile modes; reduce-overhead replays CUDA graphs, which removes the per-step launch
# cost that bounds this small model on a GPU (no effect on a CPU).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")

# torch.manual_seed and torch.Generator.manual_seed take a signed 64-bit integer (a negative one
# wraps to a distinct unsigned seed); anything wider is refused by torch with a traceback.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
SEED_RANGE = "a whole number from -2**63 to 2**63 - 1"

# vqkit's datasets (MNIST, Fashion-MNIST, own IDX files) are all 28×28 grayscale images, so a
# model of another size or depth could never be fed (vqkit.data.catalog re-exports IMAGE_SIZE).
IMAGE_SIZE, IMAGE_CHANNELS = 28, 1


# Images (or grids) evaluated, encoded or decoded at once where no setting says otherwise: a
# whole batch of MNIST-sized work that bounds memory for any N.
EVAL_BATCH_SIZE = 1000


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidValue(message)


# The choices of the quantizer's string settings (the CLI's choices for the codebook settings;
# --quantizer takes any name, checked here, since plugins register more).
QUANTIZERS = ("vq", "fsq")
# Quantizer classes registered from Python by name (vqkit.quantize.register_quantizer, which
# builds them); a config may name one once the code that registers it has been imported, or
# that an installed package offers (vqkit.plugins, which loads it then).
REGISTERED_QUANTIZERS: dict[str, Any] = {}
CODEBOOK_UPDATES = ("loss", "ema")
CODEBOOK_INITS = ("uniform", "kmeans")
GRADIENT_ESTIMATORS = ("ste", "rotation")


def require_typed_settings(settings: Any, where: str, seed_name: str = "--seed") -> None:
    """Refuse a setting of the wrong type, as from_dict does for a JSON file, for settings built
    in Python too (``PriorConfig(epochs="3")`` would otherwise fail inside the range checks
    with a TypeError); then the whole numbers that a 64-bit integer cannot hold. A ``seed``
    field gets its own sentence, naming it ``seed_name``."""
    kinds = typing.get_type_hints(type(settings))
    as_python_numbers(settings, kinds)
    for setting in dataclasses.fields(settings):
        value = getattr(settings, setting.name)
        if setting.name == "seed":
            _require(is_seed(value), f"{seed_name} must be {SEED_RANGE}, not {_shown(value)}.")
            continue
        _require(
            _fits(value, kinds[setting.name]),
            f"The '{where}' setting '{setting.name}' must be "
            f"{_described(kinds[setting.name])}, not {value!r} (type {type(value).__name__}).",
        )
    require_64_bit_whole_numbers(settings)


def as_python_numbers(settings: Any, kinds: dict[str, Any]) -> None:
    """Replace NumPy's number types (a sweep's ``np.arange`` values: np.int64, np.float32, and
    np.bool) by Python's int, float and bool, in place, also inside list and tuple settings (a
    tuple given for a list setting becomes a list), so that they are accepted, and saved to
    JSON, as the numbers they are."""

    def plain(value: Any) -> Any:
        if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
            return bool(value)
        if isinstance(value, numbers.Integral) and type(value) not in (int, bool):
            return int(value)
        if isinstance(value, numbers.Real) and type(value) not in (int, float, bool):
            # np.float64 too (a float, but shown as np.float64(2.5)). NumPy's through their
            # text, so that np.float32(0.1) is saved as the 0.1 it was written as, not
            # 0.10000000149011612 (a Fraction's text, 1/1000, is no float).
            return float(str(value)) if type(value).__module__ == "numpy" else float(value)
        return value

    for setting in dataclasses.fields(settings):
        value = getattr(settings, setting.name)
        if isinstance(value, list | tuple):
            items = [plain(item) for item in value]
            kind = typing.get_origin(kinds[setting.name])
            value = items if kind is list or isinstance(value, list) else tuple(items)
        setattr(settings, setting.name, plain(value))


def require_64_bit_whole_numbers(settings: Any) -> None:
    """Refuse a whole-number setting (or list item) that a 64-bit integer cannot hold: torch
    would fail on it deep inside a kernel, after a run folder was made."""
    for setting in dataclasses.fields(settings):
        if setting.name == "seed":  # refused with its own sentence (SEED_RANGE)
            continue
        value = getattr(settings, setting.name)
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                _require(
                    SEED_MIN <= item <= SEED_MAX,
                    f"--{setting.name.replace('_', '-')} {item} is too large: vqkit's whole-number "
                    "settings must fit a 64-bit integer.",
                )


def path_or_none(value: Any, what: str) -> Any:
    """``value`` when it is None or a path (a str or os.PathLike); else one sentence."""
    if value is not None and not isinstance(value, str | os.PathLike):
        raise InvalidValue(f"{what} is a path (a str or pathlib.Path), not {value!r}.")
    return value


def is_seed(value: Any) -> bool:
    """Whether torch accepts ``value`` as a random seed (bools are ints to Python, not to torch)."""
    return isinstance(value, int) and not isinstance(value, bool) and SEED_MIN <= value <= SEED_MAX


def _require_choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    _require(value in choices, f"Unknown {flag} '{value}'; choose one of: {', '.join(choices)}.")


@dataclass
class QuantizerConfig:
    """How continuous encoder outputs become discrete codes."""

    num_embeddings: int = 512  # K, the codebook size
    embedding_dim: int = 64  # D, the size of each code vector
    beta: float = 0.25  # weight of the commitment loss
    quantizer: str = "vq"  # "vq": a learned codebook; "fsq": finite scalar quantization
    codebook_update: str = "loss"  # "loss": the codebook loss; "ema": moving-average updates
    ema_decay: float = 0.99  # gamma of the EMA codebook update
    ema_epsilon: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    dead_code_restart: int = 0  # restart a code unused for this many training steps; 0: never
    dead_code_threshold: float = 0.0  # EMA mode: also restart codes whose cluster size is below
    codebook_init: str = "uniform"  # "uniform": small random codes; "kmeans": on the first batch
    kmeans_iters: int = 10  # Lloyd iterations of the k-means initialisation
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # values per FSQ channel
    gradient_estimator: str = "ste"  # "ste": straight-through copy; "rotation": rotation trick

    def __post_init__(self) -> None:
        require_typed_settings(self, "quantizer")
        _require(
            self.num_embeddings >= 2, "The codebook needs at least 2 codes (--num-embeddings)."
        )
        _require(
            1 <= self.embedding_dim <= MAX_WIDTH,
            f"The embedding dimension must be 1 to {MAX_WIDTH} (--embedding-dim), not "
            f"{self.embedding_dim}.",
        )
        _require(
            math.isfinite(self.beta) and self.beta >= 0,
            "The commitment weight beta must be a finite number >= 0 (--beta).",
        )
        if self.quantizer not in QUANTIZERS and self.quantizer not in REGISTERED_QUANTIZERS:
            self._load_installed_or_refuse()
        _require_choice(self.codebook_update, CODEBOOK_UPDATES, "--codebook-update")
        _require_choice(self.codebook_init, CODEBOOK_INITS, "--codebook-init")
        _require_choice(self.gradient_estimator, GRADIENT_ESTIMATORS, "--gradient-estimator")
        _require(
            math.isfinite(self.ema_decay) and 0 < self.ema_decay < 1,
            f"The EMA decay must lie strictly between 0 and 1 (--ema-decay), not {self.ema_decay}.",
        )
        _require(
            math.isfinite(self.ema_epsilon) and self.ema_epsilon > 0,
            "The EMA smoothing epsilon must be a finite number > 0.",
        )
        _require(
            self.dead_code_restart >= 0,
            "The dead-code restart window must be >= 0 steps (--dead-code-restart; 0 is off).",
        )
        # A restarted code starts with an EMA cluster size of 1 (the one vector it copies), so a
        # threshold of 1 or more would restart it again at once.
        _require(
            math.isfinite(self.dead_code_threshold) and 0 <= self.dead_code_threshold < 1,
            "The dead-code cluster-size threshold must lie in [0, 1) (--dead-code-threshold).",
        )
        _require(
            self.kmeans_iters >= 1,
            f"k-means takes 1 to {MAX_KMEANS_ITERS} iterations (--kmeans-iters), not "
            f"{self.kmeans_iters}.",
        )
        _require(
            len(self.fsq_levels) >= 1
            and all(isinstance(v, int) and v >= 2 for v in self.fsq_levels),
            "FSQ levels must be a list of whole numbers >= 2, e.g. --fsq-levels 8,5,5,5.",
        )
        if self.quantizer == "fsq":
            vq_only = {
                "--codebook-update ema": self.codebook_update != "loss",
                "--dead-code-restart": self.dead_code_restart > 0,
                "--codebook-init kmeans": self.codebook_init != "uniform",
                "--gradient-estimator rotation": self.gradient_estimator != "ste",
            }
            chosen = [flag for flag, on in vq_only.items() if on]
            _require(
                not chosen,
                f"Codebook options ({', '.join(chosen)}) do not apply to --quantizer fsq, "
                "which has no codebook.",
            )

    def require_new_run_bounds(self) -> None:
        """Bounds a new run must keep, which runs saved before they existed may exceed (their
        config.json still loads): the k-means iterations, and FSQ's number of codes."""
        if self.codebook_init == "kmeans":
            _require(
                self.kmeans_iters <= MAX_KMEANS_ITERS,
                f"k-means takes 1 to {MAX_KMEANS_ITERS} iterations (--kmeans-iters), not "
                f"{self.kmeans_iters}.",
            )
        if self.quantizer == "fsq":
            _require(
                self.num_codes <= MAX_FSQ_CODES,
                f"FSQ levels {','.join(map(str, self.fsq_levels))} make {self.num_codes:,} "
                f"codes; at most {MAX_FSQ_CODES:,} are allowed (--fsq-levels).",
            )

    def idle_settings(self) -> set[str]:
        """The fields that change nothing for this quantizer (the report leaves them out). A
        quantizer of one's own receives every field, so none is idle for it."""
        codebook = {
            "num_embeddings", "beta", "codebook_update", "ema_decay", "ema_epsilon",
            "dead_code_restart", "dead_code_threshold", "codebook_init", "kmeans_iters",
            "gradient_estimator",
        }  # fmt: skip
        if self.quantizer == "fsq":
            return codebook
        if self.quantizer != "vq":
            return set()
        idle = {"fsq_levels"}
        if self.codebook_update != "ema":
            idle |= {"ema_decay", "ema_epsilon", "dead_code_threshold"}
        if self.dead_code_restart == 0:
            idle.add("dead_code_threshold")
        if self.codebook_init != "kmeans":
            idle.add("kmeans_iters")
        return idle

    def _load_installed_or_refuse(self) -> None:
        """Register the quantizer an installed package offers under this name, or refuse."""
        from vqkit import plugins  # it imports this module

        if plugins.load_installed_quantizer(self.quantizer):
            return
        offered = {*REGISTERED_QUANTIZERS, *plugins.entry_point_names()}
        known = QUANTIZERS + tuple(sorted(offered))
        close = difflib.get_close_matches(str(self.quantizer), known, n=1)
        guess = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownQuantizer(
            f"Unknown --quantizer '{self.quantizer}'{guess}; choose one of: {', '.join(known)} (a "
            "quantizer of your own must be registered with vqkit.quantize.register_quantizer "
            "in code imported first: on the command line, 'vqkit --plugin FILE.py COMMAND'; "
            "or offered by an installed package under the entry points 'vqkit.quantizers').",
            self.quantizer,
        )

    @property
    def num_codes(self) -> int:
        """How many distinct integer codes the quantizer can emit."""
        if self.quantizer == "fsq":
            return math.prod(self.fsq_levels)
        return self.num_embeddings


@dataclass
class ModelConfig:
    """Encoder/decoder shape. Two stride-2 convolutions map 28×28 images to a 7×7 grid."""

    in_channels: int = 1
    image_size: int = 28
    hidden_dim: int = 128
    residual_blocks: int = 0  # the paper's 3×3/1×1 residual blocks; 0 is the tutorial's model
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        require_typed_settings(self, "model")
        if isinstance(self.quantizer, dict):
            self.quantizer = _from_dict(QuantizerConfig, self.quantizer, "quantizer")
        _require(
            self.in_channels == IMAGE_CHANNELS,
            f"The model's in_channels must be {IMAGE_CHANNELS}, not {self.in_channels}: "
            "vqkit's images are grayscale.",
        )
        _require(
            self.image_size == IMAGE_SIZE,
            f"The model's image_size must be {IMAGE_SIZE}, not {self.image_size}: vqkit's "
            f"images are {IMAGE_SIZE}×{IMAGE_SIZE}.",
        )
        _require(
            1 <= self.hidden_dim <= MAX_WIDTH,
            f"The hidden width must be 1 to {MAX_WIDTH} (--hidden-dim), not {self.hidden_dim}.",
        )
        _require(
            0 <= self.residual_blocks <= MAX_RESIDUAL_BLOCKS,
            f"The number of residual blocks must be 0 to {MAX_RESIDUAL_BLOCKS} "
            f"(--residual-blocks), not {self.residual_blocks}.",
        )

    @property
    def grid_size(self) -> int:
        """Side of the latent code grid (7 for 28×28 images)."""
        return self.image_size // 4


@dataclass
class TrainConfig:
    """Optimisation and data settings of one training run."""

    dataset: str = "mnist"
    # Absolute folder of the files of an own ("idx") dataset, recorded at training so that
    # later stages find them without --data-dir; None for the named datasets.
    data_dir: str | None = None
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    eval_batch_size: int = EVAL_BATCH_SIZE
    train_limit: int | None = None  # train on the first N images only (quick experiments, tests)
    test_limit: int | None = None  # evaluate on the first N test images only
    # Speed levers (see vqkit.acceleration): they change how fast, not what, the model learns.
    precision: str = "fp32"  # fp32, bf16 (autocast of the convolutions) or auto
    channels_last: bool = False  # NHWC memory layout: faster oneDNN convolutions on CPU
    compile: bool = False  # torch.compile the training forward pass
    compile_mode: str = "default"  # one of COMPILE_MODES (used only with compile)
    cuda_graph: bool = False  # replay each whole training step from one CUDA graph (GPU only)
    lr_schedule: str = "constant"  # constant, onecycle or cosine (stepped once per batch)
    warmup_fraction: float = 0.25  # share of the steps spent warming up to lr (schedules only)
    checkpoint_every: int | None = None  # also save a resumable state every N steps
    skip_nonfinite: int = 0  # steps with a NaN/inf loss tolerated (skipped) before stopping
    deterministic: bool = False  # bitwise-reproducible kernels (resumed runs match exactly)

    def __post_init__(self) -> None:
        require_typed_settings(self, "train")
        # Imported here, not at the top: the data package reads this module as it loads.
        from vqkit.data.catalog import DATASETS

        _require(
            self.dataset in DATASETS,
            f"Unknown dataset {self.dataset!r}; valid datasets are: {', '.join(DATASETS)}.",
        )
        check_loop_settings(self)
        _require(
            self.eval_batch_size >= 1,
            "The evaluation batch size must be at least 1 (--eval-batch-size).",
        )
        _require(
            self.precision in PRECISIONS,
            f"Unknown precision '{self.precision}'; use one of {', '.join(PRECISIONS)}.",
        )
        _require(
            self.lr_schedule in LR_SCHEDULES,
            f"Unknown schedule '{self.lr_schedule}'; use one of {', '.join(LR_SCHEDULES)}.",
        )
        _require(
            self.compile_mode in COMPILE_MODES,
            f"Unknown compile mode '{self.compile_mode}'; use one of {', '.join(COMPILE_MODES)}.",
        )
        _require(
            not (self.compile and self.cuda_graph),
            "--cuda-graph captures the eager training step and cannot go with --compile "
            "(its reduce-overhead mode replays graphs of its own); choose one.",
        )
        _require(
            0.0 < self.warmup_fraction < 1.0,
            "The warm-up fraction must lie strictly between 0 and 1 (--warmup-fraction).",
        )
        check_run_controls(self)

    def idle_settings(self) -> set[str]:
        """The fields that change nothing for this run (the report leaves them out)."""
        idle = set()
        if self.lr_schedule == "constant":
            idle.add("warmup_fraction")
        if not self.compile:
            idle.add("compile_mode")
        return idle

    def data_folder(self, given: str | Path | None = None) -> str | Path | None:
        """Where to read the dataset: ``given`` (a --data-dir) when there is one, else the
        folder recorded at training (own datasets), else None (the named datasets' sources)."""
        given = path_or_none(given, "The data folder (--data-dir)")
        if given is None:
            return self.data_dir
        from vqkit.data.sources import require_data_folder  # it imports this module

        # Checked here, not only where images are read: commands answered from cached code
        # counts or grids read none, and took a mistyped --data-dir without a word.
        require_data_folder(Path(given))
        return given


def check_loop_settings(settings: Any) -> None:
    """Checks of the loop settings VQ-VAE and prior training share: epochs, batch, rate."""
    _require(settings.epochs >= 1, "The number of epochs must be at least 1 (--epochs).")
    _require(settings.batch_size >= 1, "The batch size must be at least 1 (--batch-size).")
    _require(
        math.isfinite(settings.lr) and settings.lr > 0,
        "The learning rate must be a finite number > 0 (--lr).",
    )


def check_run_controls(settings: Any) -> None:
    """Checks that VQ-VAE and prior training settings share: the reliability flags
    (--skip-nonfinite, --deterministic) and the optional counts that must be positive
    (--train-limit, --test-limit, --checkpoint-every). (Their seeds: require_typed_settings.)"""
    _require(settings.skip_nonfinite >= 0, "--skip-nonfinite cannot be negative.")
    for name in ("train_limit", "test_limit", "checkpoint_every"):
        value = getattr(settings, name)
        _require(value is None or value >= 1, f"--{name.replace('_', '-')} must be at least 1.")


@dataclass
class RunConfig:
    """Everything a run folder needs to rebuild and describe its model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "default"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = _from_dict(ModelConfig, self.model, "model")
        if isinstance(self.train, dict):
            self.train = _from_dict(TrainConfig, self.train, "train")
        kinds = {
            "model": (ModelConfig, "a ModelConfig"),
            "train": (TrainConfig, "a TrainConfig"),
            "preset": (str, "a string"),
            "version": (int, "a whole number"),
        }
        for name, (kind, described) in kinds.items():
            value = getattr(self, name)
            _require(
                isinstance(value, kind) and not isinstance(value, bool),
                f"A RunConfig's {name} must be {described}, not {value!r}.",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        _require(isinstance(data, dict), "The configuration must be a JSON object.")
        version = data.get("version")
        _require(
            "version" in data,
            f"The configuration has no 'version' field, so it is not a vqkit run config (vqkit "
            f"writes version {CONFIG_VERSION} into every run's config.json).",
        )
        _require(  # another of a run's files (train_state.json) was called an old config
            any(name in data for name in ("model", "train")),
            "The configuration has neither a 'model' nor a 'train' section, so it is not a "
            "vqkit run config (a run's config.json has both).",
        )
        _require(
            isinstance(version, int) and not isinstance(version, bool),
            f"The configuration's 'version' field must be the whole number {CONFIG_VERSION}, "
            f"not {_shown(version)}.",
        )
        _require(
            version == CONFIG_VERSION,
            f"This run was written by an incompatible vqkit (config version {version!r}, "
            f"this vqkit reads version {CONFIG_VERSION}).",
        )
        # vqkit writes every section; one missing was removed by hand, and its defaults would
        # describe another model than the run's weights.
        missing = [name for name in ("model", "train") if name not in data]
        _require(
            not missing,
            f"The configuration has no '{missing[0] if missing else ''}' section; vqkit writes "
            "every section into a run's config.json.",
        )
        return _from_dict(cls, data, "config")


def checked_model_config(config: ModelConfig) -> ModelConfig:
    """A copy of ``config`` checked again as if read from config.json: fields edited in place
    from Python (``config.quantizer.quantizer = "fsg"``) skip the checks the constructors ran."""
    return _from_dict(ModelConfig, dataclasses.asdict(config), "model")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build a dataclass from a dict, refusing unknown keys so typos and version drift surface."""
    _require(
        isinstance(data, dict), f"The '{where}' section of the configuration is not an object."
    )
    kinds = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(kinds))
    section = "configuration" if where == "config" else f"'{where}' section of the configuration"
    _require(not unknown, f"The {section} has unknown fields: {', '.join(unknown)}.")
    # Type first: a hand-edited file's 1.5 or "big" would otherwise fail deep inside torch, or
    # inside the range checks of __post_init__, with a Python error instead of a sentence.
    for name, value in data.items():
        _require(
            _fits(value, kinds[name]),
            f"The '{where}' config field '{name}' must be {_described(kinds[name])}, "
            f"not {_shown(value)}.",
        )
    return cls(**data)


UNIONS = (types.UnionType, typing.Union)  # str | None, and Optional[str]


def _fits(value: Any, kind: Any) -> bool:
    """Whether a JSON value suits a field annotated ``kind`` (list items and allowed ranges are
    the dataclass's own checks)."""
    if typing.get_origin(kind) in UNIONS:
        return any(_fits(value, option) for option in typing.get_args(kind))
    if isinstance(value, bool):  # True is an int to Python, never a count or a seed here
        return kind is bool
    if kind is float:  # NaN, infinities and ranges are left to the checks naming the flag
        return isinstance(value, float) or (
            isinstance(value, int) and abs(value) <= sys.float_info.max  # else math.isfinite fails
        )
    if dataclasses.is_dataclass(kind):  # a nested section, built (and checked) by its class
        return isinstance(value, dict | kind)
    if typing.get_origin(kind) is tuple:  # JSON has no tuples; the class converts a list
        return isinstance(value, list | tuple)
    return isinstance(value, typing.get_origin(kind) or kind)


def _described(kind: Any) -> str:
    if typing.get_origin(kind) in UNIONS:
        return " or ".join(_described(option) for option in typing.get_args(kind))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names |= {type(None): "null", list: "a list"}
    return names.get(typing.get_origin(kind) or kind, "an object")


def _shown(value: Any) -> str:
    """A value as the user wrote it: JSON (true, null, NaN), strings in single quotes."""
    return repr(value) if isinstance(value, str) else json.dumps(value, default=repr)


def setting_text(value: Any) -> str:
    """A setting as a person writes it: strings bare, None as 'none', the rest as JSON."""
    if isinstance(value, str):
        return value
    return "none" if value is None else json.dumps(value)


def active_settings(config: RunConfig) -> dict[str, Any]:
    """``config.to_dict()`` without the settings that change nothing for this run (FSQ levels
    of a codebook quantizer, a warm-up fraction without a schedule, ...)."""
    settings = config.to_dict()
    for name in config.model.quantizer.idle_settings():
        del settings["model"]["quantizer"][name]
    for name in config.train.idle_settings():
        del settings["train"][name]
    return settings


def flat_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"model.quantizer.beta": 0.25, ...}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_differences(
    stored: dict[str, Any], given: dict[str, Any], may_change: Collection[str] = ()
) -> list[str]:
    """'KEY is X there, Y here' for each setting (dotted key) that differs between stored and
    given settings, apart from those in ``may_change``; a key only one side has differs too."""
    stored, given = flat_settings(stored), flat_settings(given)
    return [
        f"{key} is {_shown(stored.get(key))} there, {_shown(given.get(key))} here"
        for key in sorted(stored.keys() | given.keys())
        if key not in may_change and stored.get(key) != given.get(key)
    ]


# An efficient-sized codebook kept healthy (k-means init, EMA updates, dead-code restarts),
# shared by the 'fast' and 'best' presets.
_HEALTHY_EFFICIENT_CODEBOOK: dict[str, Any] = {
    "num_embeddings": 128,
    "embedding_dim": 32,
    "codebook_update": "ema",
    "dead_code_restart": 50,
    "codebook_init": "kmeans",
}

# The tutorial's Exercise 1 settings ('default'), its smaller Exercise 2 settings
# ('efficient'), and vqkit's faster and better variants of the latter.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "model": {"hidden_dim": 128, "quantizer": {"num_embeddings": 512, "embedding_dim": 64}},
        "train": {"epochs": 5},
    },
    "efficient": {
        "model": {"hidden_dim": 64, "quantizer": {"num_embeddings": 128, "embedding_dim": 32}},
        "train": {"epochs": 3},
    },
    # The efficient model tuned for time to quality on a CPU: the 'best' codebook options, a
    # higher peak rate under a one-cycle schedule, bf16 convolutions where native, channels-last
    # layout. Batches stay at 128: on MNIST this model is limited by optimiser steps; larger
    # batches lost more quality than they gained in speed (BENCHMARKS.md).
    "fast": {
        "model": {"hidden_dim": 64, "quantizer": _HEALTHY_EFFICIENT_CODEBOOK},
        "train": {
            "epochs": 2,
            "batch_size": 128,
            "lr": 2e-3,
            "lr_schedule": "onecycle",
            "precision": "auto",
            "channels_last": True,
        },
    },
    # The efficient model with the codebook options that measured best on MNIST in 3 epochs
    # (bench/codebook_variants.py, BENCHMARKS.md).
    "best": {
        "model": {"hidden_dim": 64, "quantizer": _HEALTHY_EFFICIENT_CODEBOOK},
        "train": {"epochs": 3},
    },
}


def preset_config(name: str) -> RunConfig:
    """The RunConfig of a named preset (see ``PRESETS``)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise InvalidValue(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    spec = PRESETS[name]
    quantizer = QuantizerConfig(**spec["model"].get("quantizer", {}))
    model_fields = {k: v for k, v in spec["model"].items() if k != "quantizer"}
    model = ModelConfig(quantizer=quantizer, **model_fields)
    return RunConfig(model=model, train=TrainConfig(**spec.get("train", {})), preset=name)


# Bounds far above any useful prior (the default has 7 layers of 32 channels, kernel 3; a 7x7
# grid is covered from 6 layers, when L·(k//2) columns reach the far side): without them
# 10**9 layers were built for ten minutes until memory ran out, before the memory check could
# say anything.
MAX_PRIOR_LAYERS = 100
MAX_PRIOR_KERNEL = 63


@dataclass
class PriorConfig:
    """Shape and training settings of a PixelCNN prior (stored as ``prior_config.json``)."""

    num_codes: int = 512  # K, taken from the VQ-VAE's codebook
    grid_size: int = 7  # side of the code grid
    channels: int = 32  # width of both stacks
    layers: int = 7  # gated layers; each one grows the receptive field by k//2
    kernel_size: int = 3  # k (odd): vertical kernel (k//2+1, k), horizontal (1, k//2+1)
    dropout: float = 0.1  # on the gated horizontal features, before their 1×1 projection
    conditional: bool = False  # condition on the class label
    num_classes: int = 10  # the dataset's classes, set by train_prior from its labels
    # training
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 2  # stop after this many epochs without a better test NLL
    seed: int = 0
    eval_batch_size: int = EVAL_BATCH_SIZE
    # Training autocast: 'auto' is bf16 where the hardware runs it natively (1.4x faster on an
    # AVX512-BF16 CPU). The loss (log_softmax) and every reported NLL stay fp32.
    precision: str = "auto"
    train_limit: int | None = None  # train on the first N training grids (tests, quick trials)
    test_limit: int | None = None
    # reliability: they change how a run survives faults, not what the prior learns
    checkpoint_every: int | None = None  # also save a resumable state every N steps
    skip_nonfinite: int = 0  # steps with a NaN/inf loss tolerated (skipped) before stopping
    deterministic: bool = False  # bitwise-reproducible kernels (resumed runs match exactly)

    def __post_init__(self) -> None:
        require_typed_settings(self, "prior")
        _require(self.num_codes >= 2, "The prior needs a codebook of at least 2 codes.")
        _require(self.grid_size >= 1, "The code grid size must be at least 1.")
        _require(self.channels >= 1, "The prior needs at least 1 channel (--channels).")
        _require(self.layers >= 1, "The prior needs at least 1 layer (--layers).")
        _require(
            self.kernel_size >= 3 and self.kernel_size % 2 == 1,
            f"The prior's kernel size must be an odd number >= 3, not {self.kernel_size}.",
        )
        _require(0.0 <= self.dropout < 1.0, "The dropout must be in [0, 1) (--dropout).")
        _require(self.num_classes >= 1, "The number of classes must be at least 1.")
        check_loop_settings(self)
        _require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "The prior's weight decay must be a finite number >= 0.",
        )
        _require(self.patience >= 1, "The patience must be at least 1 epoch (--patience).")
        _require(self.eval_batch_size >= 1, "The evaluation batch size must be at least 1.")
        _require(
            self.precision in PRECISIONS, f"--precision must be one of: {', '.join(PRECISIONS)}."
        )
        check_run_controls(self)

    def require_new_prior_bounds(self) -> None:
        """Bounds a new prior must keep, which priors saved before they existed may exceed
        (their prior_config.json still loads and resumes)."""
        _require(
            self.channels <= MAX_WIDTH,
            f"The prior's channels must be 1 to {MAX_WIDTH} (--channels), not {self.channels}.",
        )
        _require(
            self.layers <= MAX_PRIOR_LAYERS,
            f"The prior's layers must be 1 to {MAX_PRIOR_LAYERS} (--layers), not {self.layers}.",
        )
        _require(
            self.kernel_size <= MAX_PRIOR_KERNEL,
            f"The prior's kernel size must be an odd number from 3 to {MAX_PRIOR_KERNEL}, not "
            f"{self.kernel_size}.",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PriorConfig:
        return _from_dict(cls, data, "prior")


@dataclass
class ClassifierConfig:
    """Shape and training of the evaluation classifier."""

    dataset: str = "mnist"
    channels: tuple[int, int] = (32, 64)  # widths of the two conv blocks
    features: int = 128  # size of the penultimate layer (the Fréchet features)
    num_classes: int = 10
    dropout: float = 0.25
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    precision: str = "auto"  # training autocast: bf16 where the hardware runs it natively
    seed: int = 0
    train_limit: int | None = None  # first N training images only (tests)

    def __post_init__(self) -> None:
        require_typed_settings(self, "classifier", seed_name="The classifier's seed")
        self.channels = tuple(self.channels)
        _require(
            len(self.channels) == 2 and min(self.channels) >= 1,
            "The classifier needs two positive channel widths.",
        )
        for name, least in (("features", 1), ("num_classes", 2), ("epochs", 1), ("batch_size", 1)):
            value = getattr(self, name)
            _require(
                value >= least, f"The classifier's {name} must be at least {least}, not {value}."
            )
        _require(
            0.0 <= self.dropout < 1.0,
            f"The classifier's dropout must be at least 0 and below 1, not {self.dropout}.",
        )
        _require(
            math.isfinite(self.lr) and self.lr > 0,
            f"The classifier's learning rate must be a number above 0, not {self.lr}.",
        )
        _require(
            self.precision in PRECISIONS,
            f"The classifier's precision must be one of {', '.join(PRECISIONS)}, "
            f"not {self.precision!r}.",
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channels"] = list(self.channels)
        return data
