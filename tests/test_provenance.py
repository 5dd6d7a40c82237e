"""Figures carry the digests of the weights they came from, and the report marks stale ones."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from report_helpers import copy_run, make_full_run, parse_page, train_on

from vqkit import runfiles, usage
from vqkit.checkpoint import load_model
from vqkit.cli import main
from vqkit.codebook_view import write_codebook_figures
from vqkit.images import save_grid
from vqkit.provenance import (
    PRIOR_KEY,
    WEIGHTS_KEY,
    figure_staleness,
    made_with,
    read_stamp,
    staleness,
    stamp,
)
from vqkit.report import write_report
from vqkit.runinfo import load_run_info
from vqkit.usage import code_usage


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_stamp_survives_the_png_and_names_the_weights_file(small_run, tmp_path):
    model = load_model(small_run.run_dir)
    made_by = stamp(model)
    assert made_by == {WEIGHTS_KEY: sha256(small_run.run_dir / runfiles.WEIGHTS)}  # no prior
    grid = save_grid(torch.rand(4, 28, 28), tmp_path / "grid.png", stamp=made_by)
    assert read_stamp(grid) == made_by
    figures = write_codebook_figures(
        model, torch.arange(model.num_codes), torch.zeros(2, 28, 28, dtype=torch.uint8),
        tmp_path / "codebook", made_by, exemplar_images=torch.zeros(3, 28, 28, dtype=torch.uint8),
    )  # fmt: skip
    assert len(figures.paths()) == 4
    for path in figures.paths():  # matplotlib's PNGs too
        assert read_stamp(path) == made_by
    assert read_stamp(save_grid(torch.rand(1, 28, 28), tmp_path / "plain.png")) == {}
    (tmp_path / "text.png").write_text("not a png")
    assert read_stamp(tmp_path / "text.png") == {}


def test_a_pipe_named_like_a_figure_is_not_waited_on(tmp_path):
    # PIL's own open of a named pipe waits for a writer that never comes.
    os.mkfifo(tmp_path / "sample.png")
    assert read_stamp(tmp_path / "sample.png") == {}
    assert made_with(tmp_path / "sample.png") == {}


def test_staleness_compares_every_digest_the_figure_names(tmp_path):
    png = save_grid(
        torch.rand(1, 28, 28), tmp_path / "p.png", stamp={WEIGHTS_KEY: "a", PRIOR_KEY: "b"}
    )
    assert figure_staleness(png, {WEIGHTS_KEY: "a", PRIOR_KEY: "b"}) is None
    # the model trained on; the prior is gone
    assert figure_staleness(png, {WEIGHTS_KEY: "c", PRIOR_KEY: "b"}) == "earlier VQ-VAE weights"
    assert (
        figure_staleness(png, {WEIGHTS_KEY: "a", PRIOR_KEY: None})
        == "a prior the run no longer holds"
    )
    weights_only = save_grid(torch.rand(1, 28, 28), tmp_path / "w.png", stamp={WEIGHTS_KEY: "a"})
    assert figure_staleness(weights_only, {WEIGHTS_KEY: "a", PRIOR_KEY: "new prior"}) is None
    unstamped = save_grid(torch.rand(1, 28, 28), tmp_path / "u.png")
    assert figure_staleness(unstamped, {WEIGHTS_KEY: "x", PRIOR_KEY: None}) is None  # no stamp


def test_staleness_says_what_changed_weights_first():
    made = {WEIGHTS_KEY: "a", PRIOR_KEY: "b"}
    assert staleness(made, {WEIGHTS_KEY: "a", PRIOR_KEY: "b"}) is None
    assert staleness(made, {WEIGHTS_KEY: "c", PRIOR_KEY: "d"}) == "earlier VQ-VAE weights"
    assert staleness(made, {WEIGHTS_KEY: "a", PRIOR_KEY: "d"}) == "an earlier prior"
    assert staleness(made, {WEIGHTS_KEY: "a", PRIOR_KEY: None}) == "a prior the run no longer holds"
    assert (
        staleness({WEIGHTS_KEY: "a", PRIOR_KEY: None}, {WEIGHTS_KEY: "a", PRIOR_KEY: "d"}) is None
    )


def test_a_figure_linking_out_of_the_run_folder_is_not_read(small_run, tmp_path, monkeypatch):
    """Its stamp was read to call it stale or not: a received run folder's link made vqkit
    open a PNG of one's own that the report then leaves out anyway."""
    run = copy_run(small_run.run_dir, tmp_path / "run")
    (run / runfiles.FIGURES_DIR).mkdir(exist_ok=True)
    private = save_grid(torch.rand(1, 28, 28), tmp_path / "private.png", stamp={WEIGHTS_KEY: "x"})
    linked = run / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES["samples_random"]
    linked.symlink_to(private)
    inside = save_grid(
        torch.rand(1, 28, 28),
        run / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES["samples_used"],
        stamp={WEIGHTS_KEY: "x"},
    )
    opened = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
    )
    info = load_run_info(run)
    assert info.figures == {"samples_random": linked, "samples_used": inside}
    assert info.stale_figures == {"samples_used": "earlier VQ-VAE weights"}  # the one inside
    assert not [path for path in opened if Path(path).resolve() == private.resolve()]


def test_the_report_marks_figures_of_earlier_weights(small_run, tmp_path, capsys):
    run = make_full_run(copy_run(small_run.run_dir, tmp_path / "run"))
    figures = run / runfiles.FIGURES_DIR
    out = figures / runfiles.FIGURE_NAMES["samples_random"]
    argv = ["sample", str(run), "--strategy", "random", "--n", "4", "--device", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert read_stamp(out) == {WEIGHTS_KEY: sha256(run / runfiles.WEIGHTS)}
    assert load_run_info(run).stale_figures == {}  # the helper's figures carry no stamp
    assert "Stale, made from earlier" not in write_report(run).read_text()
    train_on(run)
    assert load_run_info(run).stale_figures == {"samples_random": "earlier VQ-VAE weights"}
    page = parse_page(write_report(run).read_text())
    stale = [c for c in page.captions if c.startswith("Stale, made from earlier VQ-VAE weights")]
    assert len(stale) == 1 and stale[0].endswith("uniformly random codes"), page.captions


def test_code_usage_of_earlier_weights_is_marked_stale_and_counted_again(usage_run, tmp_path):
    """code_usage.json records the weights it counted: after they change, the report marks its
    table stale and code_usage() counts again instead of reading the old counts."""
    run = copy_run(usage_run[0], tmp_path / "run")
    recorded = json.loads((run / runfiles.CODE_USAGE).read_text())
    assert recorded["weights_sha256"] == sha256(run / runfiles.WEIGHTS)
    assert not load_run_info(run).code_usage_stale
    assert "Stale: these counts" not in write_report(run).read_text()
    train_on(run)
    assert load_run_info(run).code_usage_stale
    assert "Stale: these counts are of earlier VQ-VAE weights" in write_report(run).read_text()
    model = load_model(run)
    code_usage(run, model)  # counts again: the cache answers for the earlier weights only
    counted = json.loads((run / runfiles.CODE_USAGE).read_text())
    assert counted["weights_sha256"] == sha256(run / runfiles.WEIGHTS) != recorded["weights_sha256"]
    assert not load_run_info(run).code_usage_stale


def test_counts_name_the_weights_counted_when_a_training_saves_meanwhile(
    usage_run, tmp_path, monkeypatch
):
    # Readers take no lock: `vqkit codebook` may count codes while `train --resume` saves. The
    # cache must name the weights it counted, not the file as it is once the count ends.
    run = copy_run(usage_run[0], tmp_path / "run")
    earlier = load_model(run)
    train_on(run)  # the newer weights, set aside to land in the middle of the count
    newer = (run / runfiles.WEIGHTS).read_bytes()
    (run / runfiles.WEIGHTS).write_bytes((usage_run[0] / runfiles.WEIGHTS).read_bytes())
    (run / runfiles.CODE_USAGE).unlink()
    real_count = usage.count_codes

    def count_while_a_training_saves(*args, **kwargs):
        (run / runfiles.WEIGHTS).write_bytes(newer)
        return real_count(*args, **kwargs)

    monkeypatch.setattr(usage, "count_codes", count_while_a_training_saves)
    counts = code_usage(run, earlier)
    assert torch.equal(counts, usage_run[1])  # the earlier model's counts
    recorded = json.loads((run / runfiles.CODE_USAGE).read_text())["weights_sha256"]
    assert recorded == sha256(usage_run[0] / runfiles.WEIGHTS) != sha256(run / runfiles.WEIGHTS)
    assert load_run_info(run).code_usage_stale  # the report says they are not the newer's
    monkeypatch.setattr(usage, "count_codes", real_count)
    newer_counts = code_usage(run, load_model(run))  # counted again, not the earlier's answer
    assert json.loads((run / runfiles.CODE_USAGE).read_text())["weights_sha256"] == sha256(
        run / runfiles.WEIGHTS
    )
    assert newer_counts.sum() == counts.sum()
