"""Every option of `demo` and `train-prior` reaches the settings it names (parsing only)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from vqkit.cli import build_parser, main
from vqkit.cli.train_prior_cmd import config_from_args
from vqkit.demo import DemoSettings


def test_demo_flags_reach_the_demo_settings(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_demo(out_dir, settings, *, device, progress):
        seen.update(out=out_dir, settings=settings, device=device, progress=progress)
        return SimpleNamespace()

    monkeypatch.setattr("vqkit.demo.run_demo", fake_demo)  # demo_cmd imports it when it runs
    monkeypatch.setattr("vqkit.demo.format_headline", lambda result: "headline")
    flags = [
        "demo", "--dataset", "fashion-mnist", "--preset", "fast", "--epochs", "5",
        "--prior-epochs", "3", "--score-samples", "50", "--seed", "4",
        "--out", str(tmp_path / "d"), "--quiet", "--device", "cpu",
    ]  # fmt: skip
    assert main(flags) == 0
    settings = seen["settings"]
    assert (settings.dataset, settings.preset, settings.seed) == ("fashion-mnist", "fast", 4)
    assert (settings.epochs, settings.prior_epochs, settings.score_samples) == (5, 3, 50)
    assert seen == {**seen, "out": str(tmp_path / "d"), "device": "cpu", "progress": False}
    assert capsys.readouterr().out.strip() == "headline"
    # Without the flags, the demo's own settings (the command line repeats none of them).
    assert main(["demo", "--out", str(tmp_path / "e")]) == 0
    assert seen["settings"] == DemoSettings(seed=0)


def test_train_prior_flags_reach_the_prior_config():
    args = build_parser().parse_args(
        ["train-prior", "runs/x", "--dropout", "0.3", "--layers", "5", "--channels", "24",
         "--conditional", "--epochs", "7", "--lr", "0.002", "--batch-size", "64"]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.dropout, config.layers, config.channels) == (0.3, 5, 24)
    assert (config.conditional, config.epochs, config.lr, config.batch_size) == (True, 7, 2e-3, 64)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--lr", "abc"], "vqkit train: error: argument --lr: invalid float value"),
        (["sample", "r", "--strategy", "random", "--out", "a.png", "--n", "0"], "argument --n"),
        (["trian"], "vqkit: error: argument COMMAND: invalid choice: 'trian'"),
        # int() and float() read other scripts' digits: "\u0663" (Arabic-Indic) was 3.
        (["train", "--epochs", "\u0663"], "argument --epochs: invalid integer value"),
        (["train", "--hidden-dim", "\u0663"], "argument --hidden-dim: invalid int value"),
        (["train", "--lr", "\u0663"], "argument --lr: invalid float value"),
        (["train", "--fsq-levels", "8,\u0663"], "argument --fsq-levels: must be whole numbers"),
        (["sample", "r", "--out", "a.png", "--seed", "\u0663"], "argument --seed: must be"),
        (["train", "--lrr", "1"], "vqkit train: error: unrecognized arguments: --lrr 1"),
        # A shortened flag is no flag: --epoch quietly meant --epochs.
        (["train", "--epoch", "1"], "vqkit train: error: unrecognized arguments: --epoch 1"),
        (
            ["sample", "r", "--strategy", "used", "--weight", "--out", "a.png"],
            "unrecognized arguments: --weight",
        ),
    ],
)
def test_a_mistyped_flag_is_one_line_not_the_usage_block(argv, fragment, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.count("\n") == 1 and "usage:" not in err and fragment in err, err
    assert err.rstrip().endswith("--help').")


def test_version_is_the_one_pyproject_declares(capsys):
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"vqkit {declared['project']['version']}"
