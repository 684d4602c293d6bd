"""A spool's dead-letter file: one JSON object per line, appended durably, never through a symlink.

By default it is ``<stem>.dead.jsonl`` beside the spool, in a directory producers may write
(docs/security.md): the name may have been swapped for a symlink or a FIFO. It is opened with
:func:`trigmail.files.open_regular`, so such a file is refused, never written through; the
refusal is logged once and shown by :attr:`DeadLetterFile.problem` (``/healthz``), and the
letters stay in the ledger. It is created ``0640``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from trigmail.errors import SourceError, UnsafeFileError
from trigmail.events import format_ts
from trigmail.files import open_regular
from trigmail.ledger.base import DeadLetter
from trigmail.sources.base import raw_text

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024


def _last_lines(path: Path, count: int) -> list[bytes]:
    """Return the last ``count`` lines of ``path`` (fewer if it is shorter or missing).

    Raises:
        UnsafeFileError: ``path`` is a symlink or not a regular file.
    """
    try:
        file = os.fdopen(open_regular(path, os.O_RDONLY), "rb")
    except FileNotFoundError:
        return []
    with file:
        end = file.seek(0, os.SEEK_END)
        start, data = end, b""
        # Read backwards until the chunk holds more newlines than lines wanted, or the start.
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - _CHUNK_BYTES)
            file.seek(start)
            data = file.read(end - start)
    return data.splitlines()[-count:]


class DeadLetterFile:
    """Where a spool's bad lines are set aside.

    Args:
        path: the file.
        source: the source's name, written in each letter.
        subject: what log lines and errors start with (``spool /path/events.jsonl``).
        clock: the time letters are stamped with.
    """

    def __init__(
        self, path: Path, source: str, subject: str, clock: Callable[[], datetime]
    ) -> None:
        self.path = path
        self._source = source
        self._subject = subject
        self._clock = clock
        # Why letters cannot be written right now; read by /healthz from another thread.
        self.problem: str | None = None

    def warn_if_shared(self) -> None:
        """Log a warning when others may write the file's directory (a producer-writable spool
        directory): they could read the raw events set aside there, or swap the file."""
        try:
            mode = self.path.parent.stat().st_mode
        except OSError:
            return  # the first write will say what is wrong
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            logger.warning(
                "%s: dead letters go to %s, in a directory others may write (mode %s): "
                "set source.dead_letters to a file in the state directory (docs/security.md)",
                self._subject,
                self.path,
                oct(stat.S_IMODE(mode)),
            )

    def write(self, ref: str, reason: str, detail: str, raw: bytes) -> bool:
        """Append one letter, flushed and fsynced; return whether it was.

        A file that is a symlink or not a regular file is refused without raising: the letter
        is in the ledger already, and reading must go on (its batch still gets acknowledged).

        Raises:
            SourceError: the file could not be written (the disk is full, no permission).
        """
        record = {
            "at": format_ts(self._clock()),
            "source": self._source,
            "ref": ref,
            "reason": str(reason),
            "detail": detail,
            "raw": raw_text(raw),
        }
        try:
            fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND, create=True)
            with os.fdopen(fd, "a", encoding="utf-8") as out:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
        except UnsafeFileError as exc:
            self._refuse(str(exc))
            return False
        except OSError as exc:
            raise SourceError(f"{self._subject}: cannot write {self.path}: {exc}") from exc
        if self.problem is not None:
            logger.warning("%s: dead-letter file %s usable again", self._subject, self.path)
            self.problem = None
        return True

    def restore(self, letters: Sequence[DeadLetter]) -> int:
        """Append those of ``letters`` the file lacks; return how many.

        The daemon writes a batch's dead letters here only after committing the batch, so a
        crash in between leaves them in the ledger alone. Those present are among the file's
        last ``len(letters)`` lines, as nothing is written after them before the restart.
        An unsafe file is no reason to stay down: the letters are in the ledger.
        """
        if not letters:
            return 0
        try:
            last = _last_lines(self.path, len(letters))
        except (UnsafeFileError, OSError) as exc:
            self._refuse(str(exc))
            return 0
        present = set()
        for line in last:
            try:
                record = json.loads(line)
                present.add((record["ref"], record["reason"], record["raw"]))
            except (ValueError, TypeError, KeyError):
                continue  # a line torn by the crash itself: its letter is written again
        missing = [d for d in letters if (d.position, d.reason, d.raw) not in present]
        written = 0
        try:
            for letter in missing:
                raw = letter.raw.encode()
                written += self.write(letter.position, letter.reason, letter.detail, raw)
        except SourceError as exc:
            logger.warning("%s: %s; the letters stay in the ledger", self._subject, exc)
        return written

    def _refuse(self, reason: str) -> None:
        problem = f"dead letters not written: {reason}"
        if problem != self.problem:
            logger.error("%s: %s; they stay in the ledger", self._subject, problem)
        self.problem = problem
