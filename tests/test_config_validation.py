"""Bad settings are refused with one sentence before any work starts: wrongly typed fields of a
hand-edited config.json, models the 28×28 grayscale data cannot feed, seeds torch cannot take,
and demo score counts the score stage would refuse only after training. Good configs still load.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import fails_cleanly, refused_by_parser

from vqkit.checkpoint import load_config
from vqkit.classifier import ClassifierConfig
from vqkit.cli import build_parser, main
from vqkit.config import PRESETS, QuantizerConfig, RunConfig, TrainConfig, preset_config
from vqkit.demo import DemoSettings
from vqkit.errors import VqkitError
from vqkit.prior import PriorConfig
from vqkit.training import train

TINY = [
    "--train-limit", "256", "--test-limit", "64", "--batch-size", "32", "--hidden-dim", "16",
    "--embedding-dim", "8", "--num-embeddings", "16", "--quiet", "--device", "cpu",
]  # fmt: skip
SEED_RULE = "must be a whole number from -2**63 to 2**63 - 1"


def edited(section: str, field: str, value) -> dict:
    """The efficient preset's config.json with one field changed."""
    data = preset_config("efficient").to_dict()
    target = data["model"]["quantizer"] if section == "quantizer" else data[section]
    target[field] = value
    return data


# --- a hand-edited config.json -------------------------------------------------------------

BAD_FIELDS = [
    ("train", "epochs", 1.5, "'train' config field 'epochs' must be an integer, not 1.5."),
    ("quantizer", "num_embeddings", 2.5, "field 'num_embeddings' must be an integer, not 2.5."),
    ("train", "seed", True, "field 'seed' must be an integer, not true."),
    ("model", "hidden_dim", "big", "config field 'hidden_dim' must be an integer, not 'big'."),
    ("model", "in_channels", 3, "in_channels must be 1, not 3"),
    ("model", "image_size", 32, "image_size must be 28, not 32"),
    ("train", "seed", 2**70, f"--seed {SEED_RULE}"),
    ("train", "seed", -(2**63) - 1, f"--seed {SEED_RULE}"),
    ("train", "lr", float("nan"), "learning rate"),
    ("train", "lr", "0.001", "field 'lr' must be a number, not '0.001'."),
    ("train", "lr", 10**400, "field 'lr' must be a number"),  # too large for a float
    ("train", "train_limit", 2.0, "field 'train_limit' must be an integer or null, not 2.0."),
    ("train", "data_dir", 3, "field 'data_dir' must be a string or null, not 3."),
    ("train", "channels_last", 1, "field 'channels_last' must be true or false, not 1."),
    ("quantizer", "fsq_levels", "8,5", "field 'fsq_levels' must be a list, not '8,5'."),
    ("quantizer", "quantizer", None, "field 'quantizer' must be a string, not null."),
    ("model", "quantizer", 5, "field 'quantizer' must be an object, not 5."),
    # The smallest values just outside each bound.
    ("quantizer", "embedding_dim", 0, "The embedding dimension must be 1 to 4096"),
    ("quantizer", "embedding_dim", 4097, "(--embedding-dim), not 4097."),
    ("model", "hidden_dim", 0, "The hidden width must be 1 to 4096 (--hidden-dim), not 0."),
    ("model", "hidden_dim", 4097, "The hidden width must be 1 to 4096 (--hidden-dim), not 4097."),
    ("quantizer", "fsq_levels", [8, 1], "FSQ levels must be a list of whole numbers >= 2"),
    ("quantizer", "kmeans_iters", 0, "k-means takes 1 to 1000 iterations (--kmeans-iters), not 0"),
    ("model", "residual_blocks", -1, "residual blocks must be 0 to 100 (--residual-blocks)"),
    ("model", "residual_blocks", 101, "residual blocks must be 0 to 100 (--residual-blocks)"),
    ("train", "warmup_fraction", 1.0, "warm-up fraction must lie strictly between 0 and 1"),
    ("train", "skip_nonfinite", -1, "--skip-nonfinite cannot be negative."),
    ("train", "train_limit", 0, "--train-limit must be at least 1."),
    ("train", "eval_batch_size", 0, "The evaluation batch size must be at least 1"),
    ("train", "dataset", "cifar", "Unknown dataset 'cifar'; valid datasets are: mnist, fashion"),
    ("quantizer", "beta", float("inf"), "The commitment weight beta must be a finite number"),
]


@pytest.mark.parametrize(("section", "field", "value", "fragment"), BAD_FIELDS)
def test_bad_config_fields_are_refused_by_from_dict(section, field, value, fragment):
    with pytest.raises(VqkitError) as info:
        RunConfig.from_dict(edited(section, field, value))
    message = str(info.value)
    assert fragment in message and message.endswith(".") and "\n" not in message


@pytest.mark.parametrize(("section", "field", "value", "fragment"), BAD_FIELDS[:6])
def test_train_refuses_a_bad_config_file_before_training(
    section, field, value, fragment, tmp_path, capsys
):
    config = tmp_path / "g.json"
    config.write_text(json.dumps(edited(section, field, value)))
    before = config.read_text()
    out = tmp_path / "runs" / "o"
    # No TINY here: its --hidden-dim and --num-embeddings would replace the bad values.
    argv = ["train", "--config", str(config), "--out", str(out), "--quiet", "--device", "cpu"]
    fails_cleanly(
        capsys, [*argv, "--train-limit", "256", "--test-limit", "64"],
        f"'{config}' cannot be used: ", fragment,
    )  # fmt: skip
    assert not out.exists() and config.read_text() == before


def test_numpy_numbers_and_tuples_are_taken_as_the_values_they_are():
    # A sweep over np.arange values was refused: "must be an integer or null, not
    # np.int64(100)"; fsq_levels given as a tuple too.
    train = TrainConfig(
        train_limit=np.int64(100), lr=np.float32(0.5), epochs=np.int32(2), deterministic=np.True_
    )
    assert (train.train_limit, train.lr, train.epochs, train.deterministic) == (100, 0.5, 2, True)
    assert [type(v) for v in (train.train_limit, train.lr, train.epochs)] == [int, float, int]
    assert type(train.deterministic) is bool
    quantizer = QuantizerConfig(quantizer="fsq", fsq_levels=(np.int64(8), 5, np.uint8(5)))
    assert quantizer.fsq_levels == [8, 5, 5] and {type(v) for v in quantizer.fsq_levels} == {int}
    assert json.loads(json.dumps(RunConfig(train=train).to_dict()))["train"]["train_limit"] == 100
    assert PriorConfig(epochs=np.int64(3), lr=np.float32(0.1)).lr == 0.1  # not 0.10000000149
    assert ClassifierConfig(channels=(np.int64(4), 8)).to_dict()["channels"] == [4, 8]
    assert DemoSettings(interpolation_pair=(np.int64(3), 8)).interpolation_pair == (3, 8)
    assert TrainConfig(lr=Fraction(1, 1000)).lr == 0.001  # other real numbers: their value
    with pytest.raises(VqkitError, match="must be an integer or null, not 2.5"):
        TrainConfig(train_limit=np.float64(2.5))


def test_prior_config_fields_are_type_checked():
    good = PriorConfig(num_codes=16, channels=4, conditional=True, seed=5).to_dict()
    assert PriorConfig.from_dict(json.loads(json.dumps(good))).to_dict() == good
    for field, value, fragment in [
        ("conditional", 1, "The 'prior' config field 'conditional' must be true or false"),
        ("layers", 2.5, "field 'layers' must be an integer, not 2.5."),
        ("dropout", "0.1", "field 'dropout' must be a number, not '0.1'."),
        ("seed", False, "field 'seed' must be an integer, not false."),
        ("seed", 2**64, f"--seed {SEED_RULE}"),
        ("weight_decay", float("inf"), "weight decay must be a finite number"),
    ]:
        with pytest.raises(VqkitError) as info:
            PriorConfig.from_dict({**good, field: value})
        assert fragment in str(info.value), str(info.value)


# --- seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "efficient", "--epochs", "1", "--out", "OUT", "--device", "cpu"],
        ["train-prior", "RUN"],
        ["sample", "RUN", "--strategy", "random", "--out", "OUT.png"],
        ["interpolate", "RUN", "--from", "0", "--to", "1", "--out", "OUT.png"],
        ["score", "RUN"],
        ["demo"],
    ],
    ids=lambda argv: argv[0],
)
@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**63), "-9223372036854775809"])
def test_every_command_refuses_a_seed_torch_cannot_take(argv, seed, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("OUT", "OUT.png", "RUN") else a for a in argv]
    refused_by_parser(capsys, [*argv, f"--seed={seed}"], f"argument --seed: {SEED_RULE}, not")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**63 - 1])
def test_seeds_torch_takes_are_accepted(seed):
    for argv in (
        ["train-prior", "RUN"],
        ["sample", "RUN", "--strategy", "random", "--out", "x.png"],
    ):
        assert build_parser().parse_args([*argv, f"--seed={seed}"]).seed == seed
    assert TrainConfig(seed=seed).seed == PriorConfig(seed=seed).seed == seed


def test_configs_built_in_code_refuse_bad_seeds_too():
    for seed in (2**63, True):
        with pytest.raises(VqkitError, match="--seed must be"):
            TrainConfig(seed=seed)
        with pytest.raises(VqkitError, match="--seed must be"):
            PriorConfig(seed=seed)


# --- demo ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", ["1", "0", "-5"])
def test_demo_refuses_too_few_score_samples_at_parse_time(count, capsys):
    refused_by_parser(
        capsys,
        ["demo", f"--score-samples={count}"],
        f"argument --score-samples: must be a whole number >= 2, not {count}",
    )


def test_demo_accepts_two_score_samples():
    assert build_parser().parse_args(["demo", "--score-samples", "2"]).score_samples == 2


# --- good configs still load ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    config = preset_config(name)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_real_runs_config_loads_and_trains_again(tmp_path: Path, capsys):
    first, second = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    argv = ["train", "--preset", "efficient", "--epochs", "1", "--seed", "-3", *TINY]
    assert main([*argv, "--out", str(first)]) == 0
    saved = load_config(first)
    assert saved.train.seed == -3 and saved.model.quantizer.num_embeddings == 16
    data = json.loads((first / "config.json").read_text())
    assert RunConfig.from_dict(data) == saved
    assert main(["train", "--config", str(first), "--out", str(second), "--quiet"]) == 0
    assert load_config(second) == saved
    capsys.readouterr()


@pytest.mark.parametrize(
    ("quantizer", "fragment"),
    [
        # A typo's 10^8 iterations ran inside the first step for a quarter hour, past Ctrl-C.
        ({"codebook_init": "kmeans", "kmeans_iters": 1001}, "takes 1 to 1000 iterations"),
        # Every step counts each code's use in a tensor of that many entries: 63 levels of 2
        # overflowed inside the first forward, the folder left behind.
        ({"quantizer": "fsq", "fsq_levels": [2] * 25}, "make 33,554,432 codes; at most 16,77"),
    ],
)
def test_new_runs_keep_bounds_that_saved_runs_may_exceed(quantizer, fragment, tmp_path):
    config = preset_config("efficient").to_dict()
    config["model"]["quantizer"].update(quantizer)
    config = RunConfig.from_dict(config)  # a run saved before the bounds still loads
    config.train.train_limit, config.train.test_limit = 64, 64
    with pytest.raises(VqkitError, match=re.escape(fragment)):
        train(config, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()
    # Just inside them: 2^24 FSQ codes, 1000 iterations; and idle settings are not checked.
    QuantizerConfig(quantizer="fsq", fsq_levels=[2] * 24).require_new_run_bounds()
    QuantizerConfig(codebook_init="kmeans", kmeans_iters=1000).require_new_run_bounds()
    QuantizerConfig(kmeans_iters=10**8, fsq_levels=[2] * 63).require_new_run_bounds()
