"""Secrets that cannot leak by accident: they print as ``<secret>`` and refuse to be pickled."""

from __future__ import annotations

import hmac
import re
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<secret>"

# A libpq keyword/value DSN or a URL query string may carry the password as a parameter.
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword=)([^&\s]*)")


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
    log still says who connected.
    """
    redacted = _PASSWORD_PARAM.sub(lambda m: m.group(1) + REDACTED, url)
    try:
        parts = urlsplit(redacted)
    except ValueError:
        return redacted
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return redacted
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:{REDACTED}@{hostinfo}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
