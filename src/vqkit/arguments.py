"""Checks of what Python callers pass to vqkit's public functions.

The command line checks its flags with argparse; a Python caller gets the same courtesy here:
a wrong type or value is one VqkitError sentence naming the argument, instead of a TypeError
raised from deep inside torch (``'<' not supported between 'str' and 'int'``).
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch

from vqkit.config import SEED_MAX, SEED_RANGE, is_seed, path_or_none
from vqkit.errors import InvalidValue

T = TypeVar("T")
__all__ = [
    "callable_or_none",
    "folder",
    "instance",
    "integers",
    "pair_of_arrays",
    "path",
    "path_or_none",
    "real_number",
    "seed",
    "switch",
    "whole_number",
    "widened",
]


def whole_number(value: Any, what: str, minimum: int) -> int:
    """``value`` as an int when it is a whole number (not a bool) of at least ``minimum`` that
    a 64-bit integer holds (torch takes no larger one, and raises its own TypeError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidValue(f"{what} must be a whole number of at least {minimum}, not {value!r}.")
    if value > SEED_MAX:
        raise InvalidValue(f"{what} must fit a 64-bit integer (< 2**63), not {value}.")
    return int(value)


def real_number(value: Any, what: str) -> float:
    """``value`` as a float when it is a real number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidValue(f"{what} must be a number, not {value!r}.")
    return float(value)


@overload
def switch(value: Any, what: str, allow_none: Literal[False] = False) -> bool: ...
@overload
def switch(value: Any, what: str, allow_none: bool) -> bool | None: ...
def switch(value: Any, what: str, allow_none: bool = False) -> bool | None:
    """``value`` when it is True or False (or None, where that means 'decide for me'): a
    string such as 'no' is truthy, so it would silently mean the opposite."""
    if value is None and allow_none:
        return None
    if isinstance(value, np.bool_):  # NumPy's True and False are no Python bools
        return bool(value)
    if not isinstance(value, bool):
        choices = "True, False or None" if allow_none else "True or False"
        raise InvalidValue(f"{what} must be {choices}, not {value!r}.")
    return value


def path(value: Any, what: str) -> str | os.PathLike:
    """``value`` when it is a path (a str or os.PathLike), not None; else one sentence."""
    if value is None:
        raise InvalidValue(f"{what} is a path (a str or pathlib.Path), not None.")
    return path_or_none(value, what)


def folder(value: Any, what: str) -> Path:
    """``value`` as a Path when it names a folder: a str or os.PathLike that is not empty
    (``Path("")`` would quietly be the current folder)."""
    value = path(value, what)
    if not str(value).strip():
        raise InvalidValue(f"{what} is empty; give the name of a folder.")
    return Path(value)


def callable_or_none(value: Any, what: str) -> Any:
    """``value`` when it can be called (or is None)."""
    if value is not None and not callable(value):
        raise InvalidValue(f"{what} must be a function taking one line of text, not {value!r}.")
    return value


def seed(value: Any) -> int:
    """``value`` as an int when torch can seed a generator with it (numpy ints too)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    if not is_seed(value):
        raise InvalidValue(f"The seed must be {SEED_RANGE}, not {value!r}.")
    return value


def pair_of_arrays(value: Any, what: str) -> tuple[Any, Any]:
    """``value`` when it is a pair (images, labels); the arrays themselves are checked later."""
    if not isinstance(value, tuple | list):
        raise InvalidValue(f"{what} must be a pair (images, labels), not {type(value).__name__}.")
    if len(value) != 2:
        raise InvalidValue(
            f"{what} must be a pair (images, labels), not a {type(value).__name__} of "
            f"{len(value)} items."
        )
    return value[0], value[1]


def instance(value: Any, kind: type[T], what: str, example: str) -> T:
    """``value`` when it is a ``kind``; otherwise a sentence saying what to pass instead."""
    if not isinstance(value, kind):
        raise InvalidValue(
            f"{what} must be a {kind.__name__} (for example {example}), "
            f"not an object of type {type(value).__name__}."
        )
    return value


def integers(value: Any, what: str, arrays: bool = False) -> torch.Tensor:
    """``value`` when it is a tensor of integers (with ``arrays``, also what ``torch.as_tensor``
    takes: a NumPy array, a list), else one sentence naming ``what``. Empty is fine: an empty
    list becomes a float tensor."""
    if not isinstance(value, torch.Tensor):
        kind = type(value).__name__
        if not arrays:
            raise InvalidValue(f"{what} must be a torch tensor of integers, not a {kind}.")
        try:
            if isinstance(value, np.ndarray):  # torch takes neither reversed strides nor
                value = np.ascontiguousarray(value, value.dtype.newbyteorder("="))  # big-endian
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            message = f"{what} must be a tensor or array of integers, not a {kind}."
            raise InvalidValue(message) from None
    wrong = value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
    if wrong and value.numel():
        raise InvalidValue(f"{what} must hold integers, not {value.dtype}.")
    return widened(value)


# Unsigned integer types wider than a byte: torch has few kernels for them (no min or max).
WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as int64 when its type is one of WIDE_UNSIGNED (a uint64 above 2**63 wraps
    to a negative number, which range checks then refuse), else unchanged."""
    return tensor.to(torch.int64) if tensor.dtype in WIDE_UNSIGNED else tensor
