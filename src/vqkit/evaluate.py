"""A trained run measured on its dataset's test set: the function behind ``vqkit evaluate``."""

from __future__ import annotations

from pathlib import Path

from vqkit.checkpoint import load_config, load_model
from vqkit.data import load_split
from vqkit.devices import channels_last_on_cpu, resolve_device
from vqkit.metrics import evaluate_reconstruction


def evaluate_run(
    run_dir: str | Path, *, device: str = "auto", data_dir: str | Path | None = None
) -> dict[str, float | int]:
    """Test MSE, PSNR, perplexity, codes used (over the whole test set) and code-grid bits of
    the run's model, as ``vqkit evaluate`` prints them (see ``evaluate_reconstruction``)."""
    config = load_config(run_dir)
    model = load_model(run_dir, device=resolve_device(device))
    test = load_split(config.train.dataset, "test", config.train.data_folder(data_dir))
    with channels_last_on_cpu(model):
        return evaluate_reconstruction(model, test.images, config.train.eval_batch_size)
