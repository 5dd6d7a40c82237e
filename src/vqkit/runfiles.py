"""Names of the files a run folder may hold, one place for every stage that reads or writes them.

Each stage writes only its own files; the report shows a section for whatever exists.
"""

CONFIG = "config.json"  # RunConfig of the VQ-VAE (train)
WEIGHTS = "model.safetensors"  # VQ-VAE weights and buffers (train)
METRICS = "metrics.jsonl"  # one record per epoch (train)
RECONSTRUCTIONS = "reconstructions.png"  # test originals above reconstructions (train)
TRAIN_STATE = "train_state.safetensors"  # resumable optimizer/RNG state (train --resume)
TRAIN_STATE_META = "train_state.json"  # epoch/step counters of the resumable state
CODE_USAGE = "code_usage.json"  # per-code counts over the training set (sample --strategy used)
CODES_TRAIN = "codes_train.npy"  # (N, 7, 7) code grids of the training set (train-prior)
CODES_TEST = "codes_test.npy"  # (N, 7, 7) code grids of the test set (train-prior)
PRIOR_CONFIG = "prior_config.json"  # PixelCNN prior settings (train-prior)
PRIOR_WEIGHTS = "prior.safetensors"  # best-test-NLL prior weights (train-prior)
PRIOR_METRICS = "prior_metrics.jsonl"  # per-epoch NLL of the prior (train-prior)
SCORES = "scores.json"  # sample-quality table (score)
TIMINGS = "timings.json"  # seconds per pipeline stage (demo)
FIGURES_DIR = "figures"  # PNGs made by sample/interpolate/codebook for the report (demo)
REPORT = "report.html"  # the self-contained visual report (report)
