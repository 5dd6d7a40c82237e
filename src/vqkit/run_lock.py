"""One writer per run folder: ``train`` and ``train-prior`` hold a lock on the folder while
they write it.

Two processes training into the same folder (``train --resume`` started twice, ``train-prior``
while ``train --resume`` is running) would each append their own epochs to the metrics and
overwrite each other's state, leaving a run that neither process made. Every file write is
atomic, but the run as a whole is not; the lock makes the second process stop before it reads
or writes anything.

The lock is an advisory ``flock`` on ``RUN/.vqkit-lock``, which holds the holder's command and
process id for the message of the one refused. The kernel drops it when the holder exits, so a
killed process never leaves a folder locked. The file is removed on release, so a finished
command leaves the folder as it found it. Where ``fcntl`` is missing (Windows), or the file
system cannot lock (some network mounts), commands run unlocked, as they did before the lock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vqkit.errors import VqkitError

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".vqkit-lock"
# A writer finding the lock taken looks again this many times, this far apart, before refusing:
# long enough to outlast writer_of's shared look, far too short to wait out another writer.
LOOK_RETRIES, LOOK_RETRY_SECONDS = 5, 0.01


class RunLock:
    """Held by one process for one run folder, from :meth:`acquire` to :meth:`release`."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._path: Path | None = None

    def acquire(self, run_dir: str | Path, command: str) -> None:
        """Hold the folder's lock, or raise VqkitError naming the process that holds it."""
        if fcntl is None or self._fd is not None:
            return
        path = Path(run_dir) / LOCK_NAME
        while True:
            fd = _open(path)
            try:
                _lock_exclusive(fd)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise VqkitError(
                    f"Another vqkit process ({holder}) is writing to '{run_dir}'; wait for it "
                    "to finish or stop it, then try again."
                ) from None
            except OSError:  # a file system without locks (some network mounts): go unlocked
                os.close(fd)
                path.unlink(missing_ok=True)
                return
            # The holder before us may have removed the file between our open and our lock;
            # then we hold a lock on a file no one else will find: open the new one.
            if _same_file(fd, path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{command}, process {os.getpid()}".encode())
        self._fd, self._path = fd, path

    def release(self) -> None:
        if self._fd is None or self._path is None:
            return
        # Removed while still locked, so no other process can find and lock it half-removed.
        self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = self._path = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        folder = path.parent
        raise VqkitError(f"Cannot write in the run folder '{folder}': {exc.strerror}.") from exc


def _lock_exclusive(fd: int) -> None:
    """flock(LOCK_EX) without waiting on a writer; a few short tries ride out a reader's look
    (writer_of), which holds the lock shared for an instant."""
    for _ in range(LOOK_RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(LOOK_RETRY_SECONDS)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def writer_of(run_dir: str | Path) -> str | None:
    """The command and process writing ``run_dir`` now ("train, process 520"), or None when no
    process holds its lock. Only looks: creates nothing, and holds the lock shared for an
    instant only."""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: no writer (or one that cannot lock, which nobody sees)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "one starting up"


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
