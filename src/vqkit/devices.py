"""Which device a command runs on: a user's device name checked into a torch.device."""

from __future__ import annotations

import torch

from vqkit.errors import VqkitError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; asking for missing CUDA is an error."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise VqkitError(
            f"A device is named by a string (auto, cpu, cuda or cuda:N), not {name!r}."
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VqkitError("CUDA was requested (--device cuda) but no CUDA GPU is available.")
    if name != "cpu" and not name.startswith("cuda"):
        raise VqkitError(f"Unknown device '{name}'; use auto, cpu or cuda.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VqkitError(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise VqkitError(
                f"There is no GPU {device.index} (--device {name}); this machine has {count}, "
                f"numbered 0 to {count - 1}."
            )
    return device
