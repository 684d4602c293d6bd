"""Log formats for the daemon, and the guard that keeps secrets out of every log line.

The library only logs; :func:`logging_config` returns a :func:`logging.config.dictConfig`
dict that the CLI applies. Both formats write one line per record, exceptions included, so
journald (and any line-based shipper) keeps one entry per event:

- ``text``: ``ts=2026-11-27T20:00:00.000Z level=info logger=trigmail.daemon msg="send k: sent"``
- ``json``: ``{"ts": "...", "level": "info", "logger": "...", "msg": "...", ...extra}``

Under journald the timestamp is left out (journald stamps each entry itself) and the line
starts with the syslog priority ``<N>``, which journald strips and records as the level.

Values come from events and rule files, so a line could carry terminal escapes (``ESC``,
OSC), line separators or bidi overrides that rewrite what an operator sees. Every C0 and C1
control, U+2028/U+2029 and the bidi controls are written as escapes (``\x1b``, ``\u2028``)
in both formats. An uncaught exception, once :func:`install_excepthooks` ran, is one
``critical`` line like any other, its traceback escaped into the ``exc`` field.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TextIO

from trigmail.errors import ConfigError
from trigmail.loglines import LineHandler

LogFormat = Literal["text", "json"]

REDACTED = "<secret>"

# Shorter values are not worth guarding: replacing every "abc" in every line would garble
# the logs while protecting nothing a guess could not find.
MIN_SECRET_LEN = 4

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}

_ANSI_RESET = "\033[0m"
_ANSI_BY_LEVEL = {
    logging.DEBUG: "\033[2m",
    logging.INFO: "\033[32m",
    logging.WARNING: "\033[33m",
    logging.ERROR: "\033[31m",
    logging.CRITICAL: "\033[1;31m",
}

# Longest first, so a secret containing another is replaced whole. Replaced, never mutated,
# so a formatting thread iterates a consistent tuple without taking the lock.
_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Guard ``value``: from now on it appears in no log line, only ``<secret>``.

    A belt-and-braces measure: secrets are held in types whose ``repr`` hides them, and this
    catches the one that slips into a message anyway (a URL with a password in an error).
    """
    global _secrets  # noqa: PLW0603 (one process-wide set, as every handler must see it)
    if len(value) < MIN_SECRET_LEN:
        return
    with _secrets_lock:
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def clear_secrets() -> None:
    """Forget every registered secret (for tests, and before registering rotated ones)."""
    global _secrets  # noqa: PLW0603 (see register_secret)
    with _secrets_lock:
        _secrets = ()


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``<secret>``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SecretFilter(logging.Filter):
    """Redact registered secrets from a record's message before any handler formats it.

    Handlers with trigmail's formatters redact their output anyway; this filter protects the
    handlers that do not (a test's capture handler, a third-party one).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def syslog_priority(levelno: int) -> int:
    """Map a logging level to a syslog priority (``<3>`` err ... ``<7>`` debug)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class _LineFormatter(logging.Formatter):
    """Shared part of the two formats: the fields of a record, redacted, on one line.

    Args:
        journald: leave out ``ts`` and prefix the syslog priority ``<N>``.
        colour: colour the level with ANSI escapes (for a terminal).
    """

    def __init__(self, *, journald: bool = False, colour: bool = False) -> None:
        super().__init__()
        self.journald = journald
        self.colour = colour
        # Per order of a record's attribute names, the extras to write (many records share one).
        self._extras: dict[tuple[str, ...], tuple[str, ...]] = {}

    def format(self, record: logging.LogRecord) -> str:
        line = redact(self.render(self.fields(record), record.levelno))
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journald else line

    def render(self, fields: Mapping[str, Any], levelno: int) -> str:
        raise NotImplementedError

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """Return the record as ordered fields: ts, level, logger, msg, exc, then extras."""
        fields: dict[str, Any] = {}
        if not self.journald:
            fields["ts"] = _rfc3339_ms(record.created)
        fields["level"] = record.levelname.lower()
        fields["logger"] = record.name
        fields["msg"] = redact(record.getMessage())
        if record.exc_info or record.exc_text or record.stack_info:
            trace = self._trace(record)
            if trace:
                fields["exc"] = redact(trace)
        # The extras are the record's attributes past the standard ones, in their order.
        attrs = vars(record)
        names = tuple(attrs)
        extras = self._extras.get(names)
        if extras is None:
            extras = self._extra_names(names)
        for key in extras:
            if key not in fields:  # "exc", when the record has a trace
                value = attrs[key]
                fields[key] = redact(value) if type(value) is str else value
        return fields

    def _extra_names(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The extras of a record with attributes ``names`` that its line writes: none of the
        fields written before them (``ts`` where written, ``level``, ``logger``)."""
        skipped = _RECORD_ATTRS | (
            {"level", "logger"} if self.journald else {"ts", "level", "logger"}
        )
        extras = tuple(name for name in names if name not in skipped)
        if len(self._extras) >= _FORMAT_CACHE_SIZE:  # records of many shapes: start again
            self._extras.clear()
        self._extras[names] = extras
        return extras

    def _trace(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        parts = [record.exc_text or "", self.formatStack(record.stack_info or "")]
        return "\n".join(part for part in parts if part)


# The last second stamped, and its text: a busy serve stamps many lines in the same second.
_last_second: tuple[int, str] = (-1, "")


def _rfc3339_ms(created_s: float) -> str:
    """``created_s`` as ``datetime.fromtimestamp(created_s, UTC)`` writes it to the millisecond
    (rounded half-even to the microsecond, then truncated), the second's text cached."""
    global _last_second  # noqa: PLW0603 (a cache; a tuple is replaced whole, never mutated)
    second = math.floor(created_s)
    micros = round((created_s - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached_second, text = _last_second
    if second != cached_second:
        stamp = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")
        text = stamp.removesuffix("+00:00")
        _last_second = (second, text)
    return text + _MILLIS[micros // 1000]


# The millisecond and zone of a timestamp, written once: a format spec per line costs more.
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]


class KeyValueFormatter(_LineFormatter):
    """``key=value`` pairs (logfmt); values with spaces, quotes or newlines are quoted."""

    def __init__(self, *, journald: bool = False, colour: bool = False) -> None:
        super().__init__(journald=journald, colour=colour)
        # The text of each (level number, level name, logger): the same for many records.
        self._heads: dict[tuple[int, str, str], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        """The line :meth:`render` writes of :meth:`fields`, made without building the fields:
        a line per email sent is the busiest record. A record with a trace, or with a
        registered secret in a value (redacted value by value before quoting), takes the
        general path."""
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        attrs = vars(record)
        names = tuple(attrs)
        extras = self._extras.get(names)
        if extras is None:
            extras = self._extra_names(names)
        head = self._heads.get((record.levelno, record.levelname, record.name))
        if head is None:
            head = self._head(record.levelno, record.levelname, record.name)
        message = record.getMessage()
        texts = [message]
        parts = [head, "msg=" + _logfmt_text(message)]
        for key in extras:
            value = attrs[key]
            if type(value) is str:
                texts.append(value)
                parts.append(f"{key}={_logfmt_text(value)}")
            else:
                parts.append(f"{key}={_logfmt_value(value)}")
        secrets = _secrets
        if secrets:
            joined = "\n".join(texts)
            for secret in secrets:
                if secret in joined:
                    return super().format(record)
        if not self.journald:
            parts[0] = f"ts={_rfc3339_ms(record.created)} {head}"
        line = redact(" ".join(parts))
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journald else line

    def _head(self, levelno: int, levelname: str, name: str) -> str:
        head = self.render({"level": levelname.lower(), "logger": name}, levelno)
        if len(self._heads) >= _FORMAT_CACHE_SIZE:
            self._heads.clear()
        self._heads[levelno, levelname, name] = head
        return head

    def render(self, fields: Mapping[str, Any], levelno: int) -> str:
        pairs = []
        for key, value in fields.items():
            text = _logfmt_value(value)
            if key == "level" and self.colour:
                text = f"{_ANSI_BY_LEVEL.get(levelno, '')}{text}{_ANSI_RESET}"
            pairs.append(f"{key}={text}")
        return " ".join(pairs)


# How many level/logger texts and extras' name lists a formatter keeps.
_FORMAT_CACHE_SIZE = 256


def _escape_for(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0 and DEL, C1, the line and paragraph separators, and the bidi embeddings, overrides and
# isolates: each can move the cursor, end a line or reorder what a terminal shows.
_CONTROL_CODES = [
    *range(0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_CONTROL_ESCAPES = {code: _escape_for(code) for code in _CONTROL_CODES} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
_CONTROLS = re.compile("[" + "".join(re.escape(chr(c)) for c in _CONTROL_CODES) + "]")


def escape_controls(text: str) -> str:
    """Return ``text`` with every control character written as an escape (``\\x1b``).

    For anything printed to a terminal that came from an event or a rule file: the rich
    tables of ``status``, ``simulate`` and ``ledger`` use it too.
    """
    return text.translate(_CONTROL_ESCAPES) if _CONTROLS.search(text) else text


_LOGFMT_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"'} | _CONTROL_ESCAPES
# JSON escapes C0 itself; the rest are valid inside a JSON string as \uXXXX.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _CONTROL_CODES if code >= 0x7F}


# What makes a logfmt value need quotes: a blank, a quote, `=`, a backslash or a control.
_LOGFMT_NEEDS_QUOTES = re.compile(
    r'[\s"=\\' + "".join(re.escape(chr(code)) for code in _CONTROL_CODES) + "]"
)
_LOGFMT_NEEDS_ESCAPES = re.compile("[" + "".join(re.escape(chr(c)) for c in _LOGFMT_ESCAPES) + "]")


def _logfmt_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _logfmt_text(value)
    if kind is int:
        return str(value)  # what json.dumps writes for a plain int: never quoted
    if value is None:
        return "null"
    return _logfmt_text(json.dumps(value, default=str))


def _logfmt_text(text: str) -> str:
    # str methods first, cheaper than the regex: outside ASCII's space, every blank and every
    # control is unprintable to isprintable().
    printable = text.isprintable()
    if printable and text and not (" " in text or '"' in text or "=" in text or "\\" in text):
        return text
    if text and not printable and not _LOGFMT_NEEDS_QUOTES.search(text):
        return text
    # Most quoted values hold only blanks: no escape to write, and translate is slow.
    escaped = text.translate(_LOGFMT_ESCAPES) if _LOGFMT_NEEDS_ESCAPES.search(text) else text
    return '"' + escaped + '"'


class JsonFormatter(_LineFormatter):
    """One JSON object per line; ``extra=`` fields become keys beside ts, level, logger, msg."""

    def render(self, fields: Mapping[str, Any], levelno: int) -> str:
        return json.dumps(fields, default=str, ensure_ascii=False).translate(_JSON_ESCAPES)


def install_excepthooks() -> None:
    """Log an uncaught exception, in the main thread or another, as one ``critical`` line.

    Python would print a multi-line traceback on stderr instead, which journald splits into
    one entry per line. The process still exits 1.
    """
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("trigmail").critical(
        "uncaught %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, traceback)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # what threading's own hook ignores too
    exc = args.exc_value if args.exc_value is not None else args.exc_type()
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("trigmail").critical(
        "uncaught %s in thread %s: %s",
        args.exc_type.__name__,
        thread,
        exc,
        exc_info=(args.exc_type, exc, args.exc_traceback),
    )


def running_under_journald(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Return whether ``fd`` (stderr by default) is the journal stream systemd connected.

    ``$JOURNAL_STREAM`` is ``device:inode`` of that stream; comparing it with ``fd`` rather
    than trusting its presence keeps a child whose stderr was redirected from using the
    journald format on a file.
    """
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(fd)
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def logging_config(
    fmt: LogFormat,
    level: str = "INFO",
    *,
    stream_is_tty: bool,
    journald: bool | None = None,
    stream: TextIO | str = "ext://sys.stderr",
) -> dict[str, Any]:
    """Return a :func:`logging.config.dictConfig` dict logging to stderr in ``fmt``.

    trigmail's loggers log from ``level`` up; other libraries only from ``WARNING`` (httpx
    would otherwise log every request). Nothing is applied here: the CLI does that.

    Args:
        fmt: ``text`` (key=value) or ``json``.
        level: the level name for trigmail's loggers, any case.
        stream_is_tty: whether stderr is a terminal; only then is the text coloured.
        journald: whether stderr is the journal; detected with :func:`running_under_journald`
            when ``None``.
        stream: where to write; ``dictConfig``'s ``ext://`` spelling or a stream.

    Raises:
        ConfigError: when ``level`` is not a logging level name.
    """
    if level.upper() not in _LEVELS:
        raise ConfigError(f"log level: expected one of {', '.join(_LEVELS)}, got {level!r}")
    under_journald = running_under_journald() if journald is None else journald
    formatter_class = KeyValueFormatter if fmt == "text" else JsonFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "trigmail": {
                "()": f"{__name__}.{formatter_class.__name__}",
                "journald": under_journald,
                "colour": fmt == "text" and stream_is_tty and not under_journald,
            }
        },
        "filters": {"secrets": {"()": f"{__name__}.{SecretFilter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": f"{LineHandler.__module__}.{LineHandler.__name__}",
                "stream": stream,
                "formatter": "trigmail",
                "filters": ["secrets"],
            }
        },
        "loggers": {"trigmail": {"level": level.upper()}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }
