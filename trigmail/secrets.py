"""Secrets that cannot leak by accident: they print as ``<secret>`` and refuse to be pickled."""

from __future__ import annotations

import hmac
import re
from typing import NoReturn
from urllib.parse import unquote

REDACTED = "<secret>"


class Secret:
    """A string that only :meth:`reveal` gives back; ``repr``/``str``/``format`` show ``<secret>``.

    Args:
        value: the secret text (an API key, a password).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, format_spec: str) -> str:
        return format(REDACTED, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so a comparison cannot be timed to guess the value.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:
        # Pickles end up in caches, queues and crash dumps: a secret must never be written there.
        raise TypeError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self


def redact_url(url: str) -> str:
    """Return ``url`` with its password (userinfo or ``password=`` parameter) as ``<secret>``.

    ``redis://:pw@h:6379/0`` becomes ``redis://:<secret>@h:6379/0``; a username is kept so the
    log still says who connected. The userinfo is taken to end at the *last* ``@``, so a
    password holding ``@``, ``/``, ``#``, ``?`` or a space is hidden whole; when the part before
    its first ``:`` is no plain user name (the URL cannot be parsed), everything from ``://``
    to the last ``@`` goes. Also applied to error messages that quote a URL.
    """
    redacted = _PASSWORD_PARAM.sub(lambda m: m.group(1) + REDACTED, url)
    userinfo = _userinfo(redacted)
    if userinfo is None:
        return redacted
    start, end = userinfo
    user, colon, _ = redacted[start:end].partition(":")
    if not _UNPARSABLE.search(user) and not colon:
        return redacted  # a user name alone
    shown = f"{user}:{REDACTED}" if not _UNPARSABLE.search(user) else REDACTED
    return redacted[:start] + shown + redacted[end:]


def url_passwords(url: str) -> set[str]:
    """Return every password ``url`` (a URL or a libpq DSN) holds, in each spelling a library
    may print it: as written, percent-decoded and, for a URL that cannot be parsed, in the
    pieces a parser would cut it into. For the log guard (:func:`trigmail.logs.register_secret`).
    """
    found: set[str] = set()
    for match in _PASSWORD_PARAM.finditer(url):
        found |= _spellings(_unquote_libpq(match.group(2)), pieces=False)
    userinfo = _userinfo(_PASSWORD_PARAM.sub("", url))
    if userinfo is not None:
        text = _PASSWORD_PARAM.sub("", url)[userinfo[0] : userinfo[1]]
        user, colon, password = text.partition(":")
        if _UNPARSABLE.search(user):
            found |= _spellings(text, pieces=True)
        elif colon:
            found |= _spellings(password, pieces=bool(_UNPARSABLE.search(password)))
    return {value for value in found if value}


# A libpq keyword/value DSN or a URL query string may carry the password as a parameter; a
# libpq value may be single-quoted, with backslash escapes, and hold spaces.
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^&\s]*)")
# What a plain user name (or a parsable password) never holds.
_UNPARSABLE = re.compile(r"[/?#@\s\[\]]")


def _userinfo(text: str) -> tuple[int, int] | None:
    """Return where the userinfo of the first URL in ``text`` starts and ends, if it has one."""
    scheme_end = text.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    end = text.rfind("@", start)
    return None if end < 0 else (start, end)


def _unquote_libpq(value: str) -> str:
    if not value.startswith("'"):
        return value
    return re.sub(r"\\(.)", r"\1", value[1:].removesuffix("'"))


def _spellings(value: str, *, pieces: bool) -> set[str]:
    spellings = {value, unquote(value)}
    if pieces:
        for spelling in list(spellings):
            spellings.update(re.split(r"[/?#@:]+", spelling))
    return spellings
