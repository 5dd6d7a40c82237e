"""Helpers for tests that start real vqkit processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import vqkit


def child_env() -> dict[str, str]:
    """This checkout's vqkit first on the path of a child process, whatever is installed."""
    env = dict(os.environ)
    src = str(Path(vqkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def vqkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqkit", *args]
