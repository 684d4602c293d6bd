"""Secret never shows its value by accident; redact_url hides passwords in URLs."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from trigmail.secrets import Secret, redact_url, url_passwords

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
        # a password holding '/', '#' and '?', which end the authority for a URL parser
        ("redis://:a/b#c?d@h:6379/0", "redis://:<secret>@h:6379/0"),
        # a space and a '%' that starts no escape
        ("redis://u:a b%zz@h/0", "redis://u:<secret>@h/0"),
        # an unparsable userinfo: hidden from '://' to the last '@', the user included
        ("redis://a/b:c@d@h/0", "redis://<secret>@h/0"),
        # a quoted libpq value with a space and an escaped quote
        ("host=db password='a b\\' c' user=u", "host=db password=<secret> user=u"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # as written and percent-decoded: a library may print either
        ("redis://u:p%40ss%2Fw@h/0", {"p%40ss%2Fw", "p@ss/w"}),
        # an unparsable password also in the pieces a URL parser cuts it into
        ("redis://:s3cr/et#pass@h/0", {"s3cr/et#pass", "s3cr", "et", "pass"}),
        # a password parameter, and a quoted libpq one
        ("postgresql://u@db/x?password=hunter22", {"hunter22"}),
        ("host=db password='a b\\' c'", {"a b' c"}),
        # no password at all
        ("postgresql://u@db/x", set()),
    ],
)
def test_url_passwords_lists_every_spelling(url: str, expected: set[str]) -> None:
    assert url_passwords(url) == expected
