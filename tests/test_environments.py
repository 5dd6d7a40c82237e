"""vqkit where a cluster, a container or another locale puts it: an output encoding that cannot
write every name, a home or cache folder it may not write into."""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

import pytest
from cli_helpers import fails_cleanly
from process_helpers import child_env, vqkit_command

from vqkit import classifier
from vqkit.data import sources
from vqkit.errors import VqkitError


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_name_the_output_encoding_lacks_is_written_escaped(tmp_path, encoding):
    # Under PYTHONIOENCODING=ascii or a Latin-1 locale, `vqkit runs` over a folder named in
    # another script ended in a UnicodeEncodeError traceback (so did train printing its --out).
    folder = tmp_path / "runs-é中"
    folder.mkdir()
    env = child_env() | {"PYTHONIOENCODING": encoding}
    done = subprocess.run(
        vqkit_command("runs", str(folder)), env=env, capture_output=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, b"")
    # Escaped as Python escapes it: what the name is can still be read off.
    escaped = str(folder).encode(encoding, "backslashreplace")
    said = b"No run folders in '" + escaped + b"' (a run folder holds a config.json).\n"
    assert done.stdout == said


@pytest.fixture
def no_home(monkeypatch):
    """A container's user: no HOME, and a user id the password database does not know."""
    monkeypatch.delenv("HOME", raising=False)

    def unknown(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", unknown)
    with pytest.raises(RuntimeError, match="Could not determine home directory"):
        Path("~").expanduser()  # what vqkit met: Python's own failure, as a user gets it


def test_without_a_home_a_download_cache_is_asked_for_in_a_sentence(
    no_home, monkeypatch, tmp_path, capsys
):
    # `vqkit train --dataset fashion-mnist` looked for its download cache under ~ and ended
    # in a RuntimeError traceback.
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    argv = ["train", "--dataset", "fashion-mnist", "--out", tmp_path / "run", "--quiet"]
    fails_cleanly(capsys, argv, "this user has no home folder", "set VQKIT_DATA to a folder")
    assert not (tmp_path / "run").exists()


def test_without_a_home_the_classifier_cache_is_asked_for_in_a_sentence(no_home, monkeypatch):
    monkeypatch.delenv("VQKIT_CACHE", raising=False)
    with pytest.raises(VqkitError, match="no home folder .*; set VQKIT_CACHE to a folder\\.$"):
        classifier.cache_root()
    monkeypatch.setenv("VQKIT_CACHE", "/somewhere")  # a named folder needs no home
    assert classifier.cache_root() == Path("/somewhere/classifiers")
