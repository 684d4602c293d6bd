"""One spool file being read: its lines, and the position after each (see :mod:`.spool`).

:class:`SpoolTail` splits an open file into lines without holding an over-long one whole, and
tells whether the file was truncated or rewritten under it; :class:`SpoolPosition` is what the
ledger stores of where it stopped: device, inode, a fingerprint of the first line, byte offset
and line number.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass

from trigmail.errors import SourceError
from trigmail.records import record

# The fingerprint covers the first line up to this many bytes: enough to tell two files
# apart (events carry ids and timestamps), small enough to re-read on every poll.
FINGERPRINT_MAX_BYTES = 1024
# How much of an over-long line its dead letter keeps, so a person can recognise it.
DEAD_RAW_MAX_BYTES = 1024
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class SpoolPosition:
    """Where reading a spool file stopped: just after line ``line``, at byte ``offset``.

    ``fp`` is a sha256 prefix of the file's first ``fp_bytes`` bytes: its first line, newline
    included, capped at :data:`FINGERPRINT_MAX_BYTES`. A position is only ever taken after a
    complete line, so the bytes it covers can no longer change while the file is the same.
    """

    dev: int
    inode: int
    fp: str
    fp_bytes: int
    offset: int
    line: int

    def to_text(self) -> str:
        prefix = _prefix(self.dev, self.inode, self.fp, self.fp_bytes)
        return f'{prefix}{self.offset},"line":{self.line}}}'

    @classmethod
    def from_text(cls, text: str) -> SpoolPosition:
        """Parse a position stored by :meth:`to_text`.

        Raises:
            SourceError: when ``text`` is not such a position.
        """
        try:
            position = cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise SourceError(f"not a spool position: {text[:200]!r} ({exc})") from None
        numbers = (position.dev, position.inode, position.fp_bytes, position.offset, position.line)
        if not isinstance(position.fp, str) or not all(type(n) is int for n in numbers):
            raise SourceError(f"not a spool position: {text[:200]!r}")
        return position


def _prefix(dev: int, inode: int, fp: str, fp_bytes: int) -> str:
    """The text of a position up to its offset: the same compact JSON that ``json.dumps`` of
    the dict gives. Every line read gets a position, and all but two fields are the file's."""
    return f'{{"dev":{dev},"inode":{inode},"fp":{json.dumps(fp)},"fp_bytes":{fp_bytes},"offset":'


@record
class SpoolLine:
    """One complete line; ``data`` of an over-long one holds only its first bytes."""

    data: bytes
    number: int
    end: int
    too_long: bool = False


def _fingerprint(head: bytes) -> tuple[str, int]:
    """Return the fingerprint of a file starting with ``head`` and how many bytes it covers."""
    newline = head.find(b"\n", 0, FINGERPRINT_MAX_BYTES)
    covered = newline + 1 if newline >= 0 else min(len(head), FINGERPRINT_MAX_BYTES)
    return _digest(head[:covered]), covered


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class SpoolTail:
    """One open spool file and how far it has been consumed.

    Everything before ``offset`` is consumed; ``buf[start:]`` holds the bytes read after it.
    Lines are split off by moving ``start`` rather than deleting from ``buf`` (which would
    copy the rest of the buffer for every line); ``buf`` is compacted once per read.
    """

    def __init__(self, file: io.FileIO, max_line_bytes: int) -> None:
        self.file = file
        stat = os.fstat(file.fileno())
        self.identity = (stat.st_dev, stat.st_ino)
        self.max_line_bytes = max_line_bytes
        self.offset = 0
        self.line = 0
        self.buf = bytearray()
        self.start = 0
        self.fp: tuple[str, int] | None = None
        # The fingerprint the positions' text was formatted for, and that text up to the offset.
        self._prefix: tuple[tuple[str, int], str] | None = None
        self.skipping: bytes | None = None  # the head of the over-long line being skipped

    @property
    def read_at(self) -> int:
        return self.offset + len(self.buf) - self.start

    def unfinished(self) -> bytes | None:
        """Return the start of a line still waiting for its newline, if any."""
        if self.skipping is not None:
            return self.skipping
        return bytes(self.buf[self.start :]) or None

    def resume(self, position: SpoolPosition) -> str:
        """Continue after ``position`` if it is this file's; return what was decided, for logs."""
        if (position.dev, position.inode) != self.identity:
            return "another file is at the path now: reading it from the start"
        if self._headfingerprint(position.fp_bytes) != position.fp:
            return "the file's first line changed: reading it from the start"
        if os.fstat(self.file.fileno()).st_size < position.offset:
            return "the file is shorter than the position (truncated): reading it from the start"
        self.offset, self.line = position.offset, position.line
        self.fp = (position.fp, position.fp_bytes)
        return "resuming after the committed position"

    def restart(self) -> None:
        self.offset, self.line, self.fp, self.skipping = 0, 0, None, None
        self.buf.clear()
        self.start = 0

    def truncated(self) -> bool:
        """Return whether the file was truncated (or rewritten) under the reader."""
        if os.fstat(self.file.fileno()).st_size < self.read_at:
            return True
        return self.fp is not None and self._headfingerprint(self.fp[1]) != self.fp[0]

    def next_line(self) -> SpoolLine | None:
        """Return the next complete line, reading more of the file as needed."""
        while True:
            line = self._split()
            if line is not None:
                return line
            if not self._fill():
                return None

    def position(self, line: SpoolLine) -> SpoolPosition:
        if self.fp is None:
            self.fp = _fingerprint(self._read(0, FINGERPRINT_MAX_BYTES))
        dev, inode = self.identity
        fp, fp_bytes = self.fp
        return SpoolPosition(dev, inode, fp, fp_bytes, line.end, line.number)

    def position_text(self, line: SpoolLine) -> str:
        """``position(line).to_text()``, without building the position: the part before the
        offset is the same for every line of the file, so it is formatted once."""
        cached = self._prefix
        if cached is None or cached[0] is not self.fp:
            position = self.position(line)  # takes the fingerprint at the file's first line
            assert self.fp is not None
            self._prefix = (self.fp, _prefix(*self.identity, *self.fp))
            return position.to_text()
        return f'{cached[1]}{line.end},"line":{line.number}}}'

    def close(self) -> None:
        self.file.close()

    def _split(self) -> SpoolLine | None:
        newline = self.buf.find(b"\n", self.start)
        if newline < 0:
            self._skip_if_too_long()
            return None
        data = bytes(self.buf[self.start : newline]).removesuffix(b"\r")
        self.offset += newline + 1 - self.start
        self.start = newline + 1
        self.line += 1
        head, self.skipping = self.skipping, None
        if head is not None or len(data) > self.max_line_bytes:
            return SpoolLine((head or data)[:DEAD_RAW_MAX_BYTES], self.line, self.offset, True)
        return SpoolLine(data, self.line, self.offset)

    def _skip_if_too_long(self) -> None:
        # An over-long line is consumed as it arrives instead of buffered whole.
        waiting = len(self.buf) - self.start
        if self.skipping is None and waiting <= self.max_line_bytes:
            return
        if self.skipping is None:
            self.skipping = bytes(self.buf[self.start : self.start + DEAD_RAW_MAX_BYTES])
        self.offset += waiting
        self.buf.clear()
        self.start = 0

    def _fill(self) -> bool:
        chunk = self._read(self.read_at, _CHUNK_BYTES)
        del self.buf[: self.start]
        self.start = 0
        self.buf += chunk
        return bool(chunk)

    def _headfingerprint(self, size: int) -> str:
        return _digest(self._read(0, size))

    def _read(self, offset: int, size: int) -> bytes:
        self.file.seek(offset)
        return self.file.read(size) or b""
