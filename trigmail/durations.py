"""Durations as marketing writes them (``0``, ``30s``, ``45m``, ``1h30m``, ``2d``, ``1w``)."""

from __future__ import annotations

import re

from trigmail.errors import DurationError

_UNIT_S = {"w": 7 * 86_400, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# format_duration writes days, never weeks: "14d" reads the same in every output it had.
_FORMAT_UNIT_S = {unit: size for unit, size in _UNIT_S.items() if unit != "w"}
# Far beyond any real delay, cooldown or retention, and it keeps an event's time plus any
# duration inside the range of a datetime.
MAX_DURATION_S = 36_500 * 86_400
# More digits than any duration up to the maximum has; int() refuses over 4,300 of them.
_MAX_DIGITS = 12


def parse_duration(value: object) -> int:
    """Return the number of seconds ``value`` stands for.

    Args:
        value: ``0`` (int or string) or a string of ``w``/``d``/``h``/``m``/``s`` parts, largest
            first.

    Raises:
        DurationError: for anything else, with the accepted forms in the message.
    """
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration (use 0, 30s, 45m, 1h30m, 2d or 1w)")
    if isinstance(value, int) and value == 0:
        return 0
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0
        match = _DURATION.match(text)
        if match and text:
            return _bounded(value, match.groups())
    raise DurationError(f"{value!r} is not a duration (use 0, 30s, 45m, 1h30m, 2d or 1w)")


def _bounded(value: str, groups: tuple[str | None, ...]) -> int:
    too_long = DurationError(f"{value!r} is longer than the most allowed, 36500d (100 years)")
    if any(group and len(group) > _MAX_DIGITS for group in groups):
        raise too_long
    parts = [int(group) if group else 0 for group in groups]
    seconds = sum(n * unit for n, unit in zip(parts, _UNIT_S.values(), strict=True))
    if seconds > MAX_DURATION_S:
        raise too_long
    return seconds


def format_duration(seconds: float) -> str:
    """Return ``seconds`` in the same notation, e.g. ``5400`` as ``1h30m``."""
    remaining = int(seconds)
    if remaining == 0:
        return "0"
    parts = []
    for unit, size in _FORMAT_UNIT_S.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
