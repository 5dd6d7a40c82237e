"""Where vqkit keeps what it fetches or trains once for every run: a folder an environment
variable names, or one under the user's home.

A container started with an arbitrary user id and no HOME has no home to find: Python then
raises a bare RuntimeError ("Could not determine home directory."), which the command line
showed as a traceback. Here that is a sentence naming the variable to set.
"""

from __future__ import annotations

import os
from pathlib import Path

from vqkit.errors import VqkitError


class NoHomeFolder(VqkitError):
    """Neither the variable nor a home folder says where the cache is."""


def cache_folder(variable: str, default: str) -> Path:
    """``$variable`` when set, else ``default`` (a path starting ``~/``), with ``~`` expanded."""
    named = os.environ.get(variable)
    try:
        return Path(named or default).expanduser()
    except RuntimeError:  # no HOME, and the user id has no entry in the password database
        raise NoHomeFolder(
            f"vqkit cannot find its cache folder '{named or default}': this user has no home "
            f"folder (HOME is not set); set {variable} to a folder."
        ) from None
