"""The log formatters as they were before their fast paths (``trigmail.logs`` at 3a81cb7), kept
(less docstrings and the timestamp cache) as the reference that every line of today's formatters
must equal byte for byte (tests/test_log_bytes.py). Only the secrets are shared: the registry of
``trigmail.logs``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from trigmail import logs

REDACTED = "<secret>"

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


def redact(text: str) -> str:
    for secret in logs._secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


class _LineFormatter(logging.Formatter):
    def __init__(self, *, journald: bool = False, colour: bool = False) -> None:
        super().__init__()
        self.journald = journald
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        line = redact(self.render(self.fields(record), record.levelno))
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journald else line

    def render(self, fields: Mapping[str, Any], levelno: int) -> str:
        raise NotImplementedError

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
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
        attrs = vars(record)
        extras = attrs.keys() - _RECORD_ATTRS
        if extras:
            for key, value in attrs.items():
                if key in extras and key not in fields:
                    fields[key] = redact(value) if type(value) is str else value
        return fields

    def _trace(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        parts = [record.exc_text or "", self.formatStack(record.stack_info or "")]
        return "\n".join(part for part in parts if part)


def _rfc3339_ms(created_s: float) -> str:
    second = math.floor(created_s)
    micros = round((created_s - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    stamp = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")
    return f"{stamp.removesuffix('+00:00')}.{micros // 1000:03d}Z"


class KeyValueFormatter(_LineFormatter):
    def render(self, fields: Mapping[str, Any], levelno: int) -> str:
        pairs = []
        for key, value in fields.items():
            text = _logfmt_value(value)
            if key == "level" and self.colour:
                text = f"{_ANSI_BY_LEVEL.get(levelno, '')}{text}{_ANSI_RESET}"
            pairs.append(f"{key}={text}")
        return " ".join(pairs)


def _escape_for(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


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
_LOGFMT_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"'} | _CONTROL_ESCAPES
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _CONTROL_CODES if code >= 0x7F}
_LOGFMT_NEEDS_QUOTES = re.compile(
    r'[\s"=\\' + "".join(re.escape(chr(code)) for code in _CONTROL_CODES) + "]"
)


def _logfmt_value(value: Any) -> str:
    kind = type(value)
    text: str
    if kind is str:
        text = value
    elif kind is int:
        text = str(value)
    elif value is None:
        return "null"
    else:
        text = json.dumps(value, default=str)
    if text and not _LOGFMT_NEEDS_QUOTES.search(text):
        return text
    return '"' + text.translate(_LOGFMT_ESCAPES) + '"'


class JsonFormatter(_LineFormatter):
    def render(self, fields: Mapping[str, Any], levelno: int) -> str:
        return json.dumps(fields, default=str, ensure_ascii=False).translate(_JSON_ESCAPES)
