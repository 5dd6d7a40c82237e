"""The demo runs every stage into one folder and its headline numbers match the files."""

from __future__ import annotations

import json

from vqkit import runfiles
from vqkit.classifier import ClassifierConfig
from vqkit.demo import DemoResult, DemoSettings, format_headline, run_demo
from vqkit.fileio import read_jsonl
from vqkit.provenance import PRIOR_KEY, WEIGHTS_KEY, read_stamp

STAGES = [
    "train VQ-VAE",
    "codebook figures",
    "train prior",
    "samples",
    "interpolations",
    "score",
    "report",
]


def test_demo_writes_every_stage_and_reports_the_numbers_it_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))
    settings = DemoSettings(
        epochs=1,
        train_limit=2000,
        prior_epochs=1,
        prior_train_limit=2000,
        score_samples=200,
        classifier=ClassifierConfig(epochs=1, train_limit=2000),
    )
    result = run_demo(tmp_path / "demo", settings, device="cpu", progress=False, log=lambda _: None)
    run = tmp_path / "demo"

    assert list(json.loads((run / runfiles.TIMINGS).read_text())) == STAGES
    for name in runfiles.FIGURE_NAMES.values():
        assert (run / runfiles.FIGURES_DIR / name).is_file(), name
    html = (run / runfiles.REPORT).read_text()
    for section in ("samples", "interpolation", "prior", "codebook", "timing"):
        assert f'id="{section}"' in html, section

    metrics = read_jsonl(run / runfiles.METRICS)[-1]
    prior = min(read_jsonl(run / runfiles.PRIOR_METRICS), key=lambda r: r["test_bits_per_code"])
    fid = {
        row["name"]: row["fid"] for row in json.loads((run / runfiles.SCORES).read_text())["rows"]
    }
    assert result.headline["test_mse"] == metrics["test_mse"]
    assert result.headline["prior_bits_per_code"] == prior["test_bits_per_code"]
    assert result.headline["fid_prior"] == fid["prior"]
    assert str(result.report) in format_headline(result)
    # Every figure names the weights it came from; prior samples the prior too.
    stamps = {
        key: read_stamp(run / runfiles.FIGURES_DIR / name)
        for key, name in runfiles.FIGURE_NAMES.items()
    }
    assert all(WEIGHTS_KEY in found for found in stamps.values()), stamps
    assert {key for key, found in stamps.items() if PRIOR_KEY in found} == {
        "samples_prior",
        "samples_prior_conditional",
    }


def test_headline_says_when_used_codes_drew_exactly_like_random_ones(tmp_path):
    headline = {
        "test_mse": 0.004, "codes_used": 128, "num_codes": 128, "prior_bits_per_code": 2.0,
        "uniform_bits_per_code": 7.0, "fid_prior": 60.0, "fid_used": 900.0, "fid_random": 900.0,
    }  # fmt: skip
    result = DemoResult(tmp_path, tmp_path / "report.html", headline, {"train VQ-VAE": 1.0})
    text = format_headline(result)
    assert "codes used:         128 of 128 on the test set" in text
    assert "'used' draws exactly as 'random'" in text
    headline["fid_used"] = 850.0  # some codes unused in training: two different draws
    assert "'used' draws exactly" not in format_headline(result)
