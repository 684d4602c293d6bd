"""Opening the files other people can reach: never through a symlink, never a FIFO.

The spool's directory is writable by producers (docs/security.md), so any name in it may be
swapped for a symlink to a secret, a FIFO that would block ``open()`` for ever, or a
directory. Every file trigmail reads from or appends to there is opened here: with
``O_NOFOLLOW`` (a symlink as the last component is refused), with ``O_NONBLOCK`` (so opening
a FIFO returns at once instead of waiting for a writer) and checked with ``fstat`` to be a
regular file before a byte moves.

Files and directories trigmail creates get :data:`FILE_MODE` and :data:`DIR_MODE` whatever
the umask: they hold emails, names and raw events, for the service and its group only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Final

from trigmail.errors import UnsafeFileError

FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o750

_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def kind(mode: int) -> str:
    """Name what a ``st_mode`` is, for a message (``a FIFO``, ``a regular file``)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: Path, flags: int, *, create: bool = False) -> int:
    """Open ``path`` with ``flags`` and return the descriptor, refusing anything unsafe.

    Args:
        path: the file; its last component must not be a symlink.
        flags: ``os.O_RDONLY``, ``os.O_WRONLY | os.O_APPEND``, ...
        create: create the file, mode :data:`FILE_MODE`, when it is missing.

    Raises:
        UnsafeFileError: ``path`` is a symlink, a FIFO, a socket, a directory or a device.
        OSError: it cannot be opened for another reason (``FileNotFoundError`` when missing
            and ``create`` is false).
    """
    safe = flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    created = False
    if create:
        try:
            fd = os.open(path, safe | os.O_CREAT | os.O_EXCL, FILE_MODE)
            created = True
        except FileExistsError:
            fd = _open_existing(path, safe)
    else:
        fd = _open_existing(path, safe)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(f"{path} is {kind(mode)}, not a regular file: refused")
        if created:
            # The umask may have narrowed the mode (077) or, with 0, left it as asked: fchmod
            # makes it exactly FILE_MODE either way.
            os.fchmod(fd, FILE_MODE)
        # Non-blocking only kept a FIFO from hanging open(); reads of a file never block.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_existing(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path} is a symbolic link: refused, never followed") from None
        if exc.errno == errno.ENXIO:
            # A FIFO without a reader, or a Unix socket, opened for writing without blocking.
            raise UnsafeFileError(
                f"{path} is a FIFO or a socket, not a regular file: refused"
            ) from None
        if exc.errno == errno.EISDIR:
            raise UnsafeFileError(f"{path} is a directory, not a regular file: refused") from None
        raise


def create_file(path: Path) -> bool:
    """Create ``path`` empty with :data:`FILE_MODE` when it does not exist; return whether it did.

    For files another library opens by name (the SQLite ledger, which gives its ``-wal`` and
    ``-shm`` files the database file's mode).

    Raises:
        OSError: it cannot be created.
    """
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each with :data:`DIR_MODE` whatever the umask.

    Directories that already exist keep their mode: the operator chose it.

    Raises:
        OSError: one cannot be created.
    """
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(DIR_MODE)
        except FileExistsError:
            continue  # made by another process meanwhile: its mode is its own
        directory.chmod(DIR_MODE)
