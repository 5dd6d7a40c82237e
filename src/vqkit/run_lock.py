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
import threading
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


# The lock files this process holds (resolved paths): writer_of does not count them as another
# writer, so train-prior's own checks inside its lock do not see themselves.
_HELD: set[Path] = set()
# The lock files each thread holds: a lock taken again by the same thread (train-prior inside
# the demo, which holds its folder from training on) is nested, a no-op; another thread of the
# process is refused like another process.
_THREAD = threading.local()
# Opening the lock file again after its holder removed it meanwhile: a bound, in case a file
# system reports inode numbers that never match (some FUSE mounts); then the lock is kept.
REOPEN_TRIES = 10


class RunLock:
    """Held by one process for one run folder, from :meth:`acquire` to :meth:`release`."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._path: Path | None = None
        self._thread_held: set[Path] = set()  # the acquiring thread's (release may run elsewhere)

    def acquire(self, run_dir: str | Path, command: str) -> None:
        """Hold the folder's lock, or raise VqkitError naming the process that holds it."""
        if fcntl is None or self._fd is not None:
            return
        path = Path(run_dir) / LOCK_NAME
        if path.resolve() in _held_by_this_thread():
            return  # nested: the outer holder releases
        for attempt in range(REOPEN_TRIES):
            fd = _open(path)
            try:
                _lock_exclusive(fd)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise VqkitError(_refusal(holder, run_dir)) from None
            except OSError:  # a file system without locks (some network mounts): go unlocked
                os.close(fd)
                path.unlink(missing_ok=True)
                return
            # The holder before us may have removed the file between our open and our lock;
            # then we hold a lock on a file no one else will find: open the new one.
            if _same_file(fd, path) or attempt == REOPEN_TRIES - 1:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{command}, process {os.getpid()}".encode())
        except BaseException as exc:  # a full disk, Ctrl-C: never keep a lock nobody releases
            path.unlink(missing_ok=True)
            os.close(fd)
            if isinstance(exc, OSError):
                raise _unwritable(path, exc) from exc
            raise
        self._fd, self._path = fd, path
        _HELD.add(path.resolve())
        self._thread_held = _held_by_this_thread()
        self._thread_held.add(path.resolve())

    def release(self) -> None:
        if self._fd is None or self._path is None:
            return
        _HELD.discard(self._path.resolve())
        self._thread_held.discard(self._path.resolve())
        # Removed while still locked, so no other process can find and lock it half-removed.
        self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = self._path = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _held_by_this_thread() -> set[Path]:
    if not hasattr(_THREAD, "held"):
        _THREAD.held = set()
    return _THREAD.held


def _refusal(holder: str, run_dir: str | Path) -> str:
    return (
        f"Another vqkit process ({holder}) is writing to '{run_dir}'; wait for it to finish or "
        "stop it, then try again."
    )


def require_no_writer(run_dir: str | Path) -> None:
    """Refuse, as acquire would, a folder another process is writing: for commands that read
    a run's state before the call that locks it (the CLI's checks of --resume)."""
    holder = writer_of(run_dir)
    if holder is not None:
        raise VqkitError(_refusal(holder, run_dir))


# The lock file is opened without following a symbolic link: its holder's name is written into
# it, which through a link would overwrite the link's target (another run's weights, say).
# Neither open waits (O_NONBLOCK): a pipe planted in place of the lock file blocked every
# reader of the folder (report, runs) until something wrote to it.
NO_WAIT = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
WRITE_FLAGS = os.O_RDWR | os.O_CREAT | NO_WAIT
READ_FLAGS = os.O_RDONLY | NO_WAIT


def _open(path: Path) -> int:
    """The lock file, opened for writing (created if missing). A file left by a killed writer
    of another user cannot be opened for writing; unheld, it is replaced by one of ours."""
    if path.is_symlink():
        raise VqkitError(
            f"The run folder's lock file '{path}' is a symbolic link; vqkit keeps a file of its "
            "own there: remove the link."
        )
    try:
        return os.open(path, WRITE_FLAGS, 0o644)
    except PermissionError as exc:
        if not _replace_stale(path):
            raise _unwritable(path, exc) from exc
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    try:
        return os.open(path, WRITE_FLAGS, 0o644)
    except OSError as exc:
        raise _unwritable(path, exc) from exc


def _unwritable(path: Path, exc: OSError) -> VqkitError:
    return VqkitError(f"Cannot write in the run folder '{path.parent}': {exc.strerror}.")


def _replace_stale(path: Path) -> bool:
    """Remove a lock file this process cannot write when no one holds it; False if it could
    not be opened at all. A held one stays (acquire then names its holder)."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise VqkitError(_refusal(_holder(fd), path.parent)) from None
    except OSError:
        return False
    else:
        path.unlink(missing_ok=True)  # the folder is ours to write, so its files are ours to drop
    finally:
        os.close(fd)
    return True


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
    other process holds its lock. Only looks: creates nothing, and holds the lock shared for an
    instant only."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or path.resolve() in _HELD:
        return None
    try:
        fd = os.open(path, READ_FLAGS)
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
