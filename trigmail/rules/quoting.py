"""Values quoted in messages, cut short: a message names a value, it never reproduces a file.

A rule file may hold a 1 MB string, or be a link to a file that is not a rule file at all;
``validate`` prints its messages and ``serve`` logs them on every reload (docs/security.md).
"""

from __future__ import annotations

from typing import Final

# Enough to recognise any id, key, template or pattern a person writes.
MAX_QUOTED_CHARS: Final = 80


def quote(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """Return ``repr(value)``, cut to ``limit`` characters with ``…`` where it was cut."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 512:
        # Python refuses to print an int of over 4,300 digits, and a long one says nothing.
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    return cut(repr(value), limit)


def cut(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """Return ``text`` cut to ``limit`` characters with ``…`` where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
