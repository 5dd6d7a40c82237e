"""Quantizers of one's own where no Python code of the user's runs first: the command line.

A run records its quantizer by name only (``config.json``), so whatever loads the run must know
the name. From Python, importing the code that calls ``vqkit.quantize.register_quantizer`` is
enough. Two more ways, so that ``vqkit`` commands, torchrun jobs and the demo can use them too:

- ``vqkit --plugin my_quantizers.py COMMAND ...`` (a file, or an importable module name)
  imports that code before the command runs;
- an installed package declares its class under the entry-point group ``vqkit.quantizers``, as
  the Python packaging standard lets any package do (in its pyproject.toml:
  ``[project.entry-points."vqkit.quantizers"]`` then ``my-vq = "my_package.quantizers:MyVQ"``).
  The name is then found wherever it is asked for, the Python API included, and its code is
  imported only when a config names it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

from vqkit.config import QUANTIZERS, REGISTERED_QUANTIZERS
from vqkit.errors import VqkitError

ENTRY_POINT_GROUP = "vqkit.quantizers"


def _failure(what: str, exc: BaseException) -> VqkitError:
    """One sentence for an exception raised by a user's code, naming where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return VqkitError(f"{what} failed: {type(exc).__name__}: {exc}{where}.")


def import_plugin(spec: str) -> None:
    """Import a plugin: a ``.py`` file, or a module importable from here or the current folder."""
    if not spec.strip():
        raise VqkitError("--plugin needs a .py file or a module name after it.")
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise VqkitError(f"The plugin file {spec} does not exist (--plugin).")
        name = f"vqkit_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise _failure(f"Importing the plugin {spec}", exc) from exc
        return
    # `python -m vqkit` has the current folder on the path, the installed `vqkit` script does not;
    # a plugin beside the user's data should be found either way.
    sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.startswith(exc.name):
            raise VqkitError(
                f"No module named '{spec}' to import as a plugin; give a module importable "
                "from the current folder or the path of a .py file (--plugin)."
            ) from exc
        raise _failure(f"Importing the plugin {spec}", exc) from exc
    except Exception as exc:
        raise _failure(f"Importing the plugin {spec}", exc) from exc
    finally:
        sys.path.remove(os.getcwd())


def entry_point_names() -> list[str]:
    """Quantizer names installed packages offer (nothing is imported to list them)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - set(QUANTIZERS))


def load_installed_quantizer(name: str) -> bool:
    """Register quantizer ``name`` from an installed entry point; False when none offers it."""
    if name in QUANTIZERS:
        return False
    for entry in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            quantizer_class = entry.load()
        except Exception as exc:
            raise _failure(
                f"Loading the installed quantizer '{name}' ({entry.value})", exc
            ) from exc
        REGISTERED_QUANTIZERS.setdefault(name, quantizer_class)
        return True
    return False
