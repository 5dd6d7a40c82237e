"""What ran a run: software versions, vqkit's own source, the machine, the precision it
trained in, and the code behind its quantizer.

Every training session (a start, each resume, each prior training) appends one record to the
run's ``environment.jsonl``, so the report can say which machine an epoch time came from, a
reader can tell which code and which arithmetic made the run (``precision: auto`` in the
settings means bf16 on a CPU with native bf16, fp32 on one without), and a
run trained with a quantizer of one's own keeps the file and SHA-256 of the code that defined
it: the run's config names the quantizer only, and editing that file later changes what
loading the run builds (the report then says so).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqkit import runfiles
from vqkit.config import REGISTERED_QUANTIZERS
from vqkit.fileio import append_jsonl, read_file_bytes, read_jsonl, write_bytes_atomic
from vqkit.run_reading import run_path

# PyTorch and NumPy are imported where a session is described, not here: `vqkit runs` reads the
# records of every run folder without spending their import.
if TYPE_CHECKING:
    import torch


def file_digest(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes; None when it cannot be read (moved, deleted, no access)."""
    try:
        return hashlib.sha256(read_file_bytes(path)).hexdigest()
    except OSError:
        return None


@functools.cache
def vqkit_source_digest() -> str:
    """SHA-256 over vqkit's own Python files (each one's path within the package and bytes, in
    path order): which code trained a run, where the version number alone does not change."""
    package = Path(__file__).resolve().parent
    files = sorted(package.rglob("*.py"))
    if not files:  # imported from a zip: nothing to read, and a digest of nothing would mislead
        return "unknown"
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def images_digest(*images: torch.Tensor) -> str:
    """SHA-256 over tensors' bytes (uint8 images, and their labels where those count too):
    which images of one's own a run trained on (the named datasets are checked against their
    published checksums instead)."""
    digest = hashlib.sha256()
    for tensor in images:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def recorded_data_digest(run_dir: str | Path) -> str | None:
    """The images digest the run's last training session recorded (None before vqkit kept
    one, or for a named dataset)."""
    digests = [r.get("data_sha256") for r in read_records(run_dir)]
    kept = [d for d in digests if isinstance(d, str)]
    return kept[-1] if kept else None


def quantizer_source(name: str) -> dict[str, Any]:
    """Where the quantizer ``name`` comes from: vqkit itself, or a registered class of one's
    own with the module, the file that defines it and that file's digest."""
    cls = REGISTERED_QUANTIZERS.get(name)
    if cls is None:
        return {"name": name, "builtin": True}
    source: dict[str, Any] = {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}"}
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:  # defined where Python keeps no file (an interactive session)
        path = None
    if path is not None:
        source["file"] = str(Path(path).resolve())
        source["sha256"] = file_digest(path)
    return source


def cpu_name() -> str:
    """The processor's model name (Linux reports it in /proc/cpuinfo), else what Python says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name() if device.type == "cpu" else device.type


def describe(
    stage: str,
    device: torch.device,
    processes: int = 1,
    quantizer: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """One session's record: when it started, the versions, the machine and how it was used
    (``precision``: what the session computed in, "auto" resolved)."""
    import numpy
    import torch

    import vqkit  # here, not at import time: vqkit/__init__ imports the training modules

    record: dict[str, Any] = {
        "stage": stage,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "vqkit": vqkit.__version__,
        "vqkit_source_sha256": vqkit_source_digest(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": f"{sys.platform} {platform.machine()}",
        "device": device.type,
        "device_name": device_name(device),
        # The CPU kernels PyTorch picked (AVX2, AVX512, ...): whether bf16 was native.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "processes": processes,
    }
    if precision is not None:
        record["precision"] = precision
    if quantizer is not None:
        record["quantizer"] = quantizer_source(quantizer)
    return record


def record(run_dir: str | Path, entry: dict[str, Any], *, fresh: bool = False) -> None:
    """Append ``entry`` to the run's environment log; ``fresh`` starts the log over (a new
    run in a folder whose earlier start stopped before its first save)."""
    path = run_path(run_dir, runfiles.ENVIRONMENT)
    if fresh:
        write_bytes_atomic(path, b"")
    append_jsonl(path, entry)


# The fields every record has, and their types (a hand-edited or damaged line lacks them).
RECORD_FIELDS = {
    "stage": str,
    "started": str,
    "vqkit": str,
    "torch": str,
    "device": str,
    "device_name": str,
    "threads": int,
    "processes": int,
}


def is_record(record: dict[str, Any]) -> bool:
    """Whether ``record`` is a session record as vqkit writes them."""
    typed = all(
        isinstance(record.get(name), kind) and not isinstance(record.get(name), bool)
        for name, kind in RECORD_FIELDS.items()
    )
    quantizer = record.get("quantizer")
    return typed and (quantizer is None or isinstance(quantizer, dict))


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's session records, oldest first (none for runs made before vqkit kept them);
    damaged lines are left out."""
    return [r for r in read_jsonl(run_path(run_dir, runfiles.ENVIRONMENT)) if is_record(r)]


def changed_quantizer_code(records: list[dict[str, Any]]) -> str | None:
    """One sentence when the file that defined the run's quantizer of one's own (as last
    recorded) now holds other code, or is gone; None when it is unchanged or built in."""
    sources = [r["quantizer"] for r in records if isinstance(r.get("quantizer"), dict)]
    if not sources:
        return None
    source = sources[-1]
    if not (isinstance(source.get("file"), str) and isinstance(source.get("sha256"), str)):
        return None  # built in, or nothing was recorded to compare with
    now = file_digest(source["file"])
    if now == source["sha256"]:
        return None
    state = "no longer exists" if now is None else "has changed since"
    return (
        f"The quantizer '{source.get('name')}' was defined by {source['file']}, which {state} "
        "the run was last trained; loading the run builds whatever that file holds now."
    )
