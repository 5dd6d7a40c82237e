"""vqkit where a cluster, a container or another locale puts it: an output encoding that cannot
write every name, a home or cache folder it may not write into."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import fails_cleanly
from process_helpers import child_env, vqkit_command

from vqkit import classifier, fileio, runfiles, usage
from vqkit.cli import main
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


TINY_CLASSIFIER = classifier.ClassifierConfig(channels=(4, 8), features=8, epochs=1)


@pytest.mark.parametrize("home", ["a file", "none"])
def test_a_default_classifier_cache_that_cannot_be_written_is_trained_for_this_process(
    home, tmp_path, monkeypatch, request
):
    # A container's or a compute node's read-only home: `vqkit score`, and the demo after
    # minutes of training, were refused for a cache the user never asked for.
    monkeypatch.delenv("VQKIT_CACHE", raising=False)
    if home == "none":
        request.getfixturevalue("no_home")
    else:
        (tmp_path / "home").write_text("")  # no folder can be made below it
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
    trained = classifier.Classifier(TINY_CLASSIFIER)
    monkeypatch.setattr(classifier, "train_classifier", lambda *args: (trained, 0.5))
    lines = []
    got = classifier.load_or_train_classifier(TINY_CLASSIFIER, log=lines.append)
    assert got == (trained, 0.5)
    cannot = (
        "no home folder is known"
        if home == "none"
        else f"{tmp_path}/home/.cache/vqkit/classifiers cannot be written"
    )
    assert lines == [
        "training the mnist evaluation classifier (none is cached yet; it is not kept, as "
        f"{cannot}: set VQKIT_CACHE to a writable folder to keep it)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["home"] if home == "a file" else [])


def test_a_run_folder_name_that_is_not_utf8_gets_its_report(small_run, tmp_path):
    # A legacy file system's name (Latin-1 bytes under a UTF-8 locale) reaches Python as a lone
    # surrogate, and `vqkit report` ended in a UnicodeEncodeError traceback.
    run = Path(shutil.copytree(small_run.run_dir, tmp_path / os.fsdecode(b"caf\xe9")))
    assert main(["report", str(run)]) == 0
    html = (run / runfiles.REPORT).read_bytes().decode("utf-8")  # still valid UTF-8
    assert "caf\\udce9" in html


@pytest.mark.parametrize("failure", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_code_usage_of_a_run_folder_that_may_only_be_read_is_counted_not_cached(
    failure, run_copy, monkeypatch, capsys
):
    # `vqkit sample --strategy used` and `vqkit codebook` of a run this user may only read (a
    # colleague's, a read-only mount) counted 60,000 images, then were refused for the cache.
    (run_copy / runfiles.CODE_USAGE).unlink(missing_ok=True)
    counts = torch.arange(128)
    monkeypatch.setattr(usage, "count_codes", lambda *args: counts)

    def refused(*args, **kwargs):  # root ignores permissions: refused where the system refuses
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refused)
    if failure == errno.ENOSPC:  # a full disk is not a folder to only read: still said
        with pytest.raises(VqkitError, match="No space left on device"):
            usage.code_usage(run_copy)
    else:
        assert torch.equal(usage.code_usage(run_copy), counts)
    assert not (run_copy / runfiles.CODE_USAGE).exists()


def test_a_demo_with_a_cache_it_cannot_keep_the_classifier_in_is_refused_before_training(
    tmp_path, monkeypatch, capsys
):
    # VQKIT_CACHE naming a file was refused at the score stage, after minutes of training.
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "afile"))

    def too_early(*args, **kwargs):
        raise AssertionError("the demo trained before its classifier cache was checked")

    monkeypatch.setattr("vqkit.demo.train", too_early)
    argv = ["demo", "--out", tmp_path / "demo"]
    fails_cleanly(capsys, argv, f"Cannot create the folder '{tmp_path}/afile/classifiers'")
    assert not (tmp_path / "demo").exists()


def test_a_read_only_cache_holding_the_classifier_is_not_refused(tmp_path, monkeypatch):
    # A shared cache a cluster's admin filled and users may only read serves the demo.
    folder = tmp_path / "shared" / "classifiers"
    folder.mkdir(parents=True)
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "shared"))
    real_access = os.access
    # Root ignores permissions: the refusal is made by hand, where vqkit asks.
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode))
    with pytest.raises(VqkitError, match="Cannot write into"):
        classifier.require_usable_cache(TINY_CLASSIFIER)  # holding none
    (folder / "mnist.json").write_text(json.dumps({"config": TINY_CLASSIFIER.to_dict()}))
    (folder / "mnist.safetensors").write_bytes(b"")
    classifier.require_usable_cache(TINY_CLASSIFIER)
    other = dataclasses.replace(TINY_CLASSIFIER, seed=1)
    with pytest.raises(VqkitError, match="Cannot write into"):
        classifier.require_usable_cache(other)  # one of other settings would be replaced
