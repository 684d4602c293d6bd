"""The plain-address check says what it said before its lengths and top-level domain moved into
its one match: the same addresses skip email-validator."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.addresses import _PLAIN_TLDS_EXCLUDED, _is_plain_email

# The check as it was written before (trigmail 56b2e9d), the reference.
_BEFORE = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
)


def _plain_before(address: str) -> bool:
    if len(address) > 254 or not _BEFORE.fullmatch(address):
        return False
    local, _, domain = address.partition("@")
    tld = domain.rsplit(".", 1)[-1].lower()
    return len(local) <= 64 and tld not in _PLAIN_TLDS_EXCLUDED


CASES = [
    ("ana@example.com", True),
    ("a.b+c_d-e@mail.example.co.uk", True),
    ("a" * 64 + "@example.com", True),  # the longest local part
    ("a" * 65 + "@example.com", False),
    ("ana@" + "b" * 63 + ".com", True),  # the longest label
    ("ana@" + "b" * 64 + ".com", False),
    ("a@" + ("b" * 60 + ".") * 4 + "com", True),  # 249 characters
    ("a" * 64 + "@" + ("b" * 61 + ".") * 3 + "com", True),  # 254 characters
    ("a" * 64 + "@" + ("b" * 61 + ".") * 3 + "comm", False),  # 255
    ("ana@example.TEST", False),  # a special-use domain, in any case
    ("ana@home.Arpa", False),
    ("ana@example.c", False),  # a one-letter top-level domain
    ("ana@example.c0m", False),
    ("ana@-example.com", False),
    ("ana@example-.com", False),
    ("ana@example..com", False),
    (".ana@example.com", False),
    ("ana.@example.com", False),
    ("ana@@example.com", False),
    ("ana@b@example.com", False),
    ("ana@example", False),
    ("@example.com", False),
    ("ana@example.com\n", False),
    ("josé@exemplo.pt", False),
]


@pytest.mark.parametrize(("address", "plain"), CASES)
def test_the_plain_check_judges_as_before(address: str, plain: bool) -> None:
    assert _plain_before(address) is plain
    assert _is_plain_email(address) is plain


_PART = st.sampled_from(["a", "Z", "0", "_", "+", "-", ".", "@", "test", "arpa", "é", " ", "ab"])


@settings(max_examples=500)
@given(st.lists(_PART, max_size=40).map("".join), st.integers(0, 70))
def test_the_plain_check_agrees_with_the_one_before_on_any_text(text: str, pad: int) -> None:
    for address in (text, "x" * pad + text, text + "@ex.com", "a" * pad + "@" + text):
        assert _is_plain_email(address) is _plain_before(address), address
