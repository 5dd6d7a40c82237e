# The README's two commands: `make demo` (set up, then run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the index these machines use serves 2.13.0 as the CPU build, so the
	# resolver never pulls a CUDA build for the packages that depend on it.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The whole pipeline on MNIST: train, codebook, prior, samples, interpolation, scores, report.
demo: setup
	$(BIN)/vqkit demo

# Benchmarks against references measured in the same run (see BENCHMARKS.md).
bench: setup
	$(BIN)/pip install -q --no-deps vector-quantize-pytorch einops einx loguru torch-einops-utils frozendict
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/throughput_interleaved.py
	$(BIN)/python bench/transposed_conv.py
	$(BIN)/python bench/time_to_quality.py
	$(BIN)/python bench/quantizer_scaling.py
	$(BIN)/python bench/dataset_scaling.py
	$(BIN)/python bench/profile_layers.py
	$(BIN)/python bench/onednn_share.py
	$(BIN)/python bench/step_host.py
	$(BIN)/python bench/seed_spread.py --preset efficient

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
