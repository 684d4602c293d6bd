"""Durations as marketing writes them (``0``, ``30s``, ``45m``, ``1h30m``, ``2d``)."""

from __future__ import annotations

import re

from trigmail.errors import DurationError

_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: object) -> int:
    """Return the number of seconds ``value`` stands for.

    Args:
        value: ``0`` (int or string) or a string of ``d``/``h``/``m``/``s`` parts, largest first.

    Raises:
        DurationError: for anything else, with the accepted forms in the message.
    """
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration (use 0, 30s, 45m, 1h30m or 2d)")
    if isinstance(value, int) and value == 0:
        return 0
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0
        match = _DURATION.match(text)
        if match and text:
            parts = [int(group) if group else 0 for group in match.groups()]
            return sum(n * unit for n, unit in zip(parts, _UNIT_S.values(), strict=True))
    raise DurationError(f"{value!r} is not a duration (use 0, 30s, 45m, 1h30m or 2d)")


def format_duration(seconds: float) -> str:
    """Return ``seconds`` in the same notation, e.g. ``5400`` as ``1h30m``."""
    remaining = int(seconds)
    if remaining == 0:
        return "0"
    parts = []
    for unit, size in _UNIT_S.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
