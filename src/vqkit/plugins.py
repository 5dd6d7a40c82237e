"""Quantizers of one's own where no Python code of the user's runs first: the command line.

A run records its quantizer by name only (``config.json``), so whatever loads the run must know
the name. From Python, importing the code that calls ``vqkit.quantize.register_quantizer`` is
enough. Two more ways, so that ``vqkit`` commands, torchrun jobs and the demo can use them too:

- ``vqkit --plugin my_quantizers.py COMMAND ...`` (a file, or an importable module name)
  imports that code before the command runs (it may register sampling strategies instead,
  ``vqkit.generate.register_strategy``, which ``vqkit sample --strategy`` then offers);
- an installed package declares its class under the entry-point group ``vqkit.quantizers``, as
  the Python packaging standard lets any package do (in its pyproject.toml:
  ``[project.entry-points."vqkit.quantizers"]`` then ``my-vq = "my_package.quantizers:MyVQ"``).
  The name is then found wherever it is asked for, the Python API included, and its code is
  imported only when a config names it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
import traceback
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path

from vqkit.config import QUANTIZERS, REGISTERED_QUANTIZERS
from vqkit.errors import QuantizerLoadError, VqkitError

ENTRY_POINT_GROUP = "vqkit.quantizers"

# Plugins imported in this process (resolved file paths and module names): a plugin named twice
# runs once.
_IMPORTED: set[str] = set()


def _failure(what: str, exc: BaseException, source: Path | None = None) -> str:
    """One sentence for an exception raised by a user's code, naming where it was raised:
    the innermost line of ``source`` when given, else of the whole traceback."""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" (at {Path(exc.filename).name}, line {exc.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _users_code(f.filename)]
        own = [f for f in frames if source is None or Path(f.filename) == source] or frames
        where = f" (at {Path(own[-1].filename).name}, line {own[-1].lineno})" if own else ""
    said = exc.msg if isinstance(exc, SyntaxError) else str(exc)  # str() repeats the place
    text = " ".join(str(said).split())  # one line, whatever the exception's text holds
    return f"{what} failed: {type(exc).__name__}: {text}{where}."


def _users_code(filename: str) -> bool:
    """Whether a traceback frame is in the plugin's code: not in Python's import machinery
    ('<frozen importlib._bootstrap>', the standard library) nor in vqkit itself."""
    if filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    return not any(path.is_relative_to(root) for root in (_STDLIB, _VQKIT))


_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_VQKIT = Path(__file__).resolve().parent


@contextmanager
def _on_path(folder: str):
    """``folder`` first on the import path for the duration; taken out after, leaving any
    change the imported code made to the path itself."""
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _import_file(spec: str) -> None:
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        raise VqkitError(f"The plugin file {spec} is a folder; give a .py file (--plugin).")
    if not path.is_file():
        raise VqkitError(f"The plugin file {spec} does not exist (--plugin).")
    if str(path) in _IMPORTED:
        return
    # Named after the whole path, so two plugins of the same file name in different folders
    # are two modules; registered in sys.modules, where dataclasses and pickling look.
    name = f"vqkit_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    # Loaded from the path as given (a .py name), not the resolved one: a link plugin.py to a
    # file of another name would find no loader for that name's suffix. Its frames carry that
    # path, so a failure is placed in the plugin by it (not by the resolved one).
    located = Path(spec).expanduser().absolute()
    module_spec = importlib.util.spec_from_file_location(name, located)
    if module_spec is None or module_spec.loader is None:
        raise VqkitError(f"The plugin file {spec} cannot be imported as Python (--plugin).")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _on_path(str(path.parent)):  # the plugin's own helper modules beside it
            module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        if isinstance(exc, VqkitError):  # vqkit's own sentence, e.g. a built-in name taken
            raise
        raise VqkitError(_failure(f"Importing the plugin {spec}", exc, located)) from exc
    _IMPORTED.add(str(path))


def _import_module(spec: str) -> None:
    if spec in _IMPORTED:
        return
    if "/" in spec or os.sep in spec or spec.startswith("."):
        raise VqkitError(
            f"The plugin {spec} looks like a path; give the file's name with .py, or a module "
            "name (--plugin)."
        )
    if spec in sys.modules:  # json, copy, vqkit...: importing would not run anything new
        raise VqkitError(
            f"'{spec}' is a module Python has already imported, not a plugin of yours; give the "
            "path of your .py file instead (--plugin)."
        )
    # `python -m vqkit` has the current folder on the path, the installed `vqkit` script does
    # not; a plugin beside the user's data should be found either way.
    try:
        with _on_path(os.getcwd()):
            importlib.import_module(spec)
    except VqkitError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == spec or (exc.name and spec.startswith(exc.name + ".")):
            raise VqkitError(
                f"No module named '{spec}' to import as a plugin; give a module importable "
                "from the current folder or the path of a .py file (--plugin)."
            ) from exc
        raise VqkitError(_failure(f"Importing the plugin {spec}", exc)) from exc
    except (Exception, SystemExit) as exc:
        raise VqkitError(_failure(f"Importing the plugin {spec}", exc)) from exc
    _IMPORTED.add(spec)


def import_plugin(spec: str) -> None:
    """Import a plugin once: a ``.py`` file, or a module importable from here or the current
    folder. Failures, the plugin's own errors included, are one sentence (VqkitError), and so
    is a plugin that registers neither a quantizer nor a sampling strategy (a wrong file, or a
    module of the same name that Python found first)."""
    if not spec.strip() or spec.startswith("-"):
        raise VqkitError("--plugin needs a .py file or a module name after it.")
    from vqkit.generate import registered_strategies  # PyTorch: a command is about to run

    quantizers, strategies = dict(REGISTERED_QUANTIZERS), registered_strategies()
    imported = set(_IMPORTED)
    if spec.endswith(".py"):
        _import_file(spec)
    else:
        _import_module(spec)
    unchanged = REGISTERED_QUANTIZERS == quantizers and registered_strategies() == strategies
    if _IMPORTED != imported and unchanged:
        raise VqkitError(
            f"The plugin {spec} registered no quantizer and no sampling strategy; it must call "
            "vqkit.quantize.register_quantizer (see docs/codebook.md) or decorate a function "
            "with vqkit.generate.register_strategy (docs/generation.md)."
        )


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
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit too
            what = f"Loading the installed quantizer '{name}' ({entry.value})"
            raise QuantizerLoadError(_failure(what, exc), name) from exc
        from torch import nn  # here: this module is imported before PyTorch is needed

        if not (isinstance(quantizer_class, type) and issubclass(quantizer_class, nn.Module)):
            raise QuantizerLoadError(
                f"The installed quantizer '{name}' ({entry.value}) is not a class derived from "
                "torch.nn.Module; its package must offer one (vqkit.vq.VectorQuantizer, say).",
                name,
            )
        REGISTERED_QUANTIZERS.setdefault(name, quantizer_class)
        return True
    return False
