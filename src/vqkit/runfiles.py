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
LABELS_TRAIN = "labels_train.npy"  # (N,) class labels next to codes_train.npy (train-prior)
LABELS_TEST = "labels_test.npy"  # (N,) class labels next to codes_test.npy (train-prior)
CODES_META = "codes.json"  # which weights made the cached code grids (train-prior)
PRIOR_CONFIG = "prior_config.json"  # PixelCNN prior settings (train-prior)
PRIOR_WEIGHTS = "prior.safetensors"  # best-test-NLL prior weights, their source (train-prior)
PRIOR_METRICS = "prior_metrics.jsonl"  # per-epoch NLL of the prior (train-prior)
PRIOR_STATE = "prior_state.safetensors"  # resumable prior state (train-prior --resume)
PRIOR_STATE_META = "prior_state.json"  # epoch/step counters of the resumable prior state
SCORES = "scores.json"  # sample-quality table (score)
TIMINGS = "timings.json"  # seconds per pipeline stage (demo)
ENVIRONMENT = "environment.jsonl"  # versions and machine of each session (train, train-prior)
FIGURES_DIR = "figures"  # PNGs made by sample/interpolate/codebook for the report (demo)
REPORT = "report.html"  # the self-contained visual report (report)


# Every name above: files no command's --out may replace.
FILE_NAMES = tuple(
    value for name, value in dict(globals()).items() if name.isupper() and isinstance(value, str)
)
# The record logs train and train-prior append to (each append rewrites the whole file).
APPENDED = (METRICS, PRIOR_METRICS, ENVIRONMENT)
# Not among them: vqkit.run_lock's ".vqkit-lock", present only while train or train-prior
# writes the folder (and left by a killed one, to be reused by the next writer).

# Formats of the JSON files above (the report reads them; writers must keep to these):
#   code_usage.json   {"split": "train", "images": N, "counts": [K ints] (past 65,536 codes
#                      instead "num_codes": K, "used_codes": [ascending ints],
#                      "used_counts": [ints > 0]),
#                      "weights_sha256": hex (the weights counted; absent in older files),
#                      "images_sha256": hex (one's own data only: its training images)}
#   prior_metrics.jsonl, one object per epoch:
#       {"epoch", "train_bits_per_code", "test_bits_per_code", "train_bits_per_image",
#        "test_bits_per_image", "uniform_bits_per_code", "unigram_bits_per_code",
#        "train_grids", "test_grids" (absent in older files), "test_split_grids" (the
#        whole test split's; absent in older files), "epoch_seconds"}
#       (+ "skipped_nonfinite_steps" once --skip-nonfinite skipped any)
#   codes.json        {"weights_sha256": hex, "dataset": name, "train": N, "test": N,
#                      "data_sha256": hex | null (one's own data's images and labels, both
#                      splits; null for a named dataset; absent in older files),
#                      "files_sha256": {cache file name: hex of its bytes} (absent in older
#                      files: such a cache is made again)}
#   scores.json       {"n": N, "seed": int, "classifier_test_accuracy": float,
#                      "classifier_sha256": hex (the classifier's weights, safetensors bytes),
#                      "rows": [{"name": "real test images" | "real training images" |
#                                "reconstructions" | "random" |
#                                "used" | "used (weighted)" | "prior" |
#                                "prior (digit d)" ..., "images": int,
#                                "fid": float,
#                                "confidence": float, "inception_score": float,
#                                "label_accuracy": float | null,
#                                "sample_seconds": float (sampled rows only)}, ...],
#                      "dataset": name, "weights_sha256": hex,
#                      "prior_sha256": hex | null (the run's prior at scoring time),
#                      "prior_left_out": sentence (only when the run holds part of a prior:
#                      why it has no prior rows),
#                      "classes_left_out": sentence (only when a class of a conditional prior
#                      has fewer than 2 test images, so no per-class row)}
#   timings.json      {"<stage name>": seconds, ...} in pipeline order
# Figures written into FIGURES_DIR by the demo (each optional):
FIGURE_NAMES = {
    "samples_random": "samples_random.png",
    "samples_used": "samples_used.png",
    "samples_prior": "samples_prior.png",
    "samples_prior_conditional": "samples_prior_conditional.png",  # one row per class
    "interpolation_crossfade": "interpolation_crossfade.png",
    "interpolation_wipe": "interpolation_wipe.png",
    "interpolation_random-mask": "interpolation_random-mask.png",
    "interpolation_latent": "interpolation_latent.png",
    "codebook_usage": "codebook_usage.png",
    "codebook_atlas": "codebook_atlas.png",
    "codebook_exemplars": "codebook_exemplars.png",
    "codebook_codemap": "codebook_codemap.png",
}
