"""Quantizer settings: validation, JSON round trips, the `best` preset and the train flags."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vqkit.cli import build_parser
from vqkit.cli.train_cmd import config_from_args
from vqkit.config import PRESETS, QuantizerConfig, RunConfig, preset_config
from vqkit.errors import VqkitError
from vqkit.model import VQVAE, ModelConfig


def test_new_fields_survive_a_json_round_trip():
    config = preset_config("efficient")
    config.model.quantizer = QuantizerConfig(
        num_embeddings=64,
        embedding_dim=16,
        quantizer="vq",
        codebook_update="ema",
        ema_decay=0.95,
        ema_epsilon=1e-4,
        dead_code_restart=25,
        dead_code_threshold=0.25,
        codebook_init="kmeans",
        kmeans_iters=7,
        fsq_levels=[7, 5, 3],
        gradient_estimator="rotation",
    )
    restored = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.model.quantizer.fsq_levels == [7, 5, 3]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"ema_decay": 0.0}, "EMA decay must lie strictly between 0 and 1 (--ema-decay), not 0"),
        ({"ema_decay": 1.0}, "(--ema-decay), not 1.0"),
        ({"ema_decay": 1.5}, "(--ema-decay), not 1.5"),
        ({"ema_decay": float("nan")}, "(--ema-decay), not nan"),
        ({"ema_epsilon": 0.0}, "EMA smoothing epsilon must be a finite number > 0"),
        ({"dead_code_restart": -1}, "restart window must be >= 0 steps (--dead-code-restart"),
        ({"dead_code_threshold": 1.0}, "threshold must lie in [0, 1) (--dead-code-threshold)"),
        ({"dead_code_threshold": -0.1}, "threshold must lie in [0, 1) (--dead-code-threshold)"),
        ({"kmeans_iters": 0}, "1 to 1000 iterations (--kmeans-iters), not 0"),
        ({"quantizer": "pq"}, "Unknown --quantizer 'pq'; choose one of: vq, fsq"),
        ({"codebook_update": "adam"}, "Unknown --codebook-update 'adam'; choose one of: loss"),
        ({"codebook_init": "normal"}, "Unknown --codebook-init 'normal'"),
        ({"gradient_estimator": "gumbel"}, "Unknown --gradient-estimator 'gumbel'"),
    ],
)
def test_bad_values_raise_one_sentence(settings, fragment):
    with pytest.raises(VqkitError) as info:
        QuantizerConfig(**settings)
    message = str(info.value)
    assert fragment in message and message.endswith(".") and "\n" not in message


def test_fsq_code_count_is_the_product_of_levels():
    assert QuantizerConfig(quantizer="fsq", fsq_levels=[8, 5, 5, 5]).num_codes == 1000
    assert QuantizerConfig(num_embeddings=128, fsq_levels=[8, 5, 5, 5]).num_codes == 128


def test_best_preset_is_efficient_sized_with_codebook_health():
    best = preset_config("best")
    efficient = preset_config("efficient")
    assert best.model.hidden_dim == efficient.model.hidden_dim == 64
    assert best.model.quantizer.num_codes == 128 and best.model.quantizer.embedding_dim == 32
    assert best.train.epochs == 3
    assert "best" in PRESETS
    assert best.model.quantizer != efficient.model.quantizer


def parse(*flags: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", *flags]))


def test_cli_flags_reach_the_config():
    quantizer = parse(
        "--preset",
        "efficient",
        "--codebook-update",
        "ema",
        "--ema-decay",
        "0.9",
        "--dead-code-restart",
        "40",
        "--dead-code-threshold",
        "0.2",
        "--codebook-init",
        "kmeans",
        "--kmeans-iters",
        "4",
        "--gradient-estimator",
        "rotation",
    ).model.quantizer
    assert (quantizer.codebook_update, quantizer.ema_decay) == ("ema", 0.9)
    assert (quantizer.dead_code_restart, quantizer.dead_code_threshold) == (40, 0.2)
    assert (quantizer.codebook_init, quantizer.kmeans_iters) == ("kmeans", 4)
    assert quantizer.gradient_estimator == "rotation"
    assert parse("--residual-blocks", "2").model.residual_blocks == 2
    fsq = parse("--quantizer", "fsq", "--fsq-levels", "8,4,4").model.quantizer
    assert (fsq.quantizer, fsq.fsq_levels, fsq.num_codes) == ("fsq", [8, 4, 4], 128)


def test_cli_refuses_bad_values(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "--fsq-levels", "8,x"])
    assert info.value.code == 2
    with pytest.raises(VqkitError, match="EMA decay"):
        parse("--ema-decay", "1.2")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ema-decay", "0.9"], "--ema-decay does nothing without --codebook-update ema"),
        (["--codebook-update", "ema", "--dead-code-threshold", "0.5"], "--dead-code-threshold"),
        (["--dead-code-restart", "40", "--dead-code-threshold", "0.5"], "--dead-code-threshold"),
        (["--kmeans-iters", "4"], "--kmeans-iters does nothing without --codebook-init kmeans"),
        (["--quantizer", "fsq", "--num-embeddings", "64"], "--num-embeddings does nothing"),
        (["--fsq-levels", "8,4,4"], "--fsq-levels does nothing without --quantizer fsq"),
        (["--quantizer", "fsq", "--beta", "3"], "--beta does nothing without --quantizer vq"),
    ],
)
def test_a_quantizer_flag_that_would_do_nothing_is_refused(flags, message):
    # Saved and silently ignored, a sweep over such a flag trained the same model each time.
    with pytest.raises(VqkitError, match=message):
        parse("--preset", "efficient", *flags)
    # The presets' own values of those fields are not flags given, so they pass.
    assert parse("--preset", "efficient", "--quantizer", "fsq").model.quantizer.num_codes == 1000


# A valid value other than the default for every field that may be idle.
OTHER_VALUES = {
    "num_embeddings": 64, "beta": 0.9, "codebook_update": "ema", "ema_decay": 0.5,
    "ema_epsilon": 1e-3, "dead_code_restart": 3, "dead_code_threshold": 0.5,
    "codebook_init": "kmeans", "kmeans_iters": 2, "gradient_estimator": "rotation",
    "fsq_levels": [4, 4, 4, 4],
}  # fmt: skip


def trained_weights(quantizer: QuantizerConfig) -> dict[str, torch.Tensor]:
    """The weights after three seeded training steps of a small model on fixed images."""
    torch.manual_seed(0)
    model = VQVAE(ModelConfig(hidden_dim=8, quantizer=quantizer))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=torch.Generator())
    for _ in range(3):
        model.initialize(images)
        out = model(images)
        loss = (out.reconstruction - images.unsqueeze(1) / 255).pow(2).mean() + out.vq_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize(
    "settings",
    [{}, {"codebook_update": "ema"}, {"quantizer": "fsq", "embedding_dim": 4}],
    ids=["vq", "vq-ema", "fsq"],
)
def test_idle_settings_change_nothing_that_trains(settings):
    """What the report leaves out as idle really is: another value trains the same weights."""
    base = QuantizerConfig(**{"embedding_dim": 4, **settings})
    idle = base.idle_settings()
    assert idle and not idle & set(settings)
    expected = trained_weights(base)
    refused = set()
    for name in sorted(idle):
        try:
            changed = QuantizerConfig(**{**dataclasses.asdict(base), name: OTHER_VALUES[name]})
        except VqkitError:  # refused outright for this quantizer (FSQ has no codebook)
            refused.add(name)
            continue
        got = trained_weights(changed)
        assert got.keys() == expected.keys(), name
        assert all(torch.equal(got[k], expected[k]) for k in got), name
    # Only FSQ refuses settings, and only those of a codebook: every other one was trained.
    codebook = {"codebook_init", "codebook_update", "dead_code_restart", "gradient_estimator"}
    assert refused == (codebook if base.quantizer == "fsq" else set())
