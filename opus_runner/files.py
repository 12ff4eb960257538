"""Crash-safe file writes for outputs: atomic replacement and interleave-free appends.

A reader never sees half a result file: :func:`atomic_write_bytes` writes a temporary file in
the target's folder, fsyncs it, renames it over the target and fsyncs the folder, so after a
crash the target holds either the old content or the new, never a mix.

Appends (:func:`append_line`) go through one ``os.write`` on an ``O_APPEND`` descriptor, which
the kernel applies at the end of the file as one piece: lines written by concurrent threads or
processes never interleave. :func:`locked_append` adds an exclusive lock for writers that must
look at the file before writing (a CSV header written exactly once).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

try:  # POSIX; Windows falls back to an in-process lock (see _exclusive_lock)
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AppendHandle",
    "AtomicFile",
    "append_line",
    "atomic_write_bytes",
    "atomic_write_text",
    "locked_append",
    "open_atomic",
]


def _read_umask() -> int:
    try:  # Linux tells it without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere os.umask can only be read by setting it; this runs once at import time, before
    # output handlers run in worker threads, so the brief window is harmless.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()
_process_lock = threading.Lock()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A binary file that replaces ``path`` only when :meth:`commit` is called.

    Data goes to a temporary file in the target's folder (created with the parents on
    construction); :meth:`commit` fsyncs it, renames it over ``path`` and fsyncs the folder;
    :meth:`abort` removes it and leaves ``path`` untouched. As a context manager it commits when
    the block exits cleanly and aborts when it raises. A new file gets the usual
    ``0o666 & ~umask`` permissions; an existing one keeps its own.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._tmp = Path(tmp_name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        try:
            try:
                mode = self.path.stat().st_mode & 0o7777
            except FileNotFoundError:
                mode = 0o666 & ~_UMASK
            os.chmod(self._tmp, mode)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> int:
        """Write ``data`` to the temporary file."""
        return self._file.write(data)

    def commit(self) -> Path:
        """Make the written data the content of ``path``, durably; return ``path``."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; ``path`` keeps its old content (or stays absent)."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def open_atomic(path: str | os.PathLike[str]) -> AtomicFile:
    """An :class:`AtomicFile` for ``path``: ``with open_atomic(p) as f: f.write(data)``."""
    return AtomicFile(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); return the path."""
    with AtomicFile(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


def _write_all_at_once(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written != len(data):
        # Retrying the rest would let another writer's line land in the middle of ours.
        raise OSError(f"short write: {written} of {len(data)} bytes reached the file (disk full?)")
    os.fsync(fd)


def _open_append(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)


def _as_line(line: str | bytes) -> bytes:
    data = line.encode("utf-8") if isinstance(line, str) else line
    if data.endswith(b"\n"):
        data = data[:-1]
    if b"\n" in data:
        raise ValueError("append_line writes one line; the value given contains a newline")
    return data + b"\n"


def append_line(path: str | os.PathLike[str], line: str | bytes) -> None:
    """Append ``line`` and a newline to ``path`` in one write, then fsync.

    Concurrent appenders (threads or processes) never interleave: each line is one ``os.write``
    on an ``O_APPEND`` descriptor. Parent folders are created. ``line`` must not contain a
    newline of its own (a trailing one is accepted).
    """
    data = _as_line(line)
    fd = _open_append(Path(path))
    try:
        _write_all_at_once(fd, data)
    finally:
        os.close(fd)


def append_line_once(path: str | os.PathLike[str], line: str | bytes, seen: Callable[[bytes], bool]) -> bool:
    """Append ``line`` unless a line of ``path`` already satisfies ``seen``; True when written.

    Read and append happen under the file's exclusive lock (:func:`locked_append`), so two
    writers deciding about the same job cannot both append. For redelivery after a crash,
    where the first delivery may or may not have reached the file.
    """
    data = _as_line(line)
    with locked_append(path) as handle:
        if handle.size:
            with open(handle.path, "rb") as existing:
                if any(seen(old.rstrip(b"\r\n")) for old in existing):
                    return False
        handle.write(data)
    return True


class AppendHandle:
    """The file as :func:`locked_append` hands it out: its size then, its first line, one write."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path
        self.size = os.fstat(fd).st_size

    def first_line(self) -> bytes:
        """The file's first line without its newline (``b""`` for an empty file)."""
        with open(self.path, "rb") as handle:
            return handle.readline().rstrip(b"\r\n")

    def write(self, data: bytes) -> None:
        """Append ``data`` in one write and fsync it."""
        _write_all_at_once(self._fd, data)
        self.size += len(data)


@contextlib.contextmanager
def _exclusive_lock(fd: int) -> Iterator[None]:
    if fcntl is not None:
        # flock locks belong to the open file description, so two descriptors in one process
        # exclude each other as well as other processes.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        with _process_lock:
            yield


@contextlib.contextmanager
def locked_append(path: str | os.PathLike[str]) -> Iterator[AppendHandle]:
    """Open ``path`` for appending under an exclusive lock, for read-then-append decisions.

    Inside the block no other ``locked_append`` on the same file runs, so a writer can look at
    ``handle.size`` or ``handle.first_line()`` (is there a header yet?) and append accordingly.
    """
    target = Path(path)
    fd = _open_append(target)
    try:
        with _exclusive_lock(fd):
            yield AppendHandle(fd, target)
    finally:
        os.close(fd)
