"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vqkit.errors import VqkitError


def ensure_dir(path: str | Path) -> Path:
    """Create a folder (and parents) if needed, with a clear error when that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        if path.is_symlink() and not path.exists():  # mkdir sees the link, not its target
            raise VqkitError(
                f"Cannot use '{path}' as a folder: it is a symbolic link to "
                f"'{os.readlink(path)}', which does not exist."
            ) from exc
        raise VqkitError(f"Cannot use '{path}' as a folder: a file of that name exists.") from exc
    except OSError as exc:
        raise VqkitError(f"Cannot create the folder '{path}': {exc.strerror}.") from exc
    return path


def temp_file_target(name: str) -> str | None:
    """The name of the file an :func:`atomic_open` temp file named ``name`` was writing (such a
    file outlives a process killed mid-write), or None for any other name."""
    match = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp", name)
    return match[1] if match else None


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    The rename is atomic on POSIX, so a crash at any instant leaves either the previous file or
    the complete new one. Disk-full and permission failures become one clear VqkitError.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise VqkitError(f"Cannot write into '{path.parent}': {exc.strerror}.") from exc
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
            raise VqkitError(f"Could not write '{path}': {reason}.") from exc
        raise


def require_writable_folder(folder: str | Path) -> None:
    """Refuse a folder no file can be written into, before long work whose result goes there
    (the sentence :func:`atomic_open` would give at the end)."""
    if not os.access(folder, os.W_OK):  # a read-only file system too (EROFS)
        raise VqkitError(
            f"Cannot write into '{folder}': permission denied, or a read-only file system."
        )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_bytes_if_changed(path: str | Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (atomically) unless the file already holds exactly it, so an
    unchanged file keeps its modification time; returns whether it wrote."""
    try:
        if read_file_bytes(path) == data:
            return False
    except OSError:  # missing or unreadable: write it
        pass
    write_bytes_atomic(path, data)
    return True


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every infinite or NaN float inside it (dicts, lists, tuples) as None.

    JSON has no such numbers: Python's encoder writes ``Infinity``, which strict parsers (jq,
    browsers' JSON.parse) refuse; a perfect reconstruction's PSNR is infinite."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(value) for value in obj]
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """Standard JSON of ``obj`` (see :func:`finite_or_null`) as text."""
    return json.dumps(finite_or_null(obj), indent=indent, allow_nan=False)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json_text(obj, indent=2) + "\n").encode())


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a reader may see the old lines or one more, never a torn line).

    A file whose last line lacks its line break (cut short, or edited by hand) gets one first:
    glued onto that line, the new record would be lost with it."""
    path = Path(path)
    require_own_records(path)
    try:
        previous = read_file_bytes(path) if path.exists() else b""
    except OSError as exc:  # a folder of that name, an unreadable file
        raise VqkitError(f"The records file '{path}' cannot be read: {exc.strerror}.") from exc
    if previous and not previous.endswith(b"\n"):
        previous += b"\n"
    write_bytes_atomic(path, previous + (json_text(record) + "\n").encode())


def require_own_records(path: Path) -> None:
    """One sentence for a records file that is a symbolic link: appending rewrites the whole
    file, so a link in a received run folder (to ~/.bashrc, say) would have its target's
    content copied into the run folder, there to be shared on with the run."""
    if path.is_symlink():
        raise VqkitError(
            f"'{path}' is a symbolic link where the run keeps its own records; replace it "
            "with a copy of the file it points to (or remove it), then run the command again."
        )


# Opening for reading never waits: a pipe without a writer blocks an ordinary open forever.
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
NOT_A_FILE = "a pipe or device, not a file"


@contextlib.contextmanager
def open_regular_file(path: str | Path) -> Iterator[IO[bytes]]:
    """``open(path, "rb")`` that refuses what is not a regular file, with the OSError open
    raises (IsADirectoryError for a folder): a pipe planted in a received run folder made its
    readers wait forever, a link to /dev/zero read until memory ran out."""
    fd = _open_for_reading(path)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, NOT_A_FILE, str(path))
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def _open_for_reading(path: str | Path) -> int:
    """``os.open`` with READ_FLAGS; a regular file it finds held by a lease (a Samba or NFS
    server's, or any F_SETLEASE holder's) is opened again waiting, as an ordinary open does:
    without waiting, open fails at once (EAGAIN) while the holder is asked to let go."""
    try:
        return os.open(path, READ_FLAGS)
    except BlockingIOError:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never waits on what is not a file
            raise
        return os.open(path, READ_FLAGS & ~getattr(os, "O_NONBLOCK", 0))


def read_file_bytes(path: str | Path) -> bytes:
    """``Path.read_bytes`` through :func:`open_regular_file`."""
    with open_regular_file(path) as handle:
        return handle.read()


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for Python's parser (which raises RecursionError)
    raised as the JSONDecodeError of any other damage."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to parse", "", 0) from None


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file, naming ``what`` it is when it is missing or damaged."""
    path = Path(path)
    try:
        return parse_json(read_file_bytes(path))  # a folder: "damaged" below
    except (FileNotFoundError, NotADirectoryError) as exc:  # no such file, or under a file
        raise VqkitError(f"The {what} '{path}' does not exist.") from exc
    except PermissionError as exc:  # readable again once permitted: no damage to report
        raise VqkitError(f"The {what} '{path}' cannot be read: permission denied.") from exc
    except OSError as exc:
        if exc.strerror == NOT_A_FILE:
            raise VqkitError(f"The {what} '{path}' is {NOT_A_FILE}.") from exc
        raise VqkitError(f"The {what} '{path}' is damaged or not JSON.") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VqkitError(f"The {what} '{path}' is damaged or not JSON.") from exc


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold one JSON object (settings, not a list)."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise VqkitError(f"The {what} '{path}' does not hold a JSON object of settings.")
    return data


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file; a missing file is empty, damaged lines are skipped
    (bytes that are not UTF-8 only spoil the lines they are on)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = read_file_bytes(path).decode("utf-8", errors="replace")
    except OSError as exc:
        raise VqkitError(f"The records file '{path}' cannot be read: {exc.strerror}.") from exc
    records = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            item = parse_json(line)
            if isinstance(item, dict):
                records.append(item)
    return records
