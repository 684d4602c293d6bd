"""Email addresses of events: valid or why not, cheaply for the plain ones (docs/design.md §1)."""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

# A strict subset of valid addresses (plain ASCII dot-atoms, a dotted domain with an
# alphabetic TLD) that needs no further check; anything else goes to email-validator.
# The lookahead holds the local part to 64 characters, the group is the top-level domain: the
# match says both, where splitting the address again cost more than the match (callgrind).
_PLAIN_EMAIL = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24})"
)
_PLAIN_TLDS_EXCLUDED = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _is_plain_email(address: str) -> bool:
    match = _PLAIN_EMAIL.fullmatch(address) if len(address) <= 254 else None
    return match is not None and match[1].lower() not in _PLAIN_TLDS_EXCLUDED


@lru_cache(maxsize=65_536)
def email_problem(address: str) -> str | None:
    """Why ``address`` is not a valid email address, or ``None`` when it is."""
    # Full validation costs ~100 us; most addresses are plain and users come back.
    if _is_plain_email(address):
        return None
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None
