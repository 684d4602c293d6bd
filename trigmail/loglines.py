"""Lines logged in bulk: a provider request's thousand lines sent, written at once.

:func:`lines_together` holds the lines a thread logs through a :class:`LineHandler` (the
handler :func:`trigmail.logs.logging_config` installs) until its block ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

# Per thread: how deep in :func:`lines_together` it is, and the lines each handler holds.
_together = threading.local()


@contextmanager
def lines_together() -> Iterator[None]:
    """Hold the lines this thread logs through a :class:`LineHandler` until the block ends,
    then write each handler's at once.

    A provider request of a thousand emails logs a thousand lines: one write (and one flush)
    instead of a write per line, each a system call that also hands the GIL over. Each line is
    still its own record, formatted when it is logged; other threads' lines are not held.
    """
    depth = getattr(_together, "depth", 0)
    if depth == 0:
        _together.held = {}
    _together.depth = depth + 1
    try:
        yield
    finally:
        _together.depth = depth
        if depth == 0:
            held: dict[LineHandler, list[tuple[logging.LogRecord, str]]] = _together.held
            _together.held = {}
            for handler, lines in held.items():
                handler.write_lines(lines)


class LineHandler(logging.StreamHandler[TextIO]):
    """A stream handler whose lines logged inside :func:`lines_together` are written at the
    block's end, all at once."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(_together, "depth", 0):
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:  # as StreamHandler.emit: a bad record must not stop the caller
            self.handleError(record)
            return
        _together.held.setdefault(self, []).append((record, line))

    def write_lines(self, lines: list[tuple[logging.LogRecord, str]]) -> None:
        """Write lines held for this handler, in one write."""
        if not lines:
            return
        text = "".join(line + self.terminator for _, line in lines)
        self.acquire()
        try:
            self.stream.write(text)
            self.flush()
        except Exception:  # as StreamHandler.emit
            self.handleError(lines[-1][0])
        finally:
            self.release()
