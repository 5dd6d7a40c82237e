"""The HTML report: sections for exactly what a run holds, self-contained, robust to damage."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from report_helpers import (
    ALL_SECTIONS,
    FIGURE_KEYS,
    PRIOR_EPOCHS,
    SCORES,
    TIMINGS,
    TRAIN_ONLY_SECTIONS,
    UNIGRAM_BITS,
    copy_run,
    decode_data_uri,
    make_full_run,
    open_png,
    parse_page,
    read_scores,
    train_on,
)

from vqkit import prior_replacement, report_plots, runfiles
from vqkit.cli import main
from vqkit.data import OWN_DATASET, load_split
from vqkit.errors import VqkitError
from vqkit.images import save_grid
from vqkit.provenance import MADE_WITH_KEY
from vqkit.report import render_report, write_report
from vqkit.report_html import block_scale, image
from vqkit.runinfo import load_run_info
from vqkit.score import format_scores

DRAWN_PLOTS = 5  # full run: loss, test MSE, codes used, code usage histogram, prior NLL


@pytest.fixture(scope="module")
def bare_run(small_run, tmp_path_factory):
    return copy_run(small_run.run_dir, tmp_path_factory.mktemp("bare") / "run")


@pytest.fixture(scope="module")
def full_run(small_run, tmp_path_factory):
    return make_full_run(copy_run(small_run.run_dir, tmp_path_factory.mktemp("full") / "run"))


@pytest.fixture(scope="module")
def full_page(full_run) -> str:
    return write_report(full_run).read_text()


def sections_of(text: str) -> list[str]:
    return [i for i in parse_page(text).ids if i in ALL_SECTIONS]


def test_bare_training_run_has_only_its_sections(bare_run):
    path = write_report(bare_run)
    assert path == bare_run / runfiles.REPORT
    text = path.read_text()
    assert sections_of(text) == list(TRAIN_ONLY_SECTIONS)
    assert 'id="notes"' not in text  # nothing damaged, so nothing left out
    # Headline: the final test MSE and codes used from metrics.jsonl.
    final = [json.loads(line) for line in (bare_run / runfiles.METRICS).read_text().splitlines()]
    assert f"{final[-1]['test_mse']:.3g}" in text
    assert f"{final[-1]['codes_used']} / 128" in text


def test_full_run_has_every_section_in_order(full_page):
    assert sections_of(full_page) == list(ALL_SECTIONS)


def test_full_run_shows_the_numbers_of_its_files(full_page):
    # FIDs of prior / used / random in the headline, in that order.
    assert "12.8 / 95.2 / 210.5" in full_page  # one decimal, as the demo prints them
    # The prior table: the best test epoch (3.45 at epoch 2, not the last) and the baselines,
    # per code and image.
    assert "PixelCNN prior (epoch 2), on the test grids" in full_page
    assert "(epoch 3)" not in full_page
    # The unigram row is the training grids' entropy and says so (not under a "test" header).
    assert "<td>unigram baseline, the training grids&#x27; entropy</td>" in full_page
    assert "test bits per code" not in full_page
    assert f">{min(t for _, _, t in PRIOR_EPOCHS)}<" in full_page
    assert f">{UNIGRAM_BITS:.3f}<" in full_page and f">{UNIGRAM_BITS * 49:.1f}<" in full_page
    assert ">7.000<" in full_page and ">343.0<" in full_page  # uniform: log2(128), 49 codes
    # prior_metrics.jsonl has epoch_seconds: the prior's epochs get their table
    assert "<caption><h3>prior epochs</h3></caption>" in full_page
    # Every stage of timings.json, and their total.
    for stage in TIMINGS:
        assert f"<td>{stage}</td>" in full_page
    assert f">{sum(TIMINGS.values()):,.1f}<" in full_page
    # The demo records its report stage after writing the page: that total says it ends before.
    assert '<th scope="row">total before this report</th>' in full_page
    # Every scores.json row, and the mean label accuracy of the per-class prior rows.
    for row in SCORES["rows"]:
        assert f"<td>{row['name']}</td>" in full_page
    assert "scored against the test images of their class: classifier-FID 24.5" in full_page
    assert "label accuracy 94.5%</p>" in full_page  # as the CLI prints it, not 0.945
    assert "<td class=num>0.900</td>" in full_page  # confidence to three figures, not 0.9
    assert "<td class=num>94.0%</td>" in full_page  # the table's cell for the digit 0 row
    # Code usage: 96 of 128 codes used (the last quarter is dead).
    assert "<td class=num>96</td><td class=num>32</td>" in full_page


def test_every_image_is_an_embedded_png_and_files_are_embedded_unchanged(full_run, full_page):
    page = parse_page(full_page)
    embedded = [decode_data_uri(source) for source in page.images]
    for data in embedded:
        assert open_png(data).size[0] > 0
    figures = full_run / runfiles.FIGURES_DIR
    for key in FIGURE_KEYS:
        assert (figures / runfiles.FIGURE_NAMES[key]).read_bytes() in embedded, key
    assert (full_run / runfiles.RECONSTRUCTIONS).read_bytes() in embedded
    # Besides the files, five drawn plots: three training curves, code usage, prior NLL.
    assert len(embedded) == len(FIGURE_KEYS) + 1 + DRAWN_PLOTS


def test_a_link_out_of_the_run_folder_is_not_embedded(bare_run, tmp_path):
    """A received run folder's reconstructions.png linking to a PNG of one's own (any path its
    sender guessed) put that image into a report one may pass on."""
    run = copy_run(bare_run, tmp_path / "run")
    private = tmp_path / "private.png"
    Image.new("L", (28, 28), 200).save(private)
    (run / runfiles.RECONSTRUCTIONS).unlink()
    (run / runfiles.RECONSTRUCTIONS).symlink_to(private)
    page = write_report(run).read_text()
    embedded = [decode_data_uri(source) for source in parse_page(page).images]
    assert private.read_bytes() not in embedded
    assert "links outside the run folder" in page
    inside = run / "copy.png"  # a link within the folder is the folder's own file
    shutil.copyfile(private, inside)
    (run / runfiles.RECONSTRUCTIONS).unlink()
    (run / runfiles.RECONSTRUCTIONS).symlink_to(inside.name)
    page = write_report(run).read_text()
    assert private.read_bytes() in [decode_data_uri(s) for s in parse_page(page).images]


def test_page_is_self_contained(full_page):
    assert parse_page(full_page).script_tags == 0
    for needle in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert needle not in full_page, needle
    sources = re.findall(r'\ssrc="([^"]*)"', full_page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_usage_figure_replaces_the_drawn_histogram(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    figure = run / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES["codebook_usage"]
    figure.write_bytes((run / runfiles.RECONSTRUCTIONS).read_bytes())
    embedded = [decode_data_uri(s) for s in parse_page(write_report(run).read_text()).images]
    assert embedded.count(figure.read_bytes()) == 2  # as the usage figure and as reconstructions
    assert len(embedded) == len(FIGURE_KEYS) + 1 + DRAWN_PLOTS  # in the drawn histogram's place


def test_the_code_counts_follow_the_usage_record_they_are_read_from(bare_run):
    # They were cached on first read, so a record replaced afterwards still drew the old counts.
    info = load_run_info(bare_run)
    info.code_usage = {"counts": [3, 0, 1]}
    assert info.code_counts.tolist() == [3, 0, 1]
    info.code_usage = {"num_codes": 4, "used_codes": [2], "used_counts": [7]}
    assert info.code_counts.tolist() == [0, 0, 7, 0]


def test_damaged_scores_are_skipped_with_a_note(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    (run / runfiles.SCORES).write_text('{"rows": [{"fid": 3}')  # truncated
    text = write_report(run).read_text()
    ids = parse_page(text).ids
    assert "scores" not in ids and "notes" in ids and "samples" in ids
    assert "scores.json" in text and "95.2" not in text


def test_classes_without_a_row_are_said_under_the_scores(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    scores = json.loads((run / runfiles.SCORES).read_text())
    said = "No per-class prior row for class 2: the test set holds fewer than 2 images of it."
    (run / runfiles.SCORES).write_text(json.dumps({**scores, "classes_left_out": said}))
    html = render_report(load_run_info(run))
    assert html.index(said) > html.index('<div id="scores">')
    assert said not in render_report(load_run_info(full_run))


@pytest.mark.parametrize(
    "content",
    ['{"rows": []}', '{"rows": [{"fid": 1.0}]}', "[1, 2]", '{"rows": "x"}', "\xff\xfe"],
)
def test_malformed_scores_never_crash(full_run, tmp_path, content):
    run = copy_run(full_run, tmp_path / "run")
    (run / runfiles.SCORES).write_bytes(content.encode("latin-1"))
    info = load_run_info(run)
    assert info.scores is None and runfiles.SCORES in info.notes
    assert "scores" not in parse_page(write_report(run).read_text()).ids


def test_other_damaged_files_are_left_out(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    (run / runfiles.PRIOR_METRICS).write_text('not json\n{"epoch": 1}\n')
    (run / runfiles.TIMINGS).write_text('{"train": -1}')
    (run / runfiles.CODE_USAGE).write_text('{"counts": [1, "two"]}')
    broken = run / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES["interpolation_wipe"]
    broken.write_bytes(broken.read_bytes()[:100])  # truncated PNG
    (run / runfiles.PRIOR_CONFIG).write_text("{cut")  # noted where its settings would be
    text = write_report(run).read_text()
    ids = parse_page(text).ids
    assert "prior" not in ids
    assert "interpolation" in ids  # the two intact strips remain
    # Said at the top too, linking to the list at the bottom, which names every one of them.
    said = '5 files are missing, damaged or only partly shown in this report: <a href="#notes">'
    assert said in text
    listed = text[text.index('<div id="notes"') :]
    assert f"<code>{runfiles.PRIOR_CONFIG}</code> is damaged" in listed
    for name in (runfiles.PRIOR_METRICS, runfiles.TIMINGS, runfiles.CODE_USAGE, broken.name):
        assert name in text
    for source in parse_page(text).images:
        open_png(decode_data_uri(source))


def test_text_from_files_is_escaped(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    scores = json.loads((run / runfiles.SCORES).read_text())
    scores["rows"][0]["name"] = "<script>alert('x')</script> & co"
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    (run / runfiles.TIMINGS).write_text(json.dumps({"<b>bold</b>": 1.0}))
    text = write_report(run).read_text()
    assert "<script" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text


def test_resumed_run_counts_each_epoch_once(bare_run, tmp_path):
    run = copy_run(bare_run, tmp_path / "run")
    lines = (run / runfiles.METRICS).read_text().splitlines()
    record = json.loads(lines[-1])
    record["test_mse"] = 0.5
    (run / runfiles.METRICS).write_text("\n".join([*lines, "{torn", json.dumps(record)]) + "\n")
    info = load_run_info(run)
    assert len(info.metrics) == len(lines) and info.final["test_mse"] == 0.5


def test_missing_or_invalid_run_folder_is_a_clear_error(tmp_path, bare_run):
    with pytest.raises(VqkitError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VqkitError, match="not a run folder"):
        write_report(tmp_path / "empty")
    run = copy_run(bare_run, tmp_path / "run")
    (run / runfiles.REPORT).unlink(missing_ok=True)
    (run / runfiles.CONFIG).write_text("{")
    with pytest.raises(VqkitError, match="damaged"):
        write_report(run)
    assert not (run / runfiles.REPORT).exists()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
NUMBERS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3)
# Values close to the documented formats, where a malformed field is most likely to slip through.
NEAR_VALID = {
    runfiles.CODE_USAGE: st.fixed_dictionaries(
        {"counts": st.lists(NUMBERS, max_size=40), "images": NUMBERS}
    ),
    runfiles.SCORES: st.fixed_dictionaries(
        {
            "n": NUMBERS,
            "rows": st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["prior", "used", "random", "prior (digit 1)"])},
                    optional={"fid": NUMBERS, "confidence": NUMBERS, "label_accuracy": NUMBERS},
                ),
                max_size=4,
            ),
        }
    ),
    runfiles.TIMINGS: st.dictionaries(st.text(max_size=8), NUMBERS, max_size=4),
    runfiles.PRIOR_METRICS: st.fixed_dictionaries(
        {"epoch": NUMBERS, "train_bits_per_code": NUMBERS, "test_bits_per_code": NUMBERS},
        optional={"uniform_bits_per_code": NUMBERS, "test_bits_per_image": NUMBERS},
    ),
}


@pytest.fixture(scope="module")
def fuzz_run(bare_run, tmp_path_factory):
    """A run holding only its config, so each fuzzed report draws at most one plot."""
    run = tmp_path_factory.mktemp("fuzz") / "run"
    run.mkdir()
    shutil.copyfile(bare_run / runfiles.CONFIG, run / runfiles.CONFIG)
    return run


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(sorted(NEAR_VALID)),
    value=st.one_of(JSON_VALUES, st.sampled_from(sorted(NEAR_VALID)).flatmap(NEAR_VALID.get)),
)
def test_any_json_in_an_optional_file_never_crashes(fuzz_run, name, value):
    path = fuzz_run / name
    try:
        path.write_text(json.dumps(value) + "\n")
        info = load_run_info(fuzz_run)
        loaded = {
            runfiles.CODE_USAGE: info.code_usage,
            runfiles.SCORES: info.scores,
            runfiles.TIMINGS: info.timings,
            runfiles.PRIOR_METRICS: info.prior_metrics or None,
        }[name]
        assert (loaded is None) == (name in info.notes)  # kept, or left out with a note
        text = write_report(fuzz_run).read_text()
        for source in parse_page(text).images:
            open_png(decode_data_uri(source))
    finally:
        path.unlink()


@pytest.mark.parametrize("epoch", [2**64, 2**62, -1])
def test_an_epoch_number_beyond_64_bits_is_left_out_not_plotted(fuzz_run, epoch):
    # Found by the fuzzer above: epoch 2**64 became a NumPy object array and matplotlib's
    # tick formatter raised TypeError.
    path = fuzz_run / runfiles.PRIOR_METRICS
    record = {"epoch": epoch, "train_bits_per_code": 0, "test_bits_per_code": 0}
    try:
        path.write_text(json.dumps(record) + "\n")
        info = load_run_info(fuzz_run)
        assert info.prior_metrics == [] and runfiles.PRIOR_METRICS in info.notes
        write_report(fuzz_run)
    finally:
        path.unlink()


def test_figures_of_new_strategies_show_up_with_their_scores(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    figures = run / runfiles.FIGURES_DIR
    reconstructions = (run / runfiles.RECONSTRUCTIONS).read_bytes()
    (figures / "samples_greedy.png").write_bytes(reconstructions)
    (figures / "interpolation_spiral.png").write_bytes(reconstructions)
    (figures / "notes_other.png").write_bytes(reconstructions)  # no known prefix: not shown
    scores = json.loads((run / runfiles.SCORES).read_text())
    scores["rows"].append({"name": "greedy", "fid": 42.5})
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    text = write_report(run).read_text()
    embedded = [decode_data_uri(s) for s in parse_page(text).images]
    assert embedded.count(reconstructions) == 3  # the reconstructions and the two new figures
    assert "<figcaption>greedy</figcaption>" in text
    assert '<p class="scores">classifier-FID 42.5</p>' in text
    assert "interpolation spiral" in text


def test_score_lines_name_their_n_and_used_like_random_is_explained(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    scores = json.loads((run / runfiles.SCORES).read_text())
    for row in scores["rows"]:
        row["images"] = 200 if "(digit" in row["name"] else 2000
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    text = write_report(run).read_text()
    assert '<p class="scores">scored on 2000 images (not the ones shown): classifier-FID' in text
    assert "mean over 10 classes, 200 images each (not the ones shown), scored against" in text
    assert "score alike because every code is in use" not in text  # a quarter are dead
    usage = json.loads((run / runfiles.CODE_USAGE).read_text())
    usage["counts"] = [count + 1 for count in usage["counts"]]  # every code used
    usage["images"] = sum(usage["counts"]) // 49
    (run / runfiles.CODE_USAGE).write_text(json.dumps(usage))
    assert "score alike because every code is in use" in write_report(run).read_text()


def test_scores_of_earlier_weights_are_marked_stale(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    weights = run / runfiles.WEIGHTS
    scores = json.loads((run / runfiles.SCORES).read_text())
    scores["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    scores["prior_sha256"] = None  # scored before the run had a prior
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    assert not load_run_info(run).scores_stale
    assert "Stale: these scores" not in write_report(run).read_text()
    # The model trains on (any change of the weights file's bytes): the scores are stale.
    train_on(run)
    assert load_run_info(run).scores_stale
    text = write_report(run).read_text()
    assert "Stale: these scores were measured on earlier" in text
    assert f"run vqkit score {run} again" in text
    assert "stale: scored on earlier weights" in text  # the headline's FID card
    # score refuses a prior of earlier weights, so with one the advice starts with the prior.
    info = load_run_info(run)
    info.prior_stale = True
    assert (
        f"train a new prior (vqkit train-prior {run} --restart), then run vqkit score {run} again"
        in render_report(info)
    )
    # Same weights, but the prior that was scored is not the run's prior any more: only the
    # prior's rows are stale, and the page says which and why.
    scores["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    scores["prior_sha256"] = "0" * 64
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    assert load_run_info(run).scores_stale == "an earlier prior"
    text = write_report(run).read_text()
    assert "Stale: the prior rows were scored with an earlier prior; the other rows" in text
    assert "stale: scored on earlier weights" not in text
    assert "the prior&#x27;s is stale, scored with an earlier prior" in text
    # A scores.json without digests (older vqkit) is not called stale: nothing to compare.
    del scores["weights_sha256"], scores["prior_sha256"]
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    assert not load_run_info(run).scores_stale


def test_a_plot_is_shown_at_96_css_pixels_per_inch_of_its_own_dpi():
    """Text drawn at N points stays N points on the page: a 150-dpi report plot and the
    100-dpi usage histogram of the same pixel width are shown at different widths."""
    buffer = io.BytesIO()
    Image.new("RGB", (300, 120), "white").save(buffer, format="PNG")
    assert 'style="width:192px"' in image(buffer.getvalue(), "plot")  # 300 px at 150 dpi
    assert 'style="width:288px"' in image(buffer.getvalue(), "usage", density=100 / 96)


def test_the_lines_of_one_plot_differ_in_more_than_colour(monkeypatch):
    # The prior's train and test curves were told apart by red and blue alone.
    drawn = []
    monkeypatch.setattr(report_plots, "_png", lambda figure: drawn.append(figure) or b"")
    report_plots.prior_nll_png([1, 2], [3.0, 2.5], [3.1, 2.7], {"uniform": 7.0, "unigram": 6.0})
    (axes,) = drawn[0].axes
    looks = [(line.get_marker(), line.get_linestyle()) for line in axes.get_lines()]
    assert len(looks) == 4 and len(set(looks)) == 4, looks


@pytest.mark.parametrize(
    ("test_bits", "unigram", "uniform_drawn"), [([2.5, 2.3], 3.4, False), ([5.6, 5.5], 5.8, True)]
)
def test_a_uniform_line_far_above_the_prior_is_named_not_drawn(
    monkeypatch, test_bits, unigram, uniform_drawn
):
    # A 7-bit uniform line stretched the axis so far that the prior's gap to the unigram
    # baseline, the comparison that matters, shrank to a sliver.
    drawn = []
    monkeypatch.setattr(report_plots, "_png", lambda figure: drawn.append(figure) or b"")
    baselines = {"uniform": 7.0, "unigram": unigram}
    report_plots.prior_nll_png([1, 2], [2.6, 2.4], test_bits, baselines)
    (axes,) = drawn[0].axes
    top = axes.get_ylim()[1]
    heights = {line.get_label(): line.get_ydata() for line in axes.get_lines()}
    assert (top > 7.0) == uniform_drawn and top > unigram
    uniform = next(label for label in heights if label.startswith("uniform (7.00"))
    assert uniform.endswith("above this axis)") != uniform_drawn
    assert (len(heights[uniform]) > 0) == uniform_drawn  # a legend entry alone has no points


def test_configuration_leaves_out_the_settings_that_change_nothing(full_run):
    """The efficient preset's codebook learns by its loss: no FSQ levels or EMA settings."""
    html = render_report(load_run_info(full_run))
    assert "<td>quantizer.beta</td>" in html and "<td>quantizer.num_embeddings</td>" in html
    for idle in ("fsq_levels", "ema_decay", "ema_epsilon", "kmeans_iters"):
        assert f"<td>quantizer.{idle}</td>" not in html, idle
    # A constant rate has no warm-up, and an uncompiled run no compile mode.
    assert "<td>lr_schedule</td>" in html and "<td>compile</td>" in html
    assert "<td>warmup_fraction</td>" not in html and "<td>compile_mode</td>" not in html
    # The helper's prior is unconditional: it has no use for the number of classes.
    assert "<td>conditional</td>" in html and "<td>num_classes</td>" not in html
    assert "given each image" not in html  # nor are its bits given a class


def test_per_class_rows_of_a_dataset_with_named_classes_say_which(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    assert "<td>prior (digit 3)</td>" in write_report(run).read_text()  # MNIST: digits
    for name, edit in ((runfiles.CONFIG, "train"), (runfiles.SCORES, None)):
        data = json.loads((run / name).read_text())
        (data[edit] if edit else data)["dataset"] = "fashion-mnist"
        (run / name).write_text(json.dumps(data))
    text = write_report(run).read_text()
    assert "<td>prior (class 3: Dress)</td>" in text and "(digit 3)" not in text
    assert "prior (class 9: Ankle boot)" in format_scores(read_scores(run))  # vqkit score too
    # One's own data has classes, not digits, and no names for them.
    own = {**read_scores(run), "dataset": "idx"}
    assert "prior (class 9) " in format_scores(own) and "digit" not in format_scores(own)


def test_the_headline_says_how_many_test_images_its_numbers_cover(small_run):
    # train --test-limit 500 measured them on 500 images; vqkit evaluate uses all 10,000.
    html = render_report(load_run_info(small_run.run_dir))
    assert html.count("on the 500 test images") >= 2  # test MSE and codes used
    assert "on the test set" not in html


def test_scores_without_sample_images_say_how_to_make_them(full_run, tmp_path):
    assert "No sample images yet" not in render_report(load_run_info(full_run))
    run = copy_run(full_run, tmp_path / "run")
    for panel in (run / runfiles.FIGURES_DIR).glob("samples_*.png"):
        panel.unlink()
    html = render_report(load_run_info(run))
    assert f"No sample images yet: vqkit sample {run} --strategy prior --n 64 --out" in html
    assert "vqkit demo writes them all" in html
    # The demo trains only the named datasets: a run of one's own is not sent to it.
    scores = json.loads((run / runfiles.SCORES).read_text())
    (run / runfiles.SCORES).write_text(json.dumps({**scores, "dataset": OWN_DATASET}))
    assert "vqkit demo" not in render_report(load_run_info(run))
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    # What the note says to run adds the panel.
    figure = run / runfiles.FIGURES_DIR / "samples_random.png"
    assert main(["sample", str(run), "--strategy", "random", "--n", "4", "--out", str(figure)]) == 0
    html = render_report(load_run_info(run))
    assert "No sample images yet" not in html and "samples: uniformly random codes" in html
    # Without a prior of the current weights the prior's command would be refused: the note
    # offers the random panel's and says to train a prior first.
    figure.unlink()
    (run / runfiles.PRIOR_WEIGHTS).unlink()  # an unfinished prior: only --restart replaces it
    html = render_report(load_run_info(run))
    assert f"vqkit sample {run} --strategy random --n 64 --out" in html
    assert "--strategy prior" not in html and f"(vqkit train-prior {run} --restart)" in html
    for name in prior_replacement.PRIOR_FILE_NAMES:  # no prior at all
        (run / name).unlink(missing_ok=True)
    assert f"(vqkit train-prior {run})" in render_report(load_run_info(run))


def test_the_page_says_what_its_figures_and_numbers_are(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    # An interpolation strip records its two images as given; the page names them, a bare
    # index as the test image it is ("from 18 to ..." read like t's range).
    strip = run / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES["interpolation_wipe"]
    ends = {MADE_WITH_KEY: json.dumps({"from": "18", "to": "digit:8", "mode": "wipe"})}
    save_grid(load_split("mnist", "test").images[:10], strip, columns=10, stamp=ends)
    # A conditional prior: its panel draws the classes in turn, its bits are given the class.
    settings = json.loads((run / runfiles.PRIOR_CONFIG).read_text())
    (run / runfiles.PRIOR_CONFIG).write_text(json.dumps({**settings, "conditional": True}))
    # A prior panel drawn for one class (vqkit sample --digit 4) says that class instead.
    panel = run / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES["samples_prior"]
    one_class = {MADE_WITH_KEY: json.dumps({"strategy": "prior", "digit": 4})}
    save_grid(load_split("mnist", "test").images[:8], panel, columns=8, stamp=one_class)
    assert "PixelCNN prior, given class 4</figcaption>" in write_report(run).read_text()
    save_grid(load_split("mnist", "test").images[:8], panel, columns=8)
    # Dead-code restarts counted per epoch (every VQ run records them, 0 without restarts).
    records = [json.loads(line) for line in (run / runfiles.METRICS).read_text().splitlines()]
    lines = [json.dumps({**r, "codebook_restarts": 7 * r["epoch"]}) for r in records]
    (run / runfiles.METRICS).write_text("\n".join(lines) + "\n")
    assert "code restarts so far" not in write_report(run).read_text()  # restarts are off
    config = json.loads((run / runfiles.CONFIG).read_text())
    config["model"]["quantizer"]["dead_code_restart"] = 50
    (run / runfiles.CONFIG).write_text(json.dumps(config))
    page = write_report(run).read_text()
    assert "top left to bottom right (from test:18 to digit:8)</figcaption>" in page
    assert "then the other image itself." in page  # the lead says what the ends are
    assert "PixelCNN prior, given the classes 0, 1, 2, ... in turn, in reading order" in page
    given = "given each image&#x27;s class (epoch 2), on the test grids"
    assert f"<td>PixelCNN prior, {given}</td>" in page
    assert "which the baselines are not." in page
    assert '<th scope="col" class=num>code restarts so far</th>' in page
    assert f"<td class=num>{7 * records[-1]['epoch']}</td></tr>" in page
    # Which way is better, on every headline card of a number.
    cards = dict(re.findall(r'<div class="label">([^<]*)</div>.*?"detail">([^<]*)</div>', page))
    assert sorted(cards) == ["classifier-FID", "codes used", "prior bits per code", "test MSE"]
    for label in ("classifier-FID", "prior bits per code", "test MSE"):
        assert "lower is better" in cards[label], label


def test_every_training_curve_names_its_y_axis(bare_run, monkeypatch):
    # The three per-epoch plots had a title and an epoch axis, but no y-axis label.
    labels = []
    styled = report_plots._style

    def spy(axes, title, xlabel, ylabel=""):
        styled(axes, title, xlabel, ylabel)
        labels.append((title, axes.get_ylabel()))

    monkeypatch.setattr(report_plots, "_style", spy)
    render_report(load_run_info(bare_run))
    curves = dict(labels)
    assert curves["training loss"] == "MSE + VQ loss"
    assert curves["test MSE"] == "mean squared error"
    assert [label for title, label in labels if title.startswith("codes used")] == ["codes"]


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pixel_grids_saved_enlarged_are_shown_at_whole_multiples_with_hard_edges():
    # vqkit saves its digit grids at 2x; as 484 pixels wide they were called "natural" and
    # smoothed by the browser (soft on a dense screen). Their source is 242 pixels.
    source = np.random.default_rng(0).integers(0, 256, (31, 242), dtype=np.uint8)
    doubled = source.repeat(2, 0).repeat(2, 1)
    assert block_scale(png_of(doubled)) == 2
    assert block_scale(png_of(source.repeat(3, 0).repeat(3, 1))) == 3
    assert block_scale(png_of(source)) == 1
    edged = doubled.copy()
    edged[0, 1] ^= 1  # one pixel off its block: a figure with smoothed text, not a grid
    assert block_scale(png_of(edged)) == 1
    assert 'class="pixels"' in image(png_of(doubled), "grid", pixelated=True)
    assert 'style="width:484px"' in image(png_of(doubled), "grid", pixelated=True)
    small = source[:, :100].repeat(2, 0).repeat(2, 1)  # 100 source pixels: 5x would be 500
    assert 'style="width:400px"' in image(png_of(small), "grid", pixelated=True)  # at most 4x
    assert 'class="natural"' in image(png_of(edged), "figure", pixelated=True)


def test_the_page_prints_whole_tables_and_scrolls_them_by_keyboard(bare_run):
    text = render_report(load_run_info(bare_run))
    assert "@media print" in text and ".scroll { overflow:visible; }" in text
    assert '<div class="scroll" tabindex="0">' in text
    assert '<meta name="color-scheme" content="light">' in text


def test_the_header_does_not_show_the_folder_path_as_typed(bare_run, monkeypatch):
    # A report mailed to someone showed the sender's own folders (or "." from inside the run).
    monkeypatch.chdir(bare_run)
    text = render_report(load_run_info("."))
    subtitle = re.search(r"<p class='subtitle'>([^<]*)</p>", text)[1]
    assert subtitle.endswith("epochs") and str(bare_run) not in subtitle, subtitle
    assert f"<h1>{bare_run.name}</h1>" in text


def test_the_fid_card_says_how_many_images_each_score_used(full_run, tmp_path):
    run = copy_run(full_run, tmp_path / "run")
    scores = json.loads((run / runfiles.SCORES).read_text())
    for row in scores["rows"]:
        row["images"] = 200
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    text = write_report(run).read_text()
    card = re.search(r"classifier-FID</div><div class=\"value\">[^<]*</div>"
                     r"<div class=\"detail\">([^<]*)</div>", text)[1]  # fmt: skip
    assert card.endswith("lower is better; 200 images each"), card


def test_session_rows_mark_what_they_lack_and_the_footer_is_in_utc(bare_run):
    from vqkit import report

    record = json.loads((bare_run / runfiles.ENVIRONMENT).read_text().splitlines()[0])
    del record["quantizer"], record["precision"]  # a train-prior session records neither
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", report._sessions_table([record]))
    assert cells[-1] == "–" and cells[4] == "–", cells  # as missing values elsewhere, not ""
    footer = report._footer(load_run_info(bare_run))
    assert re.search(r"Written by vqkit on \d{4}-\d\d-\d\d \d\d:\d\d UTC\.", footer), footer


def test_every_fid_in_the_score_table_has_one_decimal(full_run, tmp_path):
    # The column read "0", "41.39", "248", "976.1": their decimal points did not line up.
    run = copy_run(full_run, tmp_path / "run")
    scores = json.loads((run / runfiles.SCORES).read_text())
    for row, fid in zip(scores["rows"], [0.0, 41.3877, 248.04, 976.14], strict=False):
        row["fid"] = fid
    (run / runfiles.SCORES).write_text(json.dumps(scores))
    table = re.search(r"<h3>Sample quality</h3>.*?</table>", write_report(run).read_text(), re.S)
    cells = re.findall(r"<td class=num>([^<]*)</td>", table[0])
    for shown in ("0.0", "41.4", "248.0", "976.1"):
        assert shown in cells, cells


def test_no_figure_repeats_its_caption_as_its_alt_text(full_run):
    # A screen reader reads both: 12 of 17 figures said the same words twice.
    text = render_report(load_run_info(full_run))
    figure = r'<img [^>]*alt="([^"]*)"[^>]*>(?:<figcaption>([^<]*)</figcaption>)?'
    figures = re.findall(figure, text)
    assert len(figures) >= 10
    repeated = [alt for alt, caption in figures if alt == caption]
    assert not repeated, repeated
    usage = next(alt for alt, _ in figures if alt.startswith("bar chart"))
    assert re.search(r": \d+ of 128 codes used$", usage), usage


@pytest.mark.parametrize(("used", "warned"), [(31, True), (32, False)])
def test_a_collapsed_codebook_is_called_so_in_the_headline(bare_run, tmp_path, used, warned):
    # A bare run using 9 of its 128 codes got no word about it in the report.
    run = copy_run(bare_run, tmp_path / "run")
    lines = (run / runfiles.METRICS).read_text().splitlines()
    last = json.loads(lines[-1])
    last["codes_used"] = used  # a quarter of 128 is 32
    (run / runfiles.METRICS).write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    text = render_report(load_run_info(run))
    assert ("(a collapsed codebook)" in text) == warned


def test_a_single_epochs_point_is_labelled_with_its_value(monkeypatch):
    # After one epoch each curve is one dot on an axis of 5-digit ticks: its value is written.
    drawn = []
    monkeypatch.setattr(report_plots, "_png", lambda figure: drawn.append(figure) or b"")
    report_plots.epoch_curve_png([1], [0.018231], "test MSE", "red")
    report_plots.epoch_curve_png([1, 2], [0.02, 0.018231], "test MSE", "red")
    one, two = ([t.get_text() for t in figure.axes[0].texts] for figure in drawn)
    assert one == ["0.01823"] and two == []


def test_the_prior_stage_and_epoch_tables_keep_fixed_decimals_per_column(full_run):
    # Their columns read 118, 343, 302.1 and 163, 13, 66.5, 0.0213: points that did not line up.
    text = render_report(load_run_info(full_run))
    for heading, places in (
        ("<h2>Prior</h2>", (3, 1)),
        ("<caption><h3>pipeline stages</h3></caption>", (1,)),
        ("<caption><h3>training epochs</h3></caption>", (1, 0)),
        ("<caption><h3>prior epochs</h3></caption>", (1,)),
    ):
        section = text[text.index(heading) :]
        table = section[: section.index("</table>")]
        for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]:  # after the header row
            cells = re.findall(r"<td class=num>(?:<strong>)?([^<]*)<", row)
            for cell, decimals in zip(cells, places, strict=False):
                pattern = rf"[\d,]+\.\d{{{decimals}}}" if decimals else r"[\d,]+"
                assert re.fullmatch(pattern, cell), (heading, cell)


def test_every_table_is_named_by_its_caption(full_page):
    # Screen readers announce a table by its caption; a heading above it is not tied to it.
    tables = re.findall(r"<table>(.*?)</table>", full_page, re.S)
    assert len(tables) >= 8
    named = r"<caption( class=hidden)?>(?:<h3>)?([^<]+)(?:</h3>)?</caption><thead>"
    captions = [re.match(named, t) for t in tables]
    assert all(captions), [t[:80] for t, c in zip(tables, captions, strict=True) if not c]
    names = [c[2] for c in captions if c]
    assert {"training epochs", "sessions", "per-epoch numbers", "sample quality"} <= set(names)
    # A shown caption stays a heading: a reader's list of headings lost these tables when
    # captions replaced their h3 headings.
    headings = re.findall(r"<h3>([^<]+)</h3>", full_page)
    assert [c[2] for c in captions if c and not c[1]] == [h for h in headings if h in names]
    assert "training epochs" in headings
