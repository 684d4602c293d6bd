"""Every line today's formatters write equals, byte for byte, the line of the formatters before
their fast paths (tests/logs_reference.py), on random records: hostile messages and extras,
registered secrets inside and across values, exceptions, every flag."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import logs_reference as reference
from trigmail import logs

# Secrets with the characters that change how a value is written (quotes, backslashes,
# controls, blanks), and two that contain one another.
SECRETS = ["SG.key-0123456789", 'pa"ss\\word', "tab\tsecret", "x=y z", "SG.key-0123"]

_PIECES = st.sampled_from(
    [*SECRETS, "", " ", "=", '"', "\\", "\n", "\x1b[31m", "\u2028", "\u202e", "é", "send k1:"]
)
# Text assembled from pieces that matter and random text, so secrets land inside values,
# at their ends and next to what gets escaped.
_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=6)), max_size=6).map("".join)


class _Opaque:
    def __str__(self) -> str:
        return "opaque value"


_VALUES = st.one_of(
    _TEXT,
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.lists(_TEXT, max_size=2),
    st.dictionaries(_TEXT, st.integers(), max_size=2),
    st.just(_Opaque()),
    st.just(1.0),
)
# Extras include the names the formatters write themselves (ts, level, logger, exc).
_EXTRA_NAMES = st.sampled_from(
    ["event_id", "user_id", "rule", "step", "key", "outcome", "detail", "ts", "level", "logger",
     "exc", "a b", "x\ny"]
)  # fmt: skip
_NAMES = st.sampled_from(
    ["trigmail.daemon", "trigmail", "other lib", 'q"uote', "SG.key-0123456789"]
)
_LEVELS = st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, 50, 25, 3])


def _exc_info() -> Any:
    try:
        raise ValueError('bad "value"\nsecond line SG.key-0123456789')
    except ValueError:
        return sys.exc_info()


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A record's attributes, to build two equal records from (formatting mutates one)."""
    args: tuple[Any, ...] = ()
    msg: Any = draw(_TEXT)
    if draw(st.booleans()):
        msg, args = msg.replace("%", "%%") + " %s", (draw(_VALUES),)
    exc_info = _exc_info() if draw(st.integers(0, 3)) == 0 else None
    record = logging.LogRecord(draw(_NAMES), draw(_LEVELS), __file__, 1, msg, args, exc_info)
    record.created = draw(st.floats(0, 4e9))
    if draw(st.integers(0, 9)) == 0:
        record.stack_info = draw(_TEXT)
    attrs = dict(vars(record))
    attrs.update(draw(st.dictionaries(_EXTRA_NAMES, _VALUES, max_size=8)))
    return attrs


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    logs.clear_secrets()
    yield
    logs.clear_secrets()


_FORMATTERS = [
    (logs.KeyValueFormatter, reference.KeyValueFormatter),
    (logs.JsonFormatter, reference.JsonFormatter),
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(records(), min_size=1, max_size=6),
    st.lists(st.sampled_from(SECRETS), max_size=3),
    st.booleans(),
    st.booleans(),
)
def test_lines_equal_the_reference_formatters(
    attrs: list[dict[str, Any]], secrets: list[str], journald: bool, colour: bool
) -> None:
    logs.clear_secrets()
    for secret in secrets:
        logs.register_secret(secret)
    for ours, theirs in _FORMATTERS:
        # One formatter for the whole list, as a handler keeps one: its caches carry over.
        new, old = ours(journald=journald, colour=colour), theirs(journald=journald, colour=colour)
        for each in attrs:
            line = new.format(logging.makeLogRecord(each))
            assert line == old.format(logging.makeLogRecord(each))
            for secret in secrets:
                assert secret not in line


def test_a_secret_registered_between_two_lines_is_redacted_in_the_second() -> None:
    formatter = logs.KeyValueFormatter(journald=True)
    attrs = dict(vars(logging.LogRecord("trigmail.daemon", logging.INFO, "", 0, "m", (), None)))
    attrs["rule"] = "SG.key-0123456789"
    assert formatter.format(logging.makeLogRecord(attrs)).endswith(" rule=SG.key-0123456789")
    logs.register_secret("SG.key-0123456789")
    assert formatter.format(logging.makeLogRecord(attrs)).endswith(" rule=<secret>")


def test_every_character_is_quoted_and_escaped_as_before() -> None:
    # The fast check of which values need quotes (str methods before the regex), on every code
    # point alone and inside a word.
    for code in range(sys.maxunicode + 1):
        char = chr(code)  # lone surrogates too: a JSON event's "\ud800" decodes to one
        for text in (char, f"ab{char}cd"):
            assert logs._logfmt_text(text) == reference._logfmt_value(text), hex(code)
