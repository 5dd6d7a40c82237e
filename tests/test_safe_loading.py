"""Nothing is ever unpickled: planted pickles are refused unexecuted, damaged files fail cleanly."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import struct
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqkit
from vqkit import runfiles
from vqkit.checkpoint import load_model, read_tensors, save_config, save_weights
from vqkit.cli import main
from vqkit.config import ModelConfig, QuantizerConfig, RunConfig
from vqkit.errors import VqkitError
from vqkit.fileio import read_file_bytes
from vqkit.model import VQVAE
from vqkit.run_reading import TORCH_DTYPES, require_readable_tensors

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class PlantMarker:
    """Unpickling this object would create the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_files(marker: Path) -> dict[str, bytes]:
    payload = PlantMarker(marker)
    torch_file = marker.parent / "torch-save.pt"
    torch.save({"weights": payload}, torch_file)
    return {"pickle": pickle.dumps(payload), "torch.save": torch_file.read_bytes()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("target", [runfiles.WEIGHTS, runfiles.TRAIN_STATE])
def test_planted_pickle_is_refused_and_never_executed(small_run, tmp_path, capsys, kind, target):
    run_dir = Path(shutil.copytree(small_run.run_dir, tmp_path / "run"))
    marker = tmp_path / "code-ran"
    (run_dir / target).write_bytes(malicious_files(marker)[kind])
    assert not marker.exists()
    # Check the planted file really is live: plain unpickling runs it.
    pickle.loads(malicious_files(tmp_path / "control")["pickle"])
    assert (tmp_path / "control").exists()
    argv = ["evaluate", str(run_dir)]
    if target == runfiles.TRAIN_STATE:
        argv = ["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a safetensors file" in err and "Traceback" not in err, err
    assert not marker.exists()


FORBIDDEN = [
    r"torch\.load\(",
    r"pickle\.loads?\(",
    r"allow_pickle\s*=\s*True",
    r"weights_only\s*=\s*False",
    r"(?<![.\w])eval\(",
    r"(?<![.\w])exec\(",
    r"import\s+dill|import\s+joblib",
]


def test_source_tree_never_unpickles():
    src = Path(vqkit.__file__).parent
    files = sorted(src.rglob("*.py"))
    assert len(files) > 10
    offenders = [
        f"{path.relative_to(src)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for pattern in FORBIDDEN
        if re.search(pattern, line)
    ]
    assert offenders == []


def calls_of(text: str, name: str) -> list[str]:
    """The full text of every call ``name(...)`` in ``text``, nested parentheses included."""
    calls = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start() : end + 1])
    return calls


def test_numpy_loads_refuse_pickles():
    """Every np.load in the source says allow_pickle=False explicitly."""
    src = Path(vqkit.__file__).parent
    assert calls_of("np.load(f(a, b[1]), allow_pickle=False) x", "np.load") == [
        "np.load(f(a, b[1]), allow_pickle=False)"
    ]
    for path in src.rglob("*.py"):
        for call in calls_of(path.read_text(), "np.load"):
            assert "allow_pickle=False" in call, f"{path}: {call}"


# --- fuzzing the checkpoint loader ----------------------------------------------------------

TINY_MODEL = ModelConfig(hidden_dim=4, quantizer=QuantizerConfig(num_embeddings=4, embedding_dim=2))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, bytes]:
    run_dir = tmp_path_factory.mktemp("tiny_run")
    save_config(run_dir, RunConfig(model=TINY_MODEL))
    save_weights(run_dir / runfiles.WEIGHTS, VQVAE(TINY_MODEL))
    return run_dir, (run_dir / runfiles.WEIGHTS).read_bytes()


def refusal(load) -> str | None:
    """The one-sentence refusal ``load()`` raises, or None when it loads."""
    try:
        load()
    except VqkitError as exc:
        assert str(exc).endswith(".") and "\n" not in str(exc)
        return str(exc)
    return None


def only_clean_errors(run_dir: Path, data: bytes) -> None:
    path = run_dir / runfiles.WEIGHTS
    path.write_bytes(data)
    loaded = refusal(lambda: read_tensors(path, "weights"))
    refusal(lambda: load_model(run_dir))
    # `vqkit runs` checks weights without PyTorch: the same files pass, with the same words.
    assert refusal(lambda: require_readable_tensors(path, "weights")) == loaded


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(tiny_run, data):
    only_clean_errors(tiny_run[0], data)


@FUZZ
@given(positions=st.lists(st.integers(0, 10_000), min_size=1, max_size=8), data=st.data())
def test_flipped_bytes_in_a_real_checkpoint(tiny_run, positions, data):
    run_dir, good = tiny_run
    mutated = bytearray(good)
    for position in positions:
        mutated[position % len(good)] = data.draw(st.integers(0, 255))
    only_clean_errors(run_dir, bytes(mutated))


def header_of(good: bytes) -> dict:
    (length,) = struct.unpack("<Q", good[:8])
    return json.loads(good[8 : 8 + length])


def with_header(good: bytes, header: dict) -> bytes:
    (length,) = struct.unpack("<Q", good[:8])
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + good[8 + length :]


@FUZZ
@given(
    field=st.sampled_from(["dtype", "shape", "data_offsets"]),
    value=st.one_of(
        st.sampled_from(["F16", "I64", "BOOL", "U8", "F8_E4M3", "X9", ""]),
        st.lists(st.integers(-(2**63), 2**64), max_size=5),
        st.none(),
        st.integers(),
    ),
    which=st.integers(0, 100),
)
def test_mutated_headers(tiny_run, field, value, which):
    run_dir, good = tiny_run
    header = header_of(good)
    names = sorted(k for k in header if k != "__metadata__")
    header[names[which % len(names)]][field] = value
    only_clean_errors(run_dir, with_header(good, header))


@FUZZ
@given(length=st.integers(0, 2**64 - 1), cut=st.integers(0, 20_000))
def test_lying_header_length_and_truncation(tiny_run, length, cut):
    run_dir, good = tiny_run
    only_clean_errors(run_dir, struct.pack("<Q", length) + good[8:])
    only_clean_errors(run_dir, good[: cut % len(good)])


# Element types of TORCH_DTYPES that safetensors learnt after 0.6.1, vqkit's floor, and the
# release that did: an older one refuses them as unknown, and vqkit's check with it.
NEWER_DTYPES = {"C64": (0, 7), "F8_E4M3FNUZ": (0, 8), "F8_E5M2FNUZ": (0, 8)}


def installed_safetensors_reads(dtype: str) -> bool:
    installed = tuple(int(part) for part in safetensors.__version__.split(".")[:2])
    return installed >= NEWER_DTYPES.get(dtype, (0, 0))


@pytest.mark.parametrize("dtype", [*sorted(TORCH_DTYPES), "X9", "F8_E8M0", "I4"])
def test_the_element_types_checked_without_pytorch_are_those_it_loads(tmp_path, dtype):
    bits = int(re.match(r"[A-Z]+(\d*)", dtype).group(1) or 8)  # BOOL: a byte
    tensor = {"dtype": dtype, "shape": [64 // bits], "data_offsets": [0, 8]}
    header = json.dumps({"t": tensor}).encode()
    path = tmp_path / "one.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    loaded = refusal(lambda: read_tensors(path, "weights"))
    assert refusal(lambda: require_readable_tensors(path, "weights")) == loaded
    readable = dtype in TORCH_DTYPES and installed_safetensors_reads(dtype)
    assert (loaded is None) == readable, loaded


@pytest.mark.parametrize("shape", [[4], [0]])
@pytest.mark.parametrize("dtype", sorted(TORCH_DTYPES))
def test_on_a_big_endian_machine_the_check_keeps_the_loaders_verdict(
    tmp_path, monkeypatch, dtype, shape
):
    # There safetensors.torch byte-swaps every tensor through NumPy, which has no bfloat16 or
    # float8 type: such a file fails to load (even a tensor of no elements), and the check
    # without PyTorch must call it damaged too rather than let `vqkit runs` pass it.
    size = int(re.match(r"[A-Z]+(\d*)", dtype).group(1) or 8) // 8 * math.prod(shape)
    tensor = {"dtype": dtype, "shape": shape, "data_offsets": [0, size]}
    header = json.dumps({"t": tensor}).encode()
    path = tmp_path / "one.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(size))
    monkeypatch.setattr(sys, "byteorder", "big")
    loaded = refusal(lambda: read_tensors(path, "weights"))
    assert refusal(lambda: require_readable_tensors(path, "weights")) == loaded
    numpy_swaps = dtype not in {"BF16"} and not dtype.startswith("F8")
    assert (loaded is None) == (numpy_swaps and installed_safetensors_reads(dtype)), loaded


def test_the_unmutated_checkpoint_loads(tiny_run):
    """The fuzz base case is valid, so the mutations above are what the loader rejects."""
    run_dir, good = tiny_run
    (run_dir / runfiles.WEIGHTS).write_bytes(good)
    model = load_model(run_dir)
    assert model.quantizer.codebook.shape == (4, 2)


@contextlib.contextmanager
def writer_released(fifo: Path, after: float):
    """A thread that, from ``after`` seconds on, opens ``fifo`` as a writer and closes it
    again and again: a reader blocked on it then reads its end, so a test of a reader that
    waits fails (on its clock) instead of hanging the suite."""
    stop = threading.Event()

    def release() -> None:
        if stop.wait(after):
            return
        while not stop.is_set():
            os.close(os.open(fifo, os.O_RDWR))  # never blocks on Linux; counts as a writer
            stop.wait(0.05)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize(
    ("name", "command"),
    [
        (runfiles.WEIGHTS, "evaluate"),
        (runfiles.WEIGHTS, "runs"),
        (runfiles.METRICS, "report"),
        (runfiles.CODE_USAGE, "report"),
        (".vqkit-lock", "runs"),
    ],
)
def test_a_pipe_planted_in_a_run_folder_is_not_waited_on(run_copy, capsys, name, command):
    """A named pipe in place of a run's file made evaluate, report and runs wait forever for
    a writer; it is now read as a file that cannot be read."""
    path = run_copy / name
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    started = time.monotonic()
    with writer_released(path, after=20):
        code = main([command, str(run_copy)])
    assert time.monotonic() - started < 15, f"{command} waited on the pipe"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if command == "evaluate":
        assert code == 2 and "cannot be read: a pipe or device, not a file." in err


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_link_to_a_device_is_refused_unread(tmp_path):
    """A link to /dev/zero in place of the weights read until memory ran out."""
    link = tmp_path / "model.safetensors"
    link.symlink_to("/dev/zero")
    with pytest.raises(OSError, match="a pipe or device, not a file"):
        read_file_bytes(link)
    with pytest.raises(VqkitError, match="cannot be read: a pipe or device, not a file"):
        read_tensors(link, "model weights file")
    with pytest.raises(IsADirectoryError):
        read_file_bytes(tmp_path)


@pytest.mark.skipif(not hasattr(fcntl, "F_SETLEASE"), reason="file leases are Linux's")
def test_a_file_held_by_a_lease_is_read_once_its_holder_lets_go(tmp_path):
    """A Samba or NFS server (any F_SETLEASE holder) is asked to give up its lease when the
    file is opened; an open that does not wait failed at once with EAGAIN instead of reading
    the file, as Path.read_bytes did once the holder let go."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    holder = os.open(path, os.O_RDWR)
    asked = []

    def let_go(*_: object) -> None:  # the kernel's SIGIO: the lease is wanted
        asked.append(True)
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_UNLCK)

    previous = signal.signal(signal.SIGIO, let_go)
    try:
        try:
            fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as exc:  # leases turned off (fs.leases-enable), or a file system without
            pytest.skip(f"no lease here: {exc}")
        assert read_file_bytes(path) == b"weights"
        assert asked
    finally:
        signal.signal(signal.SIGIO, previous)
        os.close(holder)
