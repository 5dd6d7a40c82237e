"""``vqkit train-prior``: fit a PixelCNN prior to a run's code grids."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqkit.cli.common import (
    add_command,
    add_device_flag,
    add_reliability_flags,
    ascii_float,
    positive_int,
    refuse_resume_conflicts,
    report_interrupted,
    say_nothing_was_trained,
    seed,
)
from vqkit.config import PRECISIONS, PriorConfig
from vqkit.run_lock import require_no_writer
from vqkit.wording import counted

HELP = """
Train a gated PixelCNN prior over the 7x7 code grids of a trained run. The run's model encodes
the whole training and test sets once (cached in the run folder as codes_*.npy/labels_*.npy);
the prior then learns p(code_i | codes before i in raster order), optionally given the class.

Writes prior_config.json, prior.safetensors (the epoch with the lowest test NLL) and
prior_metrics.jsonl: per epoch, train and test NLL in bits per code and per image, next to the
uniform baseline (log2 K) and the unigram baseline (entropy of the training code frequencies).
Training stops early after --patience epochs without a better test NLL.

After every epoch (and every --checkpoint-every N steps) it also saves prior_state.safetensors
(weights, AdamW state, random-number states, epoch, step, best test NLL and early-stopping
count), from which --resume continues after a crash, a kill, Ctrl-C or SIGTERM (both save
first); with --deterministic the resumed prior ends bitwise identical to an uninterrupted
one. A NaN or infinite loss stops the run, keeping the last good state, unless --skip-nonfinite
N allows skipping up to N such steps. Running train-prior again trains a new prior in place of
a finished one; an unfinished one is only replaced with --restart. The earlier prior stays until
the new one has weights: stopped or failing in its first epoch, the new one is removed and the
earlier one kept as it was.

examples:
  vqkit train-prior runs/RUN
  vqkit train-prior runs/RUN --conditional     (then: vqkit sample ... --digit 3)
  vqkit train-prior runs/RUN --channels 64 --layers 8 --epochs 20
  vqkit train-prior runs/RUN --checkpoint-every 100 --deterministic
  vqkit train-prior runs/RUN --resume                 continue after Ctrl-C or a crash
  vqkit train-prior runs/RUN --resume --epochs 12     train a finished prior for longer
  vqkit train-prior runs/RUN --restart --lr 1e-3      drop an unfinished prior, start anew
"""

# Flags that set one PriorConfig field when given.
FIELDS = (
    "epochs",
    "channels",
    "layers",
    "dropout",
    "lr",
    "batch_size",
    "precision",
    "patience",
    "seed",
    "train_limit",
    "test_limit",
    "conditional",
    "checkpoint_every",
    "skip_nonfinite",
    "deterministic",
)


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "train-prior", "train a PixelCNN prior over the run's code grids", HELP, run
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    defaults = PriorConfig()
    parser.add_argument(
        "--conditional", action="store_true", default=None, help="condition on the class label"
    )
    parser.add_argument("--epochs", type=positive_int, help=f"at most (default {defaults.epochs})")
    parser.add_argument("--channels", type=positive_int, help=f"default {defaults.channels}")
    parser.add_argument(
        "--layers", type=positive_int, help=f"gated layers (default {defaults.layers})"
    )
    parser.add_argument("--dropout", type=ascii_float, help=f"default {defaults.dropout}")
    parser.add_argument(
        "--lr", type=ascii_float, help=f"AdamW learning rate (default {defaults.lr})"
    )
    parser.add_argument("--batch-size", type=positive_int, help=f"default {defaults.batch_size}")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="training autocast; auto = bf16 where the hardware runs it natively (default auto)",
    )
    parser.add_argument(
        "--patience", type=positive_int, help=f"early-stopping epochs (default {defaults.patience})"
    )
    parser.add_argument("--seed", type=seed, help=f"default {defaults.seed}")
    parser.add_argument(
        "--train-limit", type=positive_int, help="train on the first N training grids only"
    )
    parser.add_argument(
        "--test-limit", type=positive_int, help="measure on the first N test grids only"
    )
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_flag(parser)
    group = parser.add_argument_group("reliability")
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the prior from its last saved state, with its stored settings",
    )
    group.add_argument(
        "--restart",
        action="store_true",
        help="discard an unfinished prior's saved state and train a new prior",
    )
    add_reliability_flags(group)


def config_from_args(args: argparse.Namespace) -> PriorConfig:
    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    return PriorConfig(**values)


def resume_config_from_args(args: argparse.Namespace) -> PriorConfig:
    """The stored settings of the prior to resume, with the flags --resume allows applied;
    flags that would change what it learns are refused (repeating the stored value is fine)."""
    from vqkit.checkpoint import require_run_folder
    from vqkit.prior import load_prior_config
    from vqkit.prior_training import (
        PRIOR_RESUME_FIELDS,
        require_prior_state,
        settle_interrupted_prior,
    )

    require_run_folder(Path(args.run_dir))
    require_no_writer(args.run_dir)  # its state may be half-way through a change
    settle_interrupted_prior(args.run_dir)  # a replacement killed outright: the old prior back
    require_prior_state(args.run_dir)
    stored = load_prior_config(args.run_dir)
    conflicts = [
        name
        for name in FIELDS
        if name not in PRIOR_RESUME_FIELDS
        and getattr(args, name) is not None
        and getattr(args, name) != getattr(stored, name)
    ]
    if args.restart:
        conflicts.insert(0, "restart")
    refuse_resume_conflicts(conflicts, PRIOR_RESUME_FIELDS)
    data = stored.to_dict()
    given = {name: getattr(args, name) for name in PRIOR_RESUME_FIELDS}
    data.update({name: value for name, value in given.items() if value is not None})
    return PriorConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from vqkit.prior_training import train_prior
    from vqkit.training import TrainingInterrupted

    settings = resume_config_from_args(args) if args.resume else config_from_args(args)
    try:
        result = train_prior(
            args.run_dir,
            settings,
            device=args.device,
            data_dir=args.data_dir,
            progress=False if args.quiet else None,
            resume=args.resume,
            restart=args.restart,
        )
    except TrainingInterrupted as stop:
        return report_interrupted(stop)
    if args.resume and not result.epochs_trained:
        say_prior_was_finished(args.run_dir, settings, len(result.history))
    trained_now = result.history[len(result.history) - result.epochs_trained :]
    for record in trained_now:  # earlier sessions' epochs are in prior_metrics.jsonl
        print(
            f"epoch {record['epoch']:>3}: train {record['train_bits_per_code']:.3f}, "
            f"test {record['test_bits_per_code']:.3f} bits/code "
            f"({record['epoch_seconds']:.1f} s)"
        )
    best = result.best
    print(
        f"best test NLL:   {best['test_bits_per_code']:.3f} bits/code, "
        f"{best['test_bits_per_image']:.1f} bits/image (epoch {best['epoch']})"
    )
    print(f"uniform:         {best['uniform_bits_per_code']:.3f} bits/code (log2 K)")
    print(f"unigram:         {best['unigram_bits_per_code']:.3f} bits/code (code frequencies)")
    print(f"prior saved in:  {result.run_dir}")
    return 0


def say_prior_was_finished(run_dir: str, settings: PriorConfig, epochs_done: int) -> None:
    """Why a resumed prior trained nothing: its epochs were done, or its patience ran out."""
    what = f"the prior in '{run_dir}'"
    if epochs_done >= settings.epochs:
        why, flags = (
            f"trained its {counted(epochs_done, 'epoch')}",
            f"--epochs N (more than {epochs_done})",
        )
    else:
        patience = settings.patience
        why = f"stopped early ({counted(patience, 'epoch')} without a better test NLL)"
        flags = f"--patience N (more than {patience})"
    say_nothing_was_trained(what, why, flags)
