"""Lines logged in bulk: a provider request's thousand lines sent, made and written at once.

:func:`lines_together` holds the lines a thread logs through a :class:`LineHandler` (the
handler :func:`trigmail.logs.logging_config` installs) until its block ends; a
:class:`RecordMaker` makes their records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

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


class RecordMaker:
    """Makes ``logger``'s records as ``logger.makeRecord(name, level, "", 0, msg, (), None,
    extra)`` does (no caller's file and line: no trigmail format writes them), for the thread
    that built the maker.

    ``LogRecord.__init__`` derives about twenty attributes, the same for every record of a
    level and thread (names, process, thread); here they are derived once per level, and each
    record is a copy of that level's with its own message, time and extras: ~4 times cheaper.
    Where a record factory other than ``LogRecord`` is installed, it makes every record.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._factory_is_ours = logging.getLogRecordFactory() is logging.LogRecord
        self._prototypes: dict[int, dict[str, Any]] = {}

    def make(self, level: int, msg: str, extra: Mapping[str, Any]) -> logging.LogRecord:
        """A record of ``msg`` at ``level`` with ``extra``'s fields (none a LogRecord
        attribute, ``message`` or ``asctime``: ``makeRecord`` refuses those)."""
        if not self._factory_is_ours:
            return self._record(level, msg, extra)
        prototype = self._prototypes.get(level)
        if prototype is None:
            prototype = self._prototypes[level] = vars(self._record(level, "", None))
        created = time.time()
        attrs = prototype.copy()
        attrs.update(extra)  # after the standard attributes, as makeRecord adds them
        attrs["msg"] = msg
        attrs["created"] = created
        attrs["msecs"] = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes
        attrs["relativeCreated"] = (
            prototype["relativeCreated"] + (created - prototype["created"]) * 1000
        )
        record = _new_record(logging.LogRecord)
        record.__dict__ = attrs
        return record

    def _record(self, level: int, msg: str, extra: Mapping[str, Any] | None) -> logging.LogRecord:
        return self.logger.makeRecord(self.logger.name, level, "", 0, msg, (), None, extra=extra)


_new_record = object.__new__
