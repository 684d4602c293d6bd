"""Log formats, one line per record, the journald prefix and the secret guard."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from trigmail import loglines, logs
from trigmail.errors import ConfigError
from trigmail.logs import (
    JsonFormatter,
    KeyValueFormatter,
    SecretFilter,
    logging_config,
    register_secret,
    running_under_journald,
)

API_KEY = "SG.fake-key-0123456789.abcdefghijklmnop"


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    logs.clear_secrets()
    yield
    logs.clear_secrets()


def record(
    msg: str,
    *args: object,
    level: int = logging.INFO,
    exc: bool = False,
    **extra: object,
) -> logging.LogRecord:
    """A record as ``logging.getLogger("trigmail.daemon").log(...)`` would make it."""
    exc_info = None
    if exc:
        try:
            raise ValueError('bad "value"\nsecond line')
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("trigmail.daemon", level, __file__, 1, msg, args, exc_info)
    rec.created = 1_795_809_600.25  # 2026-11-27T20:00:00.250Z
    rec.__dict__.update(extra)
    return rec


def test_key_value_line() -> None:
    line = KeyValueFormatter().format(record("send %s: in doubt", "k1"))
    assert line == (
        'ts=2026-11-27T20:00:00.250Z level=info logger=trigmail.daemon msg="send k1: in doubt"'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "msg=plain"),  # nothing to quote
        ("", 'msg=""'),  # empty is quoted, so the pair is still visible
        ('say "hi"', 'msg="say \\"hi\\""'),  # quotes escaped
        ("a=b", 'msg="a=b"'),  # an equals sign would split the pair
        ("back\\slash", 'msg="back\\\\slash"'),  # backslash escaped first
        ("two\nlines", 'msg="two\\nlines"'),  # newline folded
    ],
)
def test_key_value_quoting(value: str, expected: str) -> None:
    line = KeyValueFormatter(journald=True).format(record(value))
    assert line.endswith(" " + expected)


def test_key_value_extras_follow_the_message() -> None:
    line = KeyValueFormatter(journald=True).format(record("sent", key="k 1", attempts=2))
    assert line == '<6>level=info logger=trigmail.daemon msg=sent key="k 1" attempts=2'


def test_exceptions_are_folded_onto_one_line() -> None:
    line = KeyValueFormatter().format(record("send %s: failed", "k1", exc=True))
    assert "\n" not in line
    assert 'exc="Traceback (most recent call last):\\n' in line
    assert 'ValueError: bad \\"value\\"\\nsecond line"' in line


def test_json_line_is_one_valid_object_with_extras() -> None:
    line = JsonFormatter().format(
        record("send %s: in doubt", "k1", level=logging.WARNING, exc=True, rule="cart", n=3)
    )
    assert "\n" not in line
    obj = json.loads(line)
    assert {k: obj[k] for k in ("ts", "level", "logger", "msg", "rule", "n")} == {
        "ts": "2026-11-27T20:00:00.250Z",
        "level": "warning",
        "logger": "trigmail.daemon",
        "msg": "send k1: in doubt",
        "rule": "cart",
        "n": 3,
    }
    assert obj["exc"].endswith('ValueError: bad "value"\nsecond line')


def test_json_extras_that_are_not_json_are_stringified() -> None:
    obj = json.loads(JsonFormatter().format(record("x", path=Path("/var/spool"))))
    assert obj["path"] == "/var/spool"


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
)
@pytest.mark.parametrize("formatter_class", [KeyValueFormatter, JsonFormatter])
def test_journald_prefixes_priority_and_drops_timestamp(
    formatter_class: type[KeyValueFormatter | JsonFormatter], level: int, prefix: str
) -> None:
    line = formatter_class(journald=True).format(record("hello", level=level))
    assert line.startswith(prefix)
    assert "ts" not in line and "2026" not in line


def test_colour_only_on_request() -> None:
    plain = KeyValueFormatter().format(record("x", level=logging.ERROR))
    coloured = KeyValueFormatter(colour=True).format(record("x", level=logging.ERROR))
    assert "\033[" not in plain
    assert "level=\033[31merror\033[0m" in coloured


@pytest.mark.parametrize("formatter_class", [KeyValueFormatter, JsonFormatter])
def test_registered_secrets_never_reach_a_line(
    formatter_class: type[KeyValueFormatter | JsonFormatter],
) -> None:
    register_secret(API_KEY)
    line = formatter_class().format(
        record("auth with %s failed", API_KEY, exc=True, header=f"Bearer {API_KEY}")
    )
    assert API_KEY not in line
    assert line.count("<secret>") >= 2


def test_secret_in_an_exception_message_is_redacted() -> None:
    register_secret("hunter22")
    try:
        raise ConnectionError("postgresql://app:hunter22@db/trigmail refused")
    except ConnectionError:
        rec = logging.LogRecord("trigmail", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    line = KeyValueFormatter().format(rec)
    assert "hunter22" not in line
    assert "app:<secret>@db" in line


def test_a_secret_containing_another_is_replaced_whole() -> None:
    register_secret("abcd")
    register_secret("abcdefgh")
    assert logs.redact("key=abcdefgh") == "key=<secret>"


def test_too_short_values_are_not_guarded() -> None:
    register_secret("")  # would otherwise match between every character
    register_secret("abc")
    assert logs.redact("abc") == "abc"


def test_secret_filter_protects_foreign_handlers() -> None:
    register_secret(API_KEY)
    rec = record("key is %s", API_KEY)
    assert SecretFilter().filter(rec) is True
    assert rec.getMessage() == "key is <secret>"


@contextmanager
def applied(config: dict[str, Any]) -> Iterator[None]:
    """Apply ``config``, then put the root and trigmail loggers back as they were.

    Restored in the test body, not a fixture: pytest adds and removes its own capture
    handlers around each phase, and a fixture teardown would resurrect stale ones.
    """
    root, ours = logging.getLogger(), logging.getLogger("trigmail")
    saved = (root.handlers[:], root.level, ours.handlers[:], ours.level, ours.propagate)
    logging.config.dictConfig(config)
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved[0], saved[1]
        ours.handlers[:], ours.level, ours.propagate = saved[2], saved[3], saved[4]


def test_logging_config_applied_end_to_end() -> None:
    stream = io.StringIO()
    register_secret(API_KEY)
    config = logging_config("json", "debug", stream_is_tty=False, journald=False, stream=stream)
    with applied(config):
        logging.getLogger("trigmail.daemon").debug("key %s", API_KEY, extra={"rule": "cart"})
        logging.getLogger("httpx").info("HTTP Request: POST https://api.sendgrid.com")
    lines = stream.getvalue().splitlines()
    # trigmail's debug line is there; another library's info line is not.
    assert [json.loads(line)["msg"] for line in lines] == ["key <secret>"]
    assert json.loads(lines[0])["rule"] == "cart"


@pytest.mark.parametrize(
    ("fmt", "tty", "journald", "colour"),
    [
        ("text", True, False, True),  # a terminal: colour
        ("text", False, False, False),  # a pipe or file: none
        ("text", True, True, False),  # journald never gets escapes
        ("json", True, False, False),  # JSON is for machines
    ],
)
def test_colour_only_for_text_on_a_terminal(
    fmt: logs.LogFormat, tty: bool, journald: bool, colour: bool
) -> None:
    config = logging_config(fmt, stream_is_tty=tty, journald=journald)
    assert config["formatters"]["trigmail"]["colour"] is colour
    assert config["formatters"]["trigmail"]["journald"] is journald


def test_logging_config_rejects_an_unknown_level() -> None:
    with pytest.raises(ConfigError, match="log level"):
        logging_config("text", "LOUD", stream_is_tty=False)


def test_journald_is_detected_by_the_stream_identity(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w") as journal, (tmp_path / "other").open("w") as other:
        stat = os.fstat(journal.fileno())
        environ = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert running_under_journald(environ, journal.fileno()) is True
        # Inherited by a process whose stderr went elsewhere: not the journal.
        assert running_under_journald(environ, other.fileno()) is False
        assert running_under_journald({}, journal.fileno()) is False
        assert running_under_journald({"JOURNAL_STREAM": "junk"}, journal.fileno()) is False


class CountingStream(io.StringIO):
    """A stream that counts its writes (each one a system call on stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_logged_together_are_one_write_of_the_same_lines() -> None:
    stream = CountingStream()
    config = logging_config("text", "info", stream_is_tty=False, journald=True, stream=stream)
    log = logging.getLogger("trigmail.daemon")
    with applied(config):
        with loglines.lines_together():
            log.info("send %s: sent", "k1", extra={"rule": "cart"})
            with loglines.lines_together():  # nested: written with the outer block
                log.info("send k2: sent")
            assert (stream.getvalue(), stream.writes) == ("", 0)
        held = stream.getvalue()
        writes = stream.writes
        log.info("send k3: sent")  # outside a block: written at once
    assert writes == 1
    assert held.splitlines() == [
        '<6>level=info logger=trigmail.daemon msg="send k1: sent" rule=cart',
        '<6>level=info logger=trigmail.daemon msg="send k2: sent"',
    ]
    assert stream.getvalue() == held + '<6>level=info logger=trigmail.daemon msg="send k3: sent"\n'


def test_lines_held_by_a_block_that_raised_are_still_written() -> None:
    stream = io.StringIO()
    config = logging_config("text", "info", stream_is_tty=False, journald=True, stream=stream)
    with applied(config), pytest.raises(RuntimeError), loglines.lines_together():
        logging.getLogger("trigmail.daemon").info("before the failure")
        raise RuntimeError("boom")
    assert stream.getvalue().endswith('msg="before the failure"\n')


def test_another_threads_lines_are_not_held() -> None:
    stream = io.StringIO()
    config = logging_config("text", "info", stream_is_tty=False, journald=True, stream=stream)
    log = logging.getLogger("trigmail.daemon")
    with applied(config), loglines.lines_together():
        thread = threading.Thread(target=log.info, args=("from another thread",))
        thread.start()
        thread.join()
        assert stream.getvalue().endswith('msg="from another thread"\n')


@pytest.mark.parametrize(
    ("created_s", "stamp"),
    [
        (1_795_809_600.25, "2026-11-27T20:00:00.250Z"),
        (1_795_809_600.0, "2026-11-27T20:00:00.000Z"),
        (1_795_809_599.9995, "2026-11-27T19:59:59.999Z"),  # truncated, as isoformat does
        (1_795_809_599.9999996, "2026-11-27T20:00:00.000Z"),  # rounds up to the next second
        (0.0005, "1970-01-01T00:00:00.000Z"),
    ],
)
def test_timestamps_match_datetime_to_the_millisecond(created_s: float, stamp: str) -> None:
    expected = datetime.fromtimestamp(created_s, UTC).isoformat(timespec="milliseconds")
    assert expected.removesuffix("+00:00") + "Z" == stamp
    rec = record("x")
    rec.created = created_s
    assert json.loads(JsonFormatter().format(rec))["ts"] == stamp


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "n=3"), (-1, "n=-1"), (True, "n=true"), (None, "n=null"), (1.5, "n=1.5")],
)
def test_key_value_numbers_and_null_as_json_writes_them(value: object, text: str) -> None:
    line = KeyValueFormatter(journald=True).format(record("x", n=value))
    assert line.endswith(" " + text)
