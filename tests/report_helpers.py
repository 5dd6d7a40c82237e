"""Builders and parsers shared by the report tests.

``make_full_run`` turns a copy of a real run folder into one holding every file the report can
show, written in the formats documented in ``vqkit.runfiles`` with synthetic but plausible
values. ``page_images`` and ``section_ids`` read a report back with the standard library's
HTML parser, independently of the code that wrote it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import save

from vqkit import runfiles
from vqkit.checkpoint import read_tensors, save_weights
from vqkit.data import load_split
from vqkit.fileio import append_jsonl, write_json_atomic
from vqkit.images import save_grid
from vqkit.prior import PixelCNNPrior, PriorConfig, save_prior_config

NUM_CODES = 128  # the efficient preset of the small_run fixture
PRIOR_EPOCHS = [
    # epoch, train bits/code, test bits/code: the best test epoch is not the last (the prior
    # file holds the best epoch's weights, and every headline must name that one)
    (1, 4.10, 4.30),
    (2, 3.40, 3.45),
    (3, 3.00, 3.60),
]
UNIGRAM_BITS = 5.25
SCORES = {
    "n": 500,
    "classifier_test_accuracy": 0.987,
    "rows": [
        {
            "name": "real test images",
            "fid": 0.8,
            "confidence": 0.97,
            "inception_score": 9.4,
            "label_accuracy": None,
        },
        {
            "name": "reconstructions",
            "fid": 3.1,
            "confidence": 0.93,
            "inception_score": 8.9,
            "label_accuracy": None,
        },
        {
            "name": "random",
            "fid": 210.5,
            "confidence": 0.41,
            "inception_score": 1.7,
            "label_accuracy": None,
        },
        {
            "name": "used",
            "fid": 95.25,
            "confidence": 0.55,
            "inception_score": 3.2,
            "label_accuracy": None,
        },
        {
            "name": "prior",
            "fid": 12.75,
            "confidence": 0.88,
            "inception_score": 7.9,
            "label_accuracy": None,
        },
        *(
            {
                "name": f"prior (digit {d})",
                "fid": 20.0 + d,
                "confidence": 0.9,
                "inception_score": 1.1,
                "label_accuracy": 0.9 + d / 100,
            }
            for d in range(10)
        ),
    ],
}
TIMINGS = {"train": 41.5, "train-prior": 30.25, "sample": 2.0, "interpolate": 0.5, "score": 12.0}
# A real, tiny and untrained prior, so the run holds a whole prior (settings and weights).
PRIOR_CONFIG = PriorConfig(num_codes=NUM_CODES, channels=8, layers=2, epochs=3)
SAMPLE_KEYS = ("samples_random", "samples_used", "samples_prior", "samples_prior_conditional")
INTERPOLATION_KEYS = (
    "interpolation_crossfade",
    "interpolation_wipe",
    "interpolation_random-mask",
    "interpolation_latent",
)
CODEBOOK_KEYS = ("codebook_atlas", "codebook_exemplars", "codebook_codemap")
FIGURE_KEYS = (*SAMPLE_KEYS, *INTERPOLATION_KEYS, *CODEBOOK_KEYS)
# Every section of a full run, in page order; a bare training run has training,
# reconstructions, timing and configuration.
ALL_SECTIONS = (
    "training",
    "reconstructions",
    "codebook",
    "samples",
    "scores",
    "interpolation",
    "prior",
    "timing",
    "configuration",
)
TRAIN_ONLY_SECTIONS = ("training", "reconstructions", "timing", "configuration")


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def train_on(run_dir: Path) -> None:
    """Stand in for `train --resume`: the weights file holds other, still valid, weights."""
    path = run_dir / runfiles.WEIGHTS
    tensors = read_tensors(path, "weights")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    path.write_bytes(save(tensors))


def usage_counts() -> list[int]:
    """A skewed usage: code k picked about 1000/(k+1) times, the last quarter dead."""
    return [0 if k >= NUM_CODES * 3 // 4 else 1000 // (k + 1) for k in range(NUM_CODES)]


def make_full_run(run_dir: Path) -> Path:
    """Add prior metrics, scores, timings, code usage and every figure to a run folder."""
    uniform = math.log2(NUM_CODES)
    for epoch, train_bits, test_bits in PRIOR_EPOCHS:
        append_jsonl(
            run_dir / runfiles.PRIOR_METRICS,
            {
                "epoch": epoch,
                "train_bits_per_code": train_bits,
                "test_bits_per_code": test_bits,
                "train_bits_per_image": train_bits * 49,
                "test_bits_per_image": test_bits * 49,
                "uniform_bits_per_code": uniform,
                "unigram_bits_per_code": UNIGRAM_BITS,
                "epoch_seconds": 10.0,
            },
        )
    write_json_atomic(run_dir / runfiles.SCORES, SCORES)
    write_json_atomic(run_dir / runfiles.TIMINGS, TIMINGS)
    save_prior_config(run_dir, PRIOR_CONFIG)
    save_weights(run_dir / runfiles.PRIOR_WEIGHTS, PixelCNNPrior(PRIOR_CONFIG))
    write_json_atomic(
        run_dir / runfiles.CODE_USAGE, {"split": "train", "images": 3000, "counts": usage_counts()}
    )
    digits = load_split("mnist", "test").images[:80]
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 28, 28), dtype=np.uint8)
    figures = run_dir / runfiles.FIGURES_DIR
    pictures = {
        "samples_random": (noise, 8),
        "samples_used": (digits[:32], 8),
        "samples_prior": (digits[32:64], 8),
        "samples_prior_conditional": (digits, 8),
        "interpolation_crossfade": (digits[:20], 10),
        "interpolation_wipe": (digits[20:40], 10),
        "interpolation_random-mask": (digits[60:80], 10),
        "interpolation_latent": (digits[40:60], 10),
        "codebook_atlas": (noise, 16),
        "codebook_exemplars": (digits[:16], 4),
        "codebook_codemap": (digits[:8], 8),
    }
    for key, (images, columns) in pictures.items():
        save_grid(images, figures / runfiles.FIGURE_NAMES[key], columns=columns)
    return run_dir


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []
        self.captions: list[str] = []  # the text of each <figcaption>
        self.script_tags = 0
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        if tag == "figcaption":
            self._in_caption = True
            self.captions.append("")
        values = dict(attrs)
        if "id" in values:
            self.ids.append(values["id"])
        if tag == "img":
            self.images.append(values.get("src", ""))
        if tag == "script":
            self.script_tags += 1

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data


def parse_page(text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(text)
    return parser


def decode_data_uri(source: str) -> bytes:
    """The bytes of a base64 PNG data URI (AssertionError for anything else)."""
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix), source[:60]
    return base64.b64decode(source[len(prefix) :], validate=True)


def open_png(data: bytes) -> Image.Image:
    """Decode PNG bytes fully with Pillow (raises on a broken image)."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def read_scores(run_dir: Path) -> dict:
    return json.loads((run_dir / runfiles.SCORES).read_text())
