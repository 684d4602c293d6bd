"""Send windows: open hours, the next opening, per-user zones, and DST days."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from trigmail.rules.model import SendWindow
from trigmail.windows import is_open, next_opening, resolve_zone

LISBON = ZoneInfo("Europe/Lisbon")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = UTC


def window(start: str, end: str, timezone: str = "UTC", is_path: bool = False) -> SendWindow:
    def minutes(text: str) -> int:
        hours, mins = text.split(":")
        return int(hours) * 60 + int(mins)

    return SendWindow(minutes(start), minutes(end), timezone, is_path)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local_time(moment: datetime, zone: ZoneInfo) -> time:
    return moment.astimezone(zone).time()


DAY = window("09:00", "20:00")
NIGHT = window("22:00", "07:30")


@pytest.mark.parametrize(
    ("win", "at", "expected"),
    [
        # the start is inclusive
        (DAY, utc(2026, 6, 1, 9, 0), True),
        # the end is exclusive
        (DAY, utc(2026, 6, 1, 20, 0), False),
        # a minute before the end
        (DAY, utc(2026, 6, 1, 19, 59), True),
        # before the start
        (DAY, utc(2026, 6, 1, 8, 59), False),
        # a window spanning midnight: late evening is open
        (NIGHT, utc(2026, 6, 1, 23, 0), True),
        # ...and the small hours
        (NIGHT, utc(2026, 6, 1, 3, 0), True),
        # ...but not midday
        (NIGHT, utc(2026, 6, 1, 12, 0), False),
        # ...and its end is exclusive too
        (NIGHT, utc(2026, 6, 1, 7, 30), False),
    ],
)
def test_is_open_utc(win: SendWindow, at: datetime, expected: bool) -> None:
    assert is_open(win, at, UTC_ZONE) is expected


@pytest.mark.parametrize(
    ("win", "at", "expected"),
    [
        # open now: the same instant comes back
        (DAY, utc(2026, 6, 1, 12, 0), utc(2026, 6, 1, 12, 0)),
        # before the start: today's opening
        (DAY, utc(2026, 6, 1, 6, 0), utc(2026, 6, 1, 9, 0)),
        # after the end: tomorrow's opening
        (DAY, utc(2026, 6, 1, 20, 0), utc(2026, 6, 2, 9, 0)),
        # spanning midnight, shut at midday: this evening's opening
        (NIGHT, utc(2026, 6, 1, 12, 0), utc(2026, 6, 1, 22, 0)),
        # spanning midnight, open after midnight: now
        (NIGHT, utc(2026, 6, 2, 1, 0), utc(2026, 6, 2, 1, 0)),
        # the last day of a year rolls into the next
        (DAY, utc(2026, 12, 31, 21, 0), utc(2027, 1, 1, 9, 0)),
    ],
)
def test_next_opening_utc(win: SendWindow, at: datetime, expected: datetime) -> None:
    assert next_opening(win, at, UTC_ZONE) == expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # 08:00 UTC is 09:00 in Lisbon summer time (WEST, +1): open
        (utc(2026, 7, 1, 8, 0), utc(2026, 7, 1, 8, 0)),
        # 07:00 UTC is 08:00 local: opens at 09:00 local = 08:00 UTC
        (utc(2026, 7, 1, 7, 0), utc(2026, 7, 1, 8, 0)),
        # 19:30 UTC is 20:30 local: tomorrow 09:00 local
        (utc(2026, 7, 1, 19, 30), utc(2026, 7, 2, 8, 0)),
    ],
)
def test_next_opening_iana_zone(at: datetime, expected: datetime) -> None:
    win = window("09:00", "20:00", "Europe/Lisbon")
    zone = resolve_zone(win, {})[0]
    assert zone == LISBON
    assert next_opening(win, at, zone) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # the user's own zone
        ({"user.timezone": "America/New_York"}, NEW_YORK),
        # no zone in the profile: UTC
        ({}, UTC_ZONE),
        # a name that is no IANA zone: UTC
        ({"user.timezone": "Mars/Olympus_Mons"}, UTC_ZONE),
        # a malformed name (zoneinfo raises ValueError): UTC
        ({"user.timezone": "../etc/passwd"}, UTC_ZONE),
        # an empty string: UTC
        ({"user.timezone": ""}, UTC_ZONE),
        # not a string at all: UTC
        ({"user.timezone": 5}, UTC_ZONE),
    ],
)
def test_window_zone_from_path(values: dict[str, Any], expected: tzinfo) -> None:
    win = window("09:00", "20:00", "user.timezone", is_path=True)
    assert resolve_zone(win, values)[0] == expected


def test_bad_path_zone_still_opens_in_utc_hours() -> None:
    win = window("09:00", "20:00", "user.timezone", is_path=True)
    zone = resolve_zone(win, {"user.timezone": "Nowhere/Land"})[0]
    assert next_opening(win, utc(2026, 7, 1, 5, 0), zone) == utc(2026, 7, 1, 9, 0)


@pytest.mark.parametrize(
    ("zone", "start", "end", "at", "expected"),
    [
        # Lisbon spring forward (29 March 2026, 01:00 WET -> 02:00 WEST): 09:00 WEST = 08:00 UTC
        (LISBON, "09:00", "20:00", utc(2026, 3, 28, 21, 0), utc(2026, 3, 29, 8, 0)),
        # Lisbon fall back (25 October 2026, 02:00 WEST -> 01:00 WET): 09:00 WET = 09:00 UTC
        (LISBON, "09:00", "20:00", utc(2026, 10, 24, 20, 0), utc(2026, 10, 25, 9, 0)),
        # New York spring forward (8 March 2026): 09:00 EDT = 13:00 UTC
        (NEW_YORK, "09:00", "20:00", utc(2026, 3, 8, 5, 0), utc(2026, 3, 8, 13, 0)),
        # New York fall back (1 November 2026): 09:00 EST = 14:00 UTC
        (NEW_YORK, "09:00", "20:00", utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 14, 0)),
        # Lisbon: a start inside the spring gap (01:30 does not exist): opens at 02:30 WEST
        (LISBON, "01:30", "03:00", utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 1, 30)),
        # New York: a start inside the spring gap (02:30 does not exist): opens at 03:30 EDT
        (NEW_YORK, "02:30", "04:00", utc(2026, 3, 8, 5, 0), utc(2026, 3, 8, 7, 30)),
        # Lisbon: a window entirely inside the gap is shut that day; the next day's opening
        (LISBON, "01:15", "01:45", utc(2026, 3, 28, 23, 0), utc(2026, 3, 30, 0, 15)),
        # Lisbon: a start in the repeated hour of fall back opens at its first occurrence
        (LISBON, "01:00", "01:30", utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 0, 0)),
        # Lisbon: shut in the second 01:00-01:30 of fall back; reopens at the second 01:30
        (LISBON, "01:30", "03:00", utc(2026, 10, 25, 1, 0), utc(2026, 10, 25, 1, 30)),
        # New York: the same, 01:10 EST after the repeat: reopens at 01:30 EST, not tomorrow
        (NEW_YORK, "01:30", "03:00", utc(2026, 11, 1, 6, 10), utc(2026, 11, 1, 6, 30)),
        # New York: a window spanning midnight over the fall-back night
        (NEW_YORK, "22:00", "07:00", utc(2026, 11, 1, 12, 30), utc(2026, 11, 2, 3, 0)),
    ],
)
def test_next_opening_on_dst_days(
    zone: ZoneInfo, start: str, end: str, at: datetime, expected: datetime
) -> None:
    win = window(start, end, str(zone))
    opening = next_opening(win, at, zone)
    assert opening == expected
    assert opening >= at
    # the result's local time is inside the window
    assert is_open(win, opening, zone)


@pytest.mark.parametrize("zone", [LISBON, NEW_YORK])
@pytest.mark.parametrize("start_end", [("09:00", "20:00"), ("22:00", "07:30"), ("01:30", "03:00")])
def test_every_quarter_hour_over_dst_changes_lands_inside(
    zone: ZoneInfo, start_end: tuple[str, str]
) -> None:
    # every 15 minutes across both 2026 DST weekends: the opening is open, never earlier,
    # and the window was shut in every whole minute in between -- but for a start inside a
    # spring-forward gap, which opens at the start shifted by the gap (at most an hour late)
    win = window(*start_end, str(zone))
    for first_day in (utc(2026, 3, 7), utc(2026, 3, 28), utc(2026, 10, 24), utc(2026, 10, 31)):
        for quarter in range(4 * 72):
            at = first_day + timedelta(minutes=15 * quarter)
            opening = next_opening(win, at, zone)
            assert opening >= at
            assert is_open(win, opening, zone)
            assert opening - at < timedelta(days=2)
            probe = at
            while probe < opening and not is_open(win, probe, zone):
                probe += timedelta(minutes=1)
            assert opening - probe <= timedelta(hours=1)
            if opening - probe > timedelta(0):
                assert (
                    probe.astimezone(zone).dst()
                    != (probe - timedelta(hours=1)).astimezone(zone).dst()
                )
