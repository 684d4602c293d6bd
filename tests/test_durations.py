from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigmail.durations import MAX_DURATION_S, format_duration, parse_duration
from trigmail.errors import DurationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),  # zero, written as text
        ("30s", 30),  # seconds
        ("1h30m", 5_400),  # parts largest first
        ("2d", 172_800),  # days
        ("1w", 604_800),  # a week
        ("2w3d", 17 * 86_400),  # weeks then days
        ("1w1d1h1m1s", 694_861),  # every unit
    ],
)
def test_parse_duration_reads_each_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "1d1w",  # weeks come before days
        "1 week",  # words
        "w",  # a unit without a number
        "5300w",  # over 100 years
    ],
)
def test_parse_duration_refuses_other_forms(text: str) -> None:
    with pytest.raises(DurationError, match=r"is not a duration|longer than"):
        parse_duration(text)


def test_the_message_names_weeks() -> None:
    with pytest.raises(DurationError, match="1w"):
        parse_duration("soon")


@given(st.integers(min_value=0, max_value=MAX_DURATION_S))
def test_format_duration_reads_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
