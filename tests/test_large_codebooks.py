"""Codebooks of more codes than a figure or a file can list one by one: an FSQ grid of up to
2^24 codes. Its usage counts are kept sparse, its figures tile the most used codes only, and
every number is checked against a plain count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqkit import codebook_view, runfiles, usage
from vqkit.cli import main
from vqkit.codebook_exemplars import exemplar_cells, first_cells
from vqkit.config import preset_config
from vqkit.data import load_split, write_own_dataset
from vqkit.model import VQVAE
from vqkit.report import write_report
from vqkit.report_html import fmt
from vqkit.training import train
from vqkit.usage import DENSE_COUNTS_UP_TO, count_codes, record_counts, usage_record

FSQ_LEVELS = [64, 64, 32]  # 131,072 codes: past DENSE_COUNTS_UP_TO
NUM_CODES = 64 * 64 * 32


def sparse_counts(num_codes: int, used: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(num_codes, dtype=torch.long)
    codes = torch.randperm(num_codes, generator=generator)[:used]
    counts[codes] = torch.randint(1, 1000, (used,), generator=generator)
    return counts


@pytest.mark.parametrize("num_codes", [128, DENSE_COUNTS_UP_TO, DENSE_COUNTS_UP_TO + 1, 2**24])
def test_the_usage_record_reads_back_the_counts_it_was_made_from(num_codes):
    counts = sparse_counts(num_codes, used=100)
    record = json.loads(json.dumps(usage_record(counts)))  # as written and read from disk
    assert ("counts" in record) == (num_codes <= DENSE_COUNTS_UP_TO)
    limit = 10 * num_codes if "counts" in record else 3000  # 100 used codes, not 2^24 zeros
    assert len(json.dumps(record)) < limit
    assert torch.equal(record_counts(record, num_codes), counts)
    assert record_counts(record, num_codes + 1) is None  # a record of another codebook size
    assert torch.equal(record_counts(record), counts)  # any size (the report, for plugins)


@pytest.mark.parametrize(
    "broken",
    [
        {"num_codes": 10, "used_codes": [1, 1], "used_counts": [2, 3]},  # a code listed twice
        {"num_codes": 10, "used_codes": [3, 1], "used_counts": [2, 3]},  # not ascending
        {"num_codes": 10, "used_codes": [1, 10], "used_counts": [2, 3]},  # outside the codebook
        {"num_codes": 10, "used_codes": [-1, 2], "used_counts": [2, 3]},
        {"num_codes": 10, "used_codes": [1, 2], "used_counts": [2, 0]},  # a used code uncounted
        {"num_codes": 10, "used_codes": [1, 2], "used_counts": [2]},
        {"num_codes": 10, "used_codes": [1, 2], "used_counts": [2, True]},
        {"num_codes": 10, "used_codes": [1.0, 2], "used_counts": [2, 3]},
        {"num_codes": 10, "used_codes": [1, 2], "used_counts": [2, 2**62]},
        {"num_codes": 10, "used_codes": "12", "used_counts": [2, 3]},
        {"num_codes": 9, "used_codes": [1, 2], "used_counts": [2, 3]},  # another codebook size
        {"used_codes": [1, 2], "used_counts": [2, 3]},
        {"counts": [0] * 9 + [True]},
        ["not", "a", "record"],
    ],
)
def test_a_malformed_record_gives_no_counts(broken):
    assert record_counts(broken, 10) is None


@pytest.mark.parametrize(
    "sizeless",
    [
        {"used_codes": [1, 2], "used_counts": [2, 3]},
        {"used_codes": [], "used_counts": []},
        {"num_codes": None, "used_codes": [1, 2], "used_counts": [2, 3]},
        {"num_codes": "10", "used_codes": [1, 2], "used_counts": [2, 3]},
    ],
)
def test_a_sparse_record_without_its_codebook_size_gives_no_counts_of_any_size(sizeless):
    # read for any size (the run listing and the report): no size to check the codes against
    assert record_counts(sizeless) is None


def test_a_valid_sparse_record_of_no_used_code_reads_as_zeros():
    record = {"num_codes": 10, "used_codes": [], "used_counts": []}
    assert torch.equal(record_counts(record, 10), torch.zeros(10, dtype=torch.long))


def test_counting_codes_of_a_huge_codebook_matches_a_plain_count():
    config = preset_config("efficient").model
    config.quantizer.quantizer = "fsq"
    config.quantizer.fsq_levels = [256, 256, 256]
    torch.manual_seed(0)
    model = VQVAE(config).eval()
    images = load_split("mnist", "test").images[:300]
    counts = count_codes(model, images, batch_size=128)
    expected = np.zeros(model.num_codes, dtype=np.int64)
    with torch.no_grad():
        np.add.at(expected, model.encode(images).numpy().ravel(), 1)
    assert counts.shape == (2**24,) and np.array_equal(counts.numpy(), expected)


def test_codes_given_as_tensors_or_int32_are_found_and_counted():
    codes = torch.tensor([[[3, 1], [1, 3]]])
    assert first_cells(codes, [torch.tensor(3)], 2) == {3: [(0, 0, 0)]}

    class Int32Codes(torch.nn.Module):  # a quantizer of one's own may return int32 grids
        num_codes = 5

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def encode(self, batch):
            return torch.tensor([[[4, 0], [4, 4]]], dtype=torch.int32).expand(len(batch), 2, 2)

    counts = count_codes(Int32Codes(), torch.zeros(3, 28, 28, dtype=torch.uint8), batch_size=2)
    assert counts.tolist() == [3, 0, 0, 0, 9]


def test_first_cells_of_many_codes_at_once_match_a_search_per_code():
    codes = torch.randint(0, 60, (40, 7, 7), generator=torch.Generator().manual_seed(3))
    wanted = [59, 0, 17, 33, 61]  # 61 is in no grid
    found = first_cells(codes, wanted, 4)
    assert list(found) == wanted
    for code in wanted:
        plain = []
        for index in range(codes.shape[0]):
            cells = torch.nonzero(codes[index] == code).tolist()
            if cells and len(plain) < 4:
                plain.append((index, *cells[0]))
        assert found[code] == plain == exemplar_cells(codes, code, 4), code


# The atlas's cap: tests/test_cli_gen.py, beside its other atlas tests.


def test_the_usage_figure_of_many_used_codes_spans_them_and_marks_the_dead(tmp_path):
    # 30,000 used codes of 120,000 drawn as at most USAGE_MAX_STEPS steps: the blue region
    # must still end where the dead codes' red band begins, a quarter of the axis in.
    from matplotlib.colors import to_rgb
    from PIL import Image

    counts = sparse_counts(120_000, used=30_000, seed=5)
    path = codebook_view.plot_usage(counts, tmp_path / "usage.png", images=1000)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blue = np.array([round(255 * c) for c in to_rgb(codebook_view.USED_COLOR)])
    columns = np.flatnonzero((np.abs(pixels - blue).sum(axis=2) < 12).sum(axis=0) >= 3)
    axis = np.flatnonzero((pixels.sum(axis=2) < 100).sum(axis=0) > 200)  # the frame's sides
    left, right = axis.min(), axis.max()
    assert abs((columns.max() - left) / (right - left) - 0.25) < 0.01
    assert columns.min() - left <= 2


@pytest.fixture(scope="module")
def large_fsq_run(tmp_path_factory):
    """An FSQ run of 131,072 codes on 300 training images (a dataset of one's own: counting
    the codes of every training image takes a moment), trained 1 epoch."""
    root = tmp_path_factory.mktemp("large-fsq")
    train_split, test_split = load_split("mnist", "train"), load_split("mnist", "test")
    data = write_own_dataset(
        root / "data",
        (train_split.images[:300], train_split.labels[:300]),
        (test_split.images[:100], test_split.labels[:100]),
    )
    config = preset_config("efficient")
    config.model.quantizer.quantizer = "fsq"
    config.model.quantizer.fsq_levels = FSQ_LEVELS
    config.train.dataset = "idx"
    config.train.epochs = 1
    return train(config, root / "run", device="cpu", data_dir=data, progress=False)


def test_a_large_codebook_keeps_sparse_counts_that_the_cache_and_report_read(
    large_fsq_run, monkeypatch
):
    run = large_fsq_run.run_dir
    counts = usage.code_usage(run, large_fsq_run.model)
    record = json.loads((run / runfiles.CODE_USAGE).read_text())
    assert "counts" not in record and record["num_codes"] == NUM_CODES
    assert record["used_codes"] == torch.nonzero(counts).flatten().tolist()
    assert int(counts.sum()) == 300 * 49

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the cached counts were not read")

    monkeypatch.setattr(usage, "count_codes", no_second_pass)
    assert torch.equal(usage.code_usage(run, large_fsq_run.model), counts)
    used = int((counts > 0).sum())
    text = write_report(run).read_text()
    cells = [f"<td class=num>{fmt(n)}</td>" for n in (NUM_CODES, used, NUM_CODES - used)]
    assert "".join(cells) in text


def test_the_codebook_command_names_the_codes_its_tiles_leave_out(
    large_fsq_run, tmp_path, capsys, monkeypatch
):
    from PIL import Image

    counts = usage.code_usage(large_fsq_run.run_dir, large_fsq_run.model)
    used = int((counts > 0).sum())
    assert used > 100  # of 14,700 cells
    # A cap the 300 images' codes exceed (the command reads it from there when it runs).
    monkeypatch.setattr(codebook_view, "MAX_TILED_CODES", 100)
    out_dir = tmp_path / "f"
    code = main(["codebook", str(large_fsq_run.run_dir), "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"codes used: {used} of {NUM_CODES} on the training set" in out
    assert "the atlas and the exemplars show the 100 most used codes" in out
    side = (10 * (28 + 2) + 2) * codebook_view.ATLAS_SCALE  # 10 x 10 tiles, 2 pixels apart
    atlas = Image.open(out_dir / runfiles.FIGURE_NAMES["codebook_atlas"])
    assert abs(atlas.size[0] - side) <= 1 and abs(atlas.size[1] - side) <= 1
