"""Secret never shows its value by accident; redact_url hides passwords in URLs."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from trigmail.secrets import Secret, redact_url

VALUE = "SG.very-secret-value"


@dataclass(frozen=True)
class Holder:
    api_key: Secret


def test_reveal_gives_the_value_back() -> None:
    assert Secret(VALUE).reveal() == VALUE


@pytest.mark.parametrize(
    "render",
    [
        repr,  # repr()
        str,  # str()
        lambda s: f"{s}",  # an f-string
        lambda s: f"{s!r:>20}",  # an f-string with a conversion and a format spec
        "{0} {0!r}".format,  # str.format
        lambda s: repr(Holder(s)),  # inside a dataclass repr
        lambda s: str([s, {"k": s}]),  # inside containers
    ],
)
def test_every_rendering_is_redacted(render: Callable[[Secret], str]) -> None:
    text = render(Secret(VALUE))
    assert VALUE not in text
    assert "<secret>" in text


def test_logging_shows_no_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("trigmail.test").debug("key %s / %r", Secret(VALUE), Secret(VALUE))
    assert VALUE not in caplog.text
    assert caplog.text.count("<secret>") == 2


def test_equality_is_by_value() -> None:
    assert Secret(VALUE) == Secret(VALUE)
    assert Secret(VALUE) != Secret("other")
    assert Secret(VALUE) != VALUE  # a Secret never equals the bare string
    assert len({Secret(VALUE), Secret(VALUE)}) == 1


def test_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(VALUE))
    with pytest.raises(TypeError):
        pickle.dumps(Holder(Secret(VALUE)))


def test_copies_keep_the_value() -> None:
    assert copy.deepcopy(Holder(Secret(VALUE))).api_key.reveal() == VALUE


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Redis with a password only
        ("redis://:pw@127.0.0.1:6379/0", "redis://:<secret>@127.0.0.1:6379/0"),
        # Redis with a user and a password, over TLS
        ("rediss://app:s3cr%40t@redis.internal/1", "rediss://app:<secret>@redis.internal/1"),
        # PostgreSQL with user and password
        ("postgresql://trig:pw@db:5432/trigmail", "postgresql://trig:<secret>@db:5432/trigmail"),
        # a password that contains '@' and ':' (unencoded): all of it goes
        ("postgresql://u:p@ss:w@db/x", "postgresql://u:<secret>@db/x"),
        # a password given as a query parameter
        (
            "postgresql://u@db/x?sslmode=require&password=pw",
            "postgresql://u@db/x?sslmode=require&password=<secret>",
        ),
        # a libpq keyword/value DSN
        ("host=db user=u password=pw dbname=x", "host=db user=u password=<secret> dbname=x"),
        # a user without a password stays as it is
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        # no credentials at all
        ("https://api.sendgrid.com", "https://api.sendgrid.com"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
