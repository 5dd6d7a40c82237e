"""Presets match the tutorial; configs round-trip through JSON and reject bad values."""

from __future__ import annotations

import json

import pytest

from vqkit.config import RunConfig, preset_config, settings_differences
from vqkit.errors import VqkitError


def test_default_preset_is_the_tutorials_exercise_1():
    config = preset_config("default")
    q = config.model.quantizer
    assert (config.model.hidden_dim, q.embedding_dim, q.num_embeddings) == (128, 64, 512)
    assert (q.beta, config.train.lr, config.train.batch_size, config.train.epochs) == (
        0.25,
        1e-3,
        128,
        5,
    )


def test_efficient_preset_is_the_tutorials_exercise_2():
    config = preset_config("efficient")
    q = config.model.quantizer
    assert (config.model.hidden_dim, q.embedding_dim, q.num_embeddings) == (64, 32, 128)
    assert config.train.epochs == 3


def test_json_round_trip_is_exact():
    config = preset_config("efficient")
    config.train.seed = 7
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    "section,field,value,flag",
    [
        ("train", "epochs", 0, "--epochs"),
        ("train", "batch_size", -1, "--batch-size"),
        ("train", "lr", 0.0, "--lr"),
        ("train", "lr", float("nan"), "--lr"),
        ("model", "hidden_dim", 0, "--hidden-dim"),
        ("quantizer", "num_embeddings", 1, "--num-embeddings"),
        ("quantizer", "beta", -0.5, "--beta"),
    ],
)
def test_out_of_range_values_are_refused_with_a_sentence(section, field, value, flag):
    data = preset_config("default").to_dict()
    target = data["model"]["quantizer"] if section == "quantizer" else data[section]
    target[field] = value
    with pytest.raises(VqkitError) as info:
        RunConfig.from_dict(data)
    assert f"({flag}" in str(info.value) and str(info.value).endswith(".")


def test_unknown_fields_and_versions_are_refused():
    data = preset_config("default").to_dict()
    data["train"]["epoch"] = 3
    with pytest.raises(VqkitError, match="The 'train' section of the configuration has unknown"):
        RunConfig.from_dict(data)
    data = preset_config("default").to_dict()
    data["colour"] = "blue"
    with pytest.raises(VqkitError, match=r"^The configuration has unknown fields: colour\.$"):
        RunConfig.from_dict(data)
    data = preset_config("default").to_dict()
    data["version"] = 999
    with pytest.raises(VqkitError, match="incompatible"):
        RunConfig.from_dict(data)
    for section in ("model", "train"):
        data = preset_config("default").to_dict()
        del data[section]
        with pytest.raises(VqkitError, match=f"^The configuration has no '{section}' section;"):
            RunConfig.from_dict(data)
    data = preset_config("default").to_dict()
    for text in ("1", True):  # what a hand edit may leave: not the version number itself
        data["version"] = text
        with pytest.raises(VqkitError, match="'version' field must be the whole number 1, not"):
            RunConfig.from_dict(data)


def test_settings_differences_name_every_changed_key_but_the_allowed_ones():
    stored = {"train": {"lr": 0.003, "epochs": 3, "old": True}, "name": "a"}
    given = {"train": {"lr": 0.01, "epochs": 5, "new": None}, "name": "a"}
    # A key only one side has differs, unless the other side's absence means the same (null).
    assert settings_differences(stored, given, {"train.epochs"}) == [
        "train.lr is 0.003 there, 0.01 here",
        "train.old is true there, null here",
    ]
    assert settings_differences(stored, stored) == []
    assert settings_differences({"a": "x"}, {"a": "y"}) == ["a is 'x' there, 'y' here"]
