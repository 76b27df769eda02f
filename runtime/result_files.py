"""Durable, atomic result files: how :class:`runtime.results.LocalResultStore` writes.

Everything here is blocking file I/O, run in a worker thread (one hop per result that
came whole, one per ``CHUNK_SIZE`` buffer of a larger one); nothing here touches the
event loop.

A result is written to a hidden temporary file beside its place
(``.<key>.<writer>-<n>.tmp``: ``writer`` is random per :class:`ResultFiles`, ``n``
counts, and the file is created with ``O_EXCL``, so two processes never share one, and
a name left by a crash is skipped), written, fsynced, then renamed over its place, and
the directory is fsynced before the caller is told it is stored: once a put returns,
the result survives a crash of the machine, and a reader sees the whole result or
none. An fsync that fails is raised (the caller stores again; the same bytes found in
place are not rewritten, their directory is fsynced again). A directory is made only
when creating a file in it finds it missing (the directories made are fsynced into
their parents too).
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import itertools
import os
import secrets
import threading
from collections.abc import Callable

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
# fsync of a directory: unsupported on some file systems, which then keep renames anyway
_NO_DIRECTORY_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF})


def fsync_directory(directory: str) -> None:
    """Make the renames in ``directory`` durable (POSIX); a no-op where directories cannot
    be opened or fsynced; any other error (EIO) is raised."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EISDIR, errno.EPERM):
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIRECTORY_FSYNC:
            raise
    finally:
        os.close(fd)


class ResultFiles:
    """Durable atomic writes under one root (blocking: call from a worker thread)."""

    def __init__(self, root: str, sync_directory: Callable[[str], None] = fsync_directory) -> None:
        self.root = root
        self.sync_directory = sync_directory  # (a test's may fail)
        self._writer = secrets.token_hex(4)
        self._numbers = itertools.count()

    def write_whole(self, path: str, data: bytes) -> None:
        """``data`` at ``path``, durably; if the same bytes are there already the file is
        left untouched (its directory is still fsynced: its rename may be very recent)."""
        directory = os.path.dirname(path)
        if not _holds(path, data):
            fd, tmp = self._create_temp(path)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                _close_and_remove(fd, tmp)
                raise
            os.close(fd)
            _replace(tmp, path)
        self.sync_directory(directory)

    def begin(self, path: str, first: bytes) -> TempResult:
        """A temporary file for ``path`` holding ``first``: write more, then finish or
        discard it."""
        fd, tmp = self._create_temp(path)
        result = TempResult(self, fd, tmp, path)
        try:
            result.write(first)
        except BaseException:
            result.discard()
            raise
        return result

    def _create_temp(self, path: str) -> tuple[int, str]:
        directory, name = os.path.split(path)
        while True:
            tmp = f"{directory}/.{name}.{self._writer}-{next(self._numbers)}.tmp"
            try:
                return os.open(tmp, _CREATE, 0o600), tmp
            except FileNotFoundError:
                self._make_directories(directory)
            except FileExistsError:
                continue  # left by a crashed writer that drew the same token: next number

    def _make_directories(self, directory: str) -> None:
        """Make ``directory`` and its missing parents, each fsynced into its parent."""
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for made in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
                os.mkdir(made)
            self.sync_directory(os.path.dirname(made))


class TempResult:
    """A result being written in parts (a stream larger than one buffer). Its methods may
    be called from different threads, one at a time or not: a lock orders them, so a
    discard waits for a write still running."""

    def __init__(self, files: ResultFiles, fd: int, tmp: str, path: str) -> None:
        self._files = files
        self._fd: int | None = fd
        self._tmp = tmp
        self._path = path
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self._tmp} was closed")
            _write_all(self._fd, data)

    def finish(self, tail: bytes) -> None:
        """Write the last bytes, make them durable and move them into place, unless the
        same bytes are there already (then the temporary file goes)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                raise ValueError(f"{self._tmp} was closed")
            try:
                _write_all(fd, tail)
                os.fsync(fd)
            except BaseException:
                _close_and_remove(fd, self._tmp)
                raise
            os.close(fd)
            if _same_file_contents(self._tmp, self._path):
                os.unlink(self._tmp)
            else:
                _replace(self._tmp, self._path)
        self._files.sync_directory(os.path.dirname(self._path))

    def discard(self) -> None:
        """Close and remove the temporary file (nothing of it stays)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                _close_and_remove(fd, self._tmp)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _replace(tmp: str, path: str) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _close_and_remove(fd: int, tmp: str) -> None:
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _holds(path: str, data: bytes) -> bool:
    """Whether ``path`` holds exactly ``data``."""
    try:
        if os.stat(path).st_size != len(data):
            return False
        with open(path, "rb") as file:
            return file.read() == data
    except FileNotFoundError:
        return False


def _same_file_contents(a: str, b: str) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except FileNotFoundError:
        return False
