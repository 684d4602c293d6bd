"""The JSONL spool source: tail a file that producers append one event per line to.

The read position (device, inode, a fingerprint of the first line, byte offset and line number:
:mod:`trigmail.sources.spool_tail`, which reads the file) is stored by the daemon in the ledger,
in the same transaction as the decisions it covers.

Behaviour a user can rely on:

- A file never seen before is read from its beginning; a missing file is waited for.
- A half-written last line waits for its newline; blank lines are skipped.
- Rotation by rename: once the renamed file has been quiet for one poll (read to its end,
  including lines its writer appended after the rename), the new file at the path is read
  from its beginning. Lines appended to a renamed file while the daemon is stopped are not
  read: on start, only the file at the path is considered.
- Rotation by truncation (``copytruncate``) restarts at byte 0. A file truncated and
  rewritten past the old offset is still caught by its first-line fingerprint, unless its
  first line is byte for byte the old one.
- A line longer than ``max_line_bytes`` is set aside in the dead-letter file without being
  held in memory whole; its ``raw`` keeps only its first bytes. After a crash such a line may
  be set aside a second time (it carries no position of its own).

A line too long, or the unfinished last line of a rotated file, is returned refused
(:attr:`SourceItem.refused`): the daemon sets it aside with the other dead letters, in the
ledger first. Dead letters go to ``<stem>.dead.jsonl`` beside the spool (``events.jsonl`` →
``events.dead.jsonl``) unless ``dead_letters`` names another file (config
``source.dead_letters``), one JSON object per line, flushed and fsynced. The file is created
``0640``.

Producers may write the spool's directory, so neither file is trusted to stay what it was
(docs/security.md): both are opened without following a symlink and must be regular files. A
spool that is a symlink, a FIFO or a directory is refused and reported (a log line, and
:meth:`SpoolSource.health` for ``/healthz``) while reads return nothing; it is read again once
a regular file is back at the path. A dead-letter file that is not a regular file is never
written through: the letters stay in the ledger.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from trigmail import faults
from trigmail.errors import SourceError, UnsafeFileError
from trigmail.files import open_regular
from trigmail.ledger.base import DeadLetter
from trigmail.sources.base import SourceItem, SourceReason, utc_now
from trigmail.sources.deadletters import DeadLetterFile
from trigmail.sources.spool_tail import SpoolLine, SpoolPosition, SpoolTail

logger = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES = 1024 * 1024


class SpoolSource:
    """Tail a JSONL spool file by polling it every ``poll_s`` seconds.

    Args:
        path: the spool file producers append to.
        poll_s: how long to sleep between looks at a quiet file.
        max_line_bytes: longer lines are set aside as ``line_too_long``.
        clock: the time dead letters are stamped with.
        dead_letters: the dead-letter file; ``<stem>.dead.jsonl`` beside the spool when
            ``None``.
    """

    def __init__(
        self,
        path: Path,
        poll_s: float = 0.05,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        clock: Callable[[], datetime] = utc_now,
        dead_letters: Path | None = None,
    ) -> None:
        self.path = path
        self.name = f"spool:{path.absolute()}"
        self.dead_path = dead_letters or path.with_name(f"{path.stem}.dead.jsonl")
        self._dead = DeadLetterFile(self.dead_path, self.name, f"spool {path}", clock)
        # Why the spool is refused, while it is: see health().
        self._spool_refused: str | None = None
        self.poll_s = poll_s
        self.max_line_bytes = max_line_bytes
        self._clock = clock
        self._tail: SpoolTail | None = None
        self._resume_at: SpoolPosition | None = None
        self._started = False
        self._waiting_logged = False
        # The watermark: every line that entered the file before it has been read and its
        # batch acknowledged (see :meth:`watermark`).
        self._drained_at: datetime | None = None
        self._end_seen_at: datetime | None = None
        self._unacked: str | None = None  # the position of the last line read, until acked
        # The unfinished last line of a rotated file, set aside by the next read.
        self._refused: list[SourceItem] = []

    #: One reader, in file order: the lines' own times may move the watermark on.
    ordered = True

    def start(self, position: str | None) -> None:
        """Begin after ``position`` if the file at the path is the one it was taken in.

        Raises:
            SourceError: when ``position`` is not a spool position, or the file is unreadable.
        """
        self.close()
        self._resume_at = SpoolPosition.from_text(position) if position else None
        self._started = True
        self._dead.warn_if_shared()
        self._open()

    def read(self, max_items: int, timeout_s: float) -> list[SourceItem]:
        """Return the next complete lines, polling the file until ``timeout_s`` has passed."""
        if not self._started:
            raise RuntimeError("SpoolSource.read() called before start()")
        deadline = time.monotonic() + timeout_s
        while True:
            polled_at = self._clock()
            try:
                items = self._poll(max_items)
            except OSError as exc:
                raise SourceError(f"spool {self.path}: cannot read: {exc}") from exc
            self._note_read(items, reached_end=len(items) < max_items, polled_at=polled_at)
            remaining_s = deadline - time.monotonic()
            if items or remaining_s <= 0:
                return items
            time.sleep(min(self.poll_s, remaining_s))

    def health(self) -> str | None:
        """Return why the spool or its dead-letter file is refused right now, else ``None``.

        Thread-safe (it reads two attributes): ``/healthz`` calls it from the metrics server.
        """
        problems = [p for p in (self._spool_refused, self._dead.problem) if p is not None]
        return "; ".join(problems) or None

    def ack(self, items: Sequence[SourceItem]) -> None:
        """Note the items decided (their position is committed in the ledger by the daemon)."""
        if items and items[-1].position == self._unacked:
            self._unacked = None
            if self._end_seen_at is not None:
                self._drained_at = self._end_seen_at

    def watermark(self) -> datetime | None:
        """Return a time before which every line that entered the file has been acknowledged:
        the start of the last poll that read the file to its end, once the lines that poll
        returned are acknowledged; ``None`` until then.

        A line is taken to enter the file when its newline is written: one still half-written
        when a poll starts is after that poll's time, however early its first bytes came.
        """
        return self._drained_at

    def _note_read(
        self, items: Sequence[SourceItem], *, reached_end: bool, polled_at: datetime
    ) -> None:
        if items:
            self._unacked = items[-1].position
        if not reached_end:
            return
        self._end_seen_at = polled_at
        if self._unacked is None:
            self._drained_at = polled_at

    def dead_letter(self, item: SourceItem, reason: str, detail: str) -> None:
        """Append the item to the dead-letter file, durably.

        Not logged here: the daemon, which chose the reason, logs and counts it. A refused
        dead-letter file (a symlink, a FIFO) is not written and not raised: :meth:`health`
        says so, and the letter is in the ledger.
        """
        self._write_dead_letter(item.ref, reason, detail, item.data)

    def restore_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Append those of ``letters`` the dead-letter file lacks; return how many.

        The daemon writes a batch's dead letters here only after committing the batch, so a
        crash in between leaves them in the ledger alone. Those present are among the file's
        last ``len(letters)`` lines, as nothing is written after them before the restart.
        """
        return self._dead.restore(letters)

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
            self._tail = None
        self._started = False

    def _poll(self, max_items: int) -> list[SourceItem]:
        tail = self._tail or self._open()
        if tail is None:
            return []
        if tail.truncated():
            logger.warning(
                "spool %s: truncated at byte %d, reading from the start", self.path, tail.read_at
            )
            tail.restart()
        read_before = tail.read_at
        items = self._take(tail, max_items)
        if items or tail.read_at != read_before:
            return items
        # Only a quiet file is left for another: a renamed file is drained to its end first.
        tail = self._follow_rename(tail)
        refused, self._refused = self._refused, []
        return refused + (self._take(tail, max_items) if tail is not None else [])

    def _take(self, tail: SpoolTail, max_items: int) -> list[SourceItem]:
        items: list[SourceItem] = []
        name = self.path.name
        while len(items) < max_items:
            line = tail.next_line()
            if line is None:
                break
            ref = f"{name}:{line.number}"
            if line.too_long:
                detail = f"line is longer than {self.max_line_bytes} bytes; raw is its start"
                refused = (SourceReason.LINE_TOO_LONG.value, detail)
                position = tail.position_text(line)
                items.append(SourceItem(line.data, position, ref, refused=refused))
            elif line.data.strip():
                items.append(SourceItem(line.data, tail.position_text(line), ref))
        return items

    def _follow_rename(self, tail: SpoolTail) -> SpoolTail | None:
        try:
            # lstat: a symlink put at the path is another file (refused by _open), whatever
            # it points to.
            stat = self.path.lstat()
        except FileNotFoundError:
            return tail  # renamed away and not yet recreated: keep draining the old file
        except OSError as exc:
            raise SourceError(f"spool {self.path}: cannot stat: {exc}") from exc
        if (stat.st_dev, stat.st_ino) == tail.identity:
            return tail
        logger.info("spool %s: rotated, old file read to line %d", self.path, tail.line)
        unfinished = tail.unfinished()
        if unfinished is not None:
            ref = f"{self.path.name}:{tail.line + 1}"
            detail = "the file was rotated before this line got its newline"
            refused = (SourceReason.INCOMPLETE_LINE.value, detail)
            position = tail.position(SpoolLine(unfinished, tail.line + 1, tail.read_at)).to_text()
            self._refused.append(SourceItem(unfinished, position, ref, refused=refused))
        tail.close()
        self._tail = None
        faults.reached(faults.KillPoint.DURING_ROTATION)
        return self._open()

    def _open(self) -> SpoolTail | None:
        try:
            file = os.fdopen(open_regular(self.path, os.O_RDONLY), "rb", buffering=0)
        except FileNotFoundError:
            if not self._waiting_logged:
                logger.info("spool %s: no such file yet, waiting for it", self.path)
                self._waiting_logged = True
            return None
        except UnsafeFileError as exc:
            self._refuse_spool(str(exc))
            return None
        except OSError as exc:
            raise SourceError(f"spool {self.path}: cannot open: {exc}") from exc
        self._waiting_logged = False
        if self._spool_refused is not None:
            logger.warning("spool %s: a regular file is back at the path: reading it", self.path)
            self._spool_refused = None
        assert isinstance(file, io.FileIO)
        tail = SpoolTail(file, self.max_line_bytes)
        resume_at, self._resume_at = self._resume_at, None
        if resume_at is None:
            logger.info("spool %s: reading from the start", self.path)
        else:
            logger.info("spool %s: %s", self.path, tail.resume(resume_at))
        self._tail = tail
        return tail

    def _write_dead_letter(self, ref: str, reason: str, detail: str, raw: bytes) -> None:
        # Not written when the file is refused: health() says so, the ledger keeps the letter.
        self._dead.write(ref, reason, detail, raw)

    def _refuse_spool(self, reason: str) -> None:
        # Logged once per reason: _open is retried on every poll while the path stays bad.
        problem = f"spool not read: {reason}"
        if problem != self._spool_refused:
            logger.error("spool %s: not read: %s; waiting for a regular file", self.path, reason)
        self._spool_refused = problem
