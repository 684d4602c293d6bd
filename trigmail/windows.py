"""Send windows: the next moment a send may go out, in the user's own time zone."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from trigmail.rules.model import SendWindow

# datetime's own UTC: converting a UTC time to it is free, unlike ZoneInfo("UTC").
_UTC_ZONE: tzinfo = UTC
# A window is open at least once every day but for DST gaps, so three days always find one.
_DAYS_TO_SEARCH = 3


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    # A directory of the tz database ("America") or an over-long name fails as an OSError.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def resolve_zone(window: SendWindow, values: Mapping[str, Any]) -> tuple[tzinfo, str]:
    """Return the window's time zone for one user, and a note when it fell back.

    Args:
        window: the rule's send window.
        values: the trigger event's values by dotted path; used when the zone is a path.

    A path that is missing or holds no valid IANA name falls back to the window's
    ``fallback_timezone`` (UTC unless set), so a user with a bad profile still gets the email
    inside the window's hours rather than never. For a value that is not a valid name the note
    says so (``Europe/Lisboa`` is a typo somebody should fix); a missing one needs no note.
    """
    if not window.timezone_is_path:
        return _zone(window.timezone) or _UTC_ZONE, ""
    name = values.get(window.timezone)
    zone = _zone(name) if isinstance(name, str) and name else None
    if zone is not None:
        return zone, ""
    fallback = _fallback(window.fallback_timezone)
    if name is None:
        return fallback, ""
    return fallback, (
        f"{window.timezone} {name!r} is not an IANA time zone: the send window used "
        f"fallback_timezone {window.fallback_timezone}"
    )


def _fallback(name: str) -> tzinfo:
    # The loader checked the name; "UTC" is datetime's own, the fast one.
    return _UTC_ZONE if name == "UTC" else (_zone(name) or _UTC_ZONE)


def describe(window: SendWindow) -> str:
    """Return the window as written, ``09:00-20:00``."""
    start, end = window.start_min, window.end_min
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def is_open(window: SendWindow, at: datetime, zone: tzinfo) -> bool:
    """Return whether ``at`` falls inside the window's local hours."""
    return _open_at(window, at.astimezone(zone))


def _open_at(window: SendWindow, local: datetime) -> bool:
    minute = local.hour * 60 + local.minute
    if window.start_min < window.end_min:
        return window.start_min <= minute < window.end_min
    return minute >= window.start_min or minute < window.end_min


def next_opening(window: SendWindow, at: datetime, zone: tzinfo) -> datetime:
    """Return ``at`` if the window is open then, else the next instant it opens (UTC)."""
    local_at = at.astimezone(zone)  # once: a zone's conversion is the costly part
    if _open_at(window, local_at):
        return at
    opens_at = time(window.start_min // 60, window.start_min % 60)
    local_day = local_at.date()
    for offset in range(_DAYS_TO_SEARCH):
        day = local_day + timedelta(days=offset)
        # On a fall-back day a start in the repeated hour happens twice: fold 0, then fold 1.
        for fold in (0, 1):
            local = datetime.combine(day, opens_at, tzinfo=zone)
            if fold:
                local = local.replace(fold=1)
            candidate = local.astimezone(UTC)
            # A start inside a DST gap maps to an instant whose local time is past the gap;
            # it counts only if the window is really open then.
            if candidate > at and is_open(window, candidate, zone):
                return candidate
    raise AssertionError("unreachable: a send window opens at least every other day")
