"""Reading rule files and the config file: regular files only, bounded, never out of rules.d.

Whoever can write rules.d can add a link in it; ``validate`` prints what it reads and ``serve``
logs it, so a link to ``/etc/passwd`` or to the API key file must not be followed, and a FIFO
must not hang ``open()`` (docs/security.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from trigmail.errors import UnreadableFileError
from trigmail.rules.yamlsource import MAX_DOCUMENT_CHARS

# A UTF-8 character is at least one byte: a file within this has text within the YAML bound.
MAX_FILE_BYTES: Final = MAX_DOCUMENT_CHARS
# Opening a FIFO for reading blocks until a writer comes; non-blocking, it returns at once and
# fstat says what it is. Windows has neither flag, nor FIFOs on a path.
_OPEN_FLAGS: Final = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def read_text(path: Path, max_bytes: int = MAX_FILE_BYTES, *, follow: bool = True) -> str:
    """Return the text of the regular file ``path``, at most ``max_bytes`` of UTF-8.

    Args:
        path: the file.
        max_bytes: the most it may hold.
        follow: whether ``path`` itself may be a link (a path checked with :func:`outside` and
            resolved is opened with ``follow=False``: a link put there since is refused).

    Raises:
        UnreadableFileError: naming the reason, never quoting the file's content.
    """
    flags = _OPEN_FLAGS if follow else _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadableFileError(f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd)
        if not stat.S_ISREG(mode.st_mode):
            raise UnreadableFileError("not a regular file (a directory, FIFO or device): not read")
        if mode.st_size > max_bytes:
            raise UnreadableFileError(_too_large(mode.st_size, max_bytes))
        try:
            data = file.read(max_bytes + 1)
        except OSError as exc:
            raise UnreadableFileError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise UnreadableFileError(_too_large(len(data), max_bytes))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(f"not UTF-8 text (byte {exc.start} is not)") from None


def _too_large(size: int, max_bytes: int) -> str:
    return f"the file is too large: {size} bytes, over {max_bytes}; split it"


def outside(path: Path, root: Path) -> str | None:
    """Say why ``path`` (in ``root``) must not be read, or return ``None`` when it may be.

    Once links are followed, ``path`` must lead inside ``root``. ``root`` itself may be a link
    (``/etc/trigmail/rules.d`` to a checkout): only where its files lead counts. The message
    names neither the target nor anything in it.
    """
    try:
        target = path.resolve(strict=False)
        base = root.resolve()
    except (OSError, RuntimeError):
        return "a link that loops or cannot be followed: ignored"
    if target.is_relative_to(base):
        return None
    return f"a link to a file outside {root}: ignored"
