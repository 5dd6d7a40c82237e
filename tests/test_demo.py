"""The demo runs every stage into one folder and its headline numbers match the files."""

from __future__ import annotations

import json
import signal
import threading

from PIL import Image

from vqkit import demo, prior_training, runfiles, usage
from vqkit.classifier import ClassifierConfig
from vqkit.cli import main
from vqkit.demo import DemoResult, DemoSettings, format_headline, run_demo
from vqkit.errors import VqkitError
from vqkit.fileio import read_jsonl
from vqkit.provenance import MADE_WITH_KEY, PRIOR_KEY, WEIGHTS_KEY, read_stamp
from vqkit.run_lock import LOCK_NAME, RunLock
from vqkit.training import TrainingInterrupted, stopped_at_once

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
    real_score_run, refusals = demo.score_run, []

    def score_run_while_another_writer_tries(run_dir, *args, **kwargs):
        # The demo holds its folder between its stages: another writer (a thread of its own)
        # is refused, naming the demo.
        def another_writer() -> None:
            try:
                RunLock().acquire(run_dir, "train")
            except VqkitError as exc:
                refusals.append(str(exc))

        thread = threading.Thread(target=another_writer)
        thread.start()
        thread.join()
        return real_score_run(run_dir, *args, **kwargs)

    monkeypatch.setattr(demo, "score_run", score_run_while_another_writer_tries)
    # Each split is encoded once: the codebook's usage counts come from the code grids the prior
    # trains on (the training set was encoded twice, for the counts and for the prior).
    encoded, real_count, real_extract = [], usage.count_codes, prior_training.extract_codes

    def counting(model, images, *args, **kwargs):
        encoded.append(len(images))
        return real_count(model, images, *args, **kwargs)

    def extracting(model, images, *args, **kwargs):
        encoded.append(len(images))
        return real_extract(model, images, *args, **kwargs)

    monkeypatch.setattr(usage, "count_codes", counting)
    monkeypatch.setattr(prior_training, "extract_codes", extracting)
    result = run_demo(tmp_path / "demo", settings, device="cpu", progress=False, log=lambda _: None)
    run = tmp_path / "demo"

    assert list(json.loads((run / runfiles.TIMINGS).read_text())) == STAGES
    assert encoded == [60000, 10000]
    for name in runfiles.FIGURE_NAMES.values():
        assert (run / runfiles.FIGURES_DIR / name).is_file(), name
    assert len(refusals) == 1 and "Another vqkit process (demo, process" in refusals[0]
    assert not (run / LOCK_NAME).exists()
    html = (run / runfiles.REPORT).read_text()
    assert "still being trained" not in html  # its own lock is not another writer
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
    # The sample and interpolation figures record their settings: given to the commands, they
    # draw the same pixels.
    for key in ("samples_prior", "samples_used", "interpolation_random-mask"):
        figure = run / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES[key]
        with Image.open(figure) as png:
            made_with = json.loads(png.text[MADE_WITH_KEY])
        assert made_with.pop("command") == "demo"
        again = tmp_path / f"{key}.png"
        if key.startswith("samples_"):
            argv = ["sample", str(run), "--strategy", made_with["strategy"]]
            argv += ["--n", str(made_with["n"]), "--seed", str(made_with["seed"])]
        else:
            argv = ["interpolate", str(run), "--from", made_with["from"], "--to", made_with["to"]]
            argv += ["--mode", made_with["mode"], "--steps", str(made_with["steps"])]
            argv += ["--seed", str(made_with["seed"])]
        assert main([*argv, "--out", str(again), "--device", "cpu"]) == 0
        assert pixels(again) == pixels(figure), key


def pixels(png) -> bytes:
    with Image.open(png) as image:
        return image.tobytes()


def test_headline_says_when_used_codes_drew_exactly_like_random_ones(tmp_path):
    headline = {
        "test_mse": 0.004, "codes_used": 128, "num_codes": 128, "prior_bits_per_code": 2.0,
        "uniform_bits_per_code": 7.0, "fid_prior": 60.0, "fid_used": 900.0, "fid_random": 900.0,
    }  # fmt: skip
    result = DemoResult(tmp_path, tmp_path / "report.html", headline, {"train VQ-VAE": 1.0})
    text = format_headline(result)
    assert "codes used:         128 of 128 on the test set" in text  # a record before counts
    headline["test_images"] = 10000
    assert "codes used:         128 of 128 on the 10,000 test images" in format_headline(result)
    assert "prior bits/code:    2.000 (uniform 7.000)" in text
    headline["prior_conditional"] = True
    assert "prior bits/code:    2.000 given the class (uniform 7.000)" in format_headline(result)
    assert "'used' draws exactly as 'random'" in text
    headline["fid_used"] = 850.0  # some codes unused in training: two different draws
    assert "'used' draws exactly" not in format_headline(result)


def test_a_stopped_demo_says_where_it_stopped_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    # It ended in a bare "vqkit: interrupted.", though its VQ-VAE's state was saved and the
    # same demo command is refused on the folder it left.
    run_dir = tmp_path / "demo"

    def stopped_training(config, out, **kwargs):
        raise TrainingInterrupted(out, signal_number=signal.SIGTERM)

    monkeypatch.setattr(demo, "train", stopped_training)
    assert main(["demo", "--out", str(run_dir), "--quiet", "--device", "cpu"]) == 143
    said = capsys.readouterr().err.splitlines(keepends=True)[-1]  # after "[demo] train ..."
    assert said == (
        f"vqkit: stopped by SIGTERM in the demo's 'train VQ-VAE' stage; what it finished is "
        f"saved in {run_dir} (continue this stage with: vqkit train --resume {run_dir}; vqkit "
        f"report {run_dir} shows it; a new demo needs another --out).\n"
    )

    def ctrl_c_twice(config, out, **kwargs):
        raise stopped_at_once(out)

    # A second Ctrl-C ends training without a save of its own; the state saved before
    # continues the stage all the same (the demo had left the command out).
    monkeypatch.setattr(demo, "train", ctrl_c_twice)
    assert main(["demo", "--out", str(run_dir), "--quiet", "--device", "cpu"]) == 130
    assert f"(continue this stage with: vqkit train --resume {run_dir}; vqkit" in (
        capsys.readouterr().err
    )

    def ctrl_c(config, out, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train", ctrl_c)
    assert main(["demo", "--out", str(run_dir), "--quiet", "--device", "cpu"]) == 130
    assert "vqkit: interrupted in the demo's 'train VQ-VAE' stage; what it finished is saved" in (
        capsys.readouterr().err
    )
