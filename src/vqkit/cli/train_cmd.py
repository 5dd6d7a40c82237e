"""``vqkit train``: train a VQ-VAE and write a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqkit import runfiles
from vqkit.cli.common import (
    add_command,
    add_device_flag,
    add_reliability_flags,
    ascii_float,
    ascii_int,
    distributed_rank_is_main,
    int_list,
    positive_int,
    refuse_resume_conflicts,
    report_interrupted,
    say_nothing_was_trained,
    seed,
)
from vqkit.config import (
    CODEBOOK_INITS,
    CODEBOOK_UPDATES,
    COMPILE_MODES,
    GRADIENT_ESTIMATORS,
    LR_SCHEDULES,
    MAX_FSQ_CODES,
    MAX_KMEANS_ITERS,
    PRECISIONS,
    PRESETS,
    QUANTIZERS,
    QuantizerConfig,
    RunConfig,
    TrainConfig,
    preset_config,
)
from vqkit.constants import VQVAE_RESUME_FIELDS
from vqkit.data.catalog import DATASETS
from vqkit.errors import VqkitError
from vqkit.run_lock import require_no_writer
from vqkit.wording import counted

HELP = """
Train a VQ-VAE on MNIST or Fashion-MNIST and write a run folder holding config.json,
model.safetensors, metrics.jsonl (one line per epoch) and reconstructions.png.

--dataset idx --data-dir DIR trains on your own 28x28 grayscale images (KMNIST, or any you
have) stored as MNIST stores its own: four IDX files named train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (.gz or not),
labels 0-255. They are checked for structure, not checksum; the folder is recorded in the run,
so later commands find it without --data-dir.

After every epoch (and every --checkpoint-every N steps) the run also saves
train_state.safetensors, from which --resume continues after a crash, a kill, Ctrl-C or SIGTERM
(both save first). With --deterministic a resumed run ends with exactly the weights of an
uninterrupted one. A NaN or infinite loss stops the run, keeping the last good state, unless
--skip-nonfinite N allows skipping up to N such steps. Under torchrun, several processes train
together (DistributedDataParallel); --batch-size is then the total over all of them.

Defaults are the tutorial's model (hidden 128, embedding 64, 512 codes, beta 0.25, Adam 1e-3,
batch 128, 5 epochs); --preset efficient is its smaller Exercise 2 model (hidden 64,
embedding 32, 128 codes, 3 epochs); --preset best is the efficient model with the codebook
options that measured best on MNIST. --config starts from a saved config.json (or a run
folder's) instead. Any flag given overrides the preset or the config.

Codebook health: --codebook-update ema (moving-average codebook, commitment loss only),
--dead-code-restart N (re-seed codes unused for N steps), --codebook-init kmeans, or
--quantizer fsq --fsq-levels 8,5,5,5 (finite scalar quantization: 1000 codes, no codebook).
Restarts so far are logged per epoch in metrics.jsonl as codebook_restarts.

examples:
  vqkit train --preset efficient
  vqkit train --dataset fashion-mnist --epochs 10 --out runs/fashion
  vqkit train --dataset idx --data-dir ~/data/kmnist --preset efficient
  vqkit train --num-embeddings 256 --beta 0.5 --seed 3
  vqkit train --preset fast            # efficient model, tuned for time to quality
  vqkit train --precision bf16 --channels-last --batch-size 256 --lr 3e-3 --lr-schedule onecycle
  vqkit train --preset efficient --cuda-graph   on a GPU: each whole step replayed from a CUDA
                                                graph (no host work per kernel)
  vqkit train --preset efficient --out runs/a --checkpoint-every 200 --deterministic
  vqkit train --resume runs/a
  vqkit train --resume runs/a --epochs 10           train a finished run for longer (a run
                                                    with --lr-schedule keeps its length)
  vqkit train --config runs/a --seed 1 --out runs/b   run a's settings again, another seed
  torchrun --nproc-per-node 2 -m vqkit train --preset efficient --out runs/ddp
  vqkit train --preset efficient --codebook-update ema --dead-code-restart 50
  vqkit train --preset efficient --quantizer fsq --fsq-levels 8,4,4
"""

# Flags that override one field of the preset: flag name -> (section, field).
OVERRIDES = {
    "dataset": ("train", "dataset"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "seed": ("train", "seed"),
    "eval_batch_size": ("train", "eval_batch_size"),
    "train_limit": ("train", "train_limit"),
    "test_limit": ("train", "test_limit"),
    "precision": ("train", "precision"),
    "channels_last": ("train", "channels_last"),
    "compile": ("train", "compile"),
    "compile_mode": ("train", "compile_mode"),
    "cuda_graph": ("train", "cuda_graph"),
    "lr_schedule": ("train", "lr_schedule"),
    "warmup_fraction": ("train", "warmup_fraction"),
    "hidden_dim": ("model", "hidden_dim"),
    "residual_blocks": ("model", "residual_blocks"),
    "num_embeddings": ("quantizer", "num_embeddings"),
    "embedding_dim": ("quantizer", "embedding_dim"),
    "beta": ("quantizer", "beta"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "skip_nonfinite": ("train", "skip_nonfinite"),
    "deterministic": ("train", "deterministic"),
    "quantizer": ("quantizer", "quantizer"),
    "codebook_update": ("quantizer", "codebook_update"),
    "ema_decay": ("quantizer", "ema_decay"),
    "dead_code_restart": ("quantizer", "dead_code_restart"),
    "dead_code_threshold": ("quantizer", "dead_code_threshold"),
    "codebook_init": ("quantizer", "codebook_init"),
    "kmeans_iters": ("quantizer", "kmeans_iters"),
    "fsq_levels": ("quantizer", "fsq_levels"),
    "gradient_estimator": ("quantizer", "gradient_estimator"),
}
# Flags --resume accepts: they steer the run without changing what it learns so far
# (--data-dir apart).
RESUME_FLAGS = tuple(name for name in VQVAE_RESUME_FIELDS if name != "data_dir")


def register(subparsers) -> None:
    parser = add_command(subparsers, "train", "train a VQ-VAE and write a run folder", HELP, run)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="settings to start from")
    parser.add_argument(
        "--config",
        metavar="FILE_OR_RUN",
        help="start from a config.json (or a run folder's) instead of a preset",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="training data (default: mnist; idx: your own)"
    )
    parser.add_argument(
        "--data-dir", help="folder holding the four IDX files (optional; required for idx)"
    )
    parser.add_argument("--out", help="run folder to create (default: a new folder in runs/)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last saved state, with its own settings",
    )
    add_device_flag(parser)
    group = parser.add_argument_group("training")
    for flag, kind, text in (
        ("--epochs", positive_int, "passes over the training set (default: the preset's)"),
        (
            "--batch-size",
            positive_int,
            "images per step over all processes (default: the preset's)",
        ),
        ("--lr", ascii_float, "Adam learning rate (with --lr-schedule: the peak rate)"),
        ("--seed", seed, "seeds the weights, the data order and the codebook (default 0)"),
        ("--eval-batch-size", positive_int, "images per batch when evaluating (default 1000)"),
        ("--train-limit", positive_int, "train on the first N images only"),
        ("--test-limit", positive_int, "evaluate on the first N test images only"),
    ):
        group.add_argument(flag, type=kind, help=text)
    group = parser.add_argument_group("speed")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32, bf16 autocast of the convolutions (distances stay fp32), or auto: bf16 "
        "where the hardware runs it natively",
    )
    group.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory layout (faster convolutions on CPU)",
    )
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training forward pass",
    )
    group.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        help="torch.compile mode (implies --compile); reduce-overhead replays CUDA graphs",
    )
    group.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="capture each whole training step once as a CUDA graph and replay it (GPU only)",
    )
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="per-step LR schedule")
    group.add_argument(
        "--warmup-fraction",
        type=ascii_float,
        help=f"share of steps warming up to --lr (default {TrainConfig().warmup_fraction})",
    )
    add_reliability_flags(group)
    group = parser.add_argument_group("model")
    group.add_argument("--hidden-dim", type=ascii_int, help="convolution width")
    group.add_argument(
        "--residual-blocks", type=ascii_int, help="the paper's residual blocks (0: none)"
    )
    group.add_argument("--num-embeddings", type=ascii_int, help="codebook size K")
    group.add_argument("--embedding-dim", type=ascii_int, help="code vector size D")
    group.add_argument("--beta", type=ascii_float, help="commitment loss weight")
    group = parser.add_argument_group("quantizer")
    # No argparse choices: a name of one's own may come from an installed package, and listing
    # those on every command would read every package's metadata. The config checks the name.
    group.add_argument(
        "--quantizer",
        help=f"{' or '.join(QUANTIZERS)} (vq: codebook; fsq: scalar grid), or one of your own "
        "(vqkit --plugin)",
    )
    group.add_argument(
        "--codebook-update",
        choices=CODEBOOK_UPDATES,
        help="loss (tutorial) or ema (moving average)",
    )
    group.add_argument(
        "--ema-decay",
        type=ascii_float,
        help=f"EMA decay gamma in (0, 1) (default {QuantizerConfig().ema_decay})",
    )
    group.add_argument(
        "--dead-code-restart",
        type=ascii_int,
        metavar="N",
        help="move codes unused for N training steps onto batch encoder outputs (0: off)",
    )
    group.add_argument(
        "--dead-code-threshold",
        type=ascii_float,
        help="with --codebook-update ema and --dead-code-restart N, also restart codes whose "
        "EMA cluster size falls below this (in [0, 1))",
    )
    group.add_argument(
        "--codebook-init", choices=CODEBOOK_INITS, help="uniform, or kmeans on the first batch"
    )
    group.add_argument(
        "--kmeans-iters",
        type=ascii_int,
        help=f"k-means iterations, 1 to {MAX_KMEANS_ITERS} (default "
        f"{QuantizerConfig().kmeans_iters})",
    )
    group.add_argument(
        "--fsq-levels",
        type=int_list,
        metavar="L1,L2,...",
        help=f"FSQ values per channel (their product, the codes, at most {MAX_FSQ_CODES:,})",
    )
    group.add_argument(
        "--gradient-estimator", choices=GRADIENT_ESTIMATORS, help="ste or rotation (rotation trick)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset's (or --config's) config with every explicitly given flag applied (and
    re-validated)."""
    if args.config is not None:
        if args.preset is not None:
            raise VqkitError("Give --config or --preset, not both: each sets every setting.")
        data = read_config(args.config).to_dict()
    else:
        data = preset_config(args.preset or "default").to_dict()
    apply_overrides(data, args, OVERRIDES)
    if args.compile_mode is not None:
        if args.compile is False:
            raise VqkitError("--compile-mode sets how to compile; it cannot go with --no-compile.")
        data["train"]["compile"] = True
    config = RunConfig.from_dict(data)
    refuse_inert_flags(args, config)
    return config


def refuse_inert_flags(args: argparse.Namespace, config: RunConfig) -> None:
    """Refuse a flag given where it does nothing: it would be saved in config.json and a sweep
    over it would train the same model again and again."""
    needs = {  # flag dest: (flag, what makes it act); whether it acts: idle_settings()
        "warmup_fraction": ("--warmup-fraction", "--lr-schedule onecycle or cosine"),
        "ema_decay": ("--ema-decay", "--codebook-update ema"),
        "dead_code_threshold": (
            "--dead-code-threshold",
            "--codebook-update ema and --dead-code-restart N (it restarts codes whose EMA "
            "cluster size falls below it)",
        ),
        "kmeans_iters": ("--kmeans-iters", "--codebook-init kmeans"),
        "num_embeddings": (
            "--num-embeddings",
            "--quantizer vq (FSQ has as many codes as --fsq-levels multiply to)",
        ),
        "fsq_levels": ("--fsq-levels", "--quantizer fsq"),
        "beta": ("--beta", "--quantizer vq (FSQ has no commitment loss)"),
    }
    # A quantizer of one's own receives the whole QuantizerConfig: none of its fields is idle.
    idle = config.model.quantizer.idle_settings() | config.train.idle_settings()
    for dest, (flag, needed) in needs.items():
        if getattr(args, dest, None) is not None and dest in idle:
            raise VqkitError(f"{flag} does nothing without {needed}; drop it or add that.")


def read_config(path: str | Path) -> RunConfig:
    """The settings in a config.json file, or in the config.json of a run folder."""
    from vqkit.checkpoint import config_from_file, load_config

    path = Path(path)
    if path.is_dir():
        return load_config(path)
    return config_from_file(path)


def apply_overrides(data: dict, args: argparse.Namespace, flags) -> None:
    sections = {
        "train": data["train"],
        "model": data["model"],
        "quantizer": data["model"]["quantizer"],
    }
    for flag in flags:
        section, name = OVERRIDES[flag]
        value = getattr(args, flag, None)
        if value is not None:
            sections[section][name] = value


def resume_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The stored config of the run to resume; flags that would change what it learns are refused
    (a flag repeating the stored value is fine)."""
    from vqkit.checkpoint import load_config

    stored = load_config(args.resume)
    require_no_writer(args.resume)  # before comparing flags with a config it may be rewriting
    stored_values = {
        "train": stored.train,
        "model": stored.model,
        "quantizer": stored.model.quantizer,
    }
    conflicts = [
        flag
        for flag, (section, name) in OVERRIDES.items()
        if flag not in RESUME_FLAGS
        and getattr(args, flag, None) is not None
        and getattr(args, flag) != getattr(stored_values[section], name)
    ]
    if args.preset is not None and args.preset != stored.preset:
        conflicts.insert(0, "preset")
    if args.config is not None:
        conflicts.insert(0, "config")
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        conflicts.insert(0, "out")
    refuse_resume_conflicts(conflicts, RESUME_FLAGS)
    data = stored.to_dict()
    apply_overrides(data, args, RESUME_FLAGS)
    return RunConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from vqkit.report_text import format_metrics
    from vqkit.training import TrainingInterrupted, train

    resuming = args.resume is not None
    config = resume_config_from_args(args) if resuming else config_from_args(args)
    run_dir = args.resume if resuming else args.out
    try:
        result = train(
            config,
            run_dir,
            device=args.device,
            data_dir=args.data_dir,
            progress=False if args.quiet else None,
            resume=resuming,
        )
    except TrainingInterrupted as stop:
        return report_interrupted(stop)
    if not distributed_rank_is_main():
        return 0
    if resuming and not result.epochs_trained:
        done = config.train.epochs
        say_nothing_was_trained(
            f"the run '{run_dir}'",
            f"trained its {counted(done, 'epoch')}",
            f"--epochs N (more than {done})",
        )
    if result.history:
        print(format_metrics(result.final))
    print(f"run folder:      {result.run_dir}")
    print(f"reconstructions: {result.run_dir / runfiles.RECONSTRUCTIONS}")
    return 0
