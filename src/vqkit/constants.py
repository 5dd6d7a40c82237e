"""Names and numbers the command line shows in its help and checks while it parses.

They live here, free of PyTorch (and of NumPy, PIL, matplotlib), so that ``vqkit --help``, a
command's ``--help`` and a mistyped flag answer at once instead of after PyTorch has loaded; the
modules that use them import them from here.
"""

from __future__ import annotations

# vqkit.images: images per row of a saved grid unless told otherwise.
GRID_COLUMNS = 8
# vqkit.images: images per row of a comparison: `reconstruct --n 200` made one strip 12,000
# pixels wide.
COMPARISON_COLUMNS = 16

# vqkit.interpolate: the ways of walking from one code grid to another.
INTERPOLATION_MODES = ("crossfade", "wipe", "random-mask", "latent")
MIN_INTERPOLATION_STEPS = 2  # the two ends, t = 0 and t = 1

# vqkit.inputs: the splits an image reference may name, as sentences name them.
SPLIT_NAMES = {"test": "test set", "train": "training set"}

# vqkit.codebook_view: test images in the code map.
CODEMAP_IMAGES = 4
# Each image adds 336 pixels of width and 49 drawn labels: a few hundred exhaust the memory.
MAX_CODEMAP_IMAGES = 16

# vqkit.run_folder: where train and demo put a new run folder when none is named (and what
# vqkit runs lists).
RUNS_ROOT = "runs"
# The training settings a resume may change; everything else must be the stored run's.
VQVAE_RESUME_FIELDS = ("epochs", "checkpoint_every", "skip_nonfinite", "cuda_graph", "data_dir")
