"""Events: parsing one JSON object into a validated :class:`Event` (docs/design.md §1)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from trigmail.addresses import email_problem
from trigmail.errors import BadEventError
from trigmail.eventjson import SLOW, decoded, fast_decoded, line_text
from trigmail.records import record


class _Missing:
    """The value of a path the event does not have (distinct from JSON ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


@record
class Event:
    """A validated event. ``data`` is the whole object with ``id`` and ``ts`` filled in."""

    id: str
    name: str
    user_id: str
    email: str | None
    ts: datetime
    data: Mapping[str, Any]

    @property
    def user(self) -> Mapping[str, Any]:
        user = self.data.get("user")
        return user if isinstance(user, Mapping) else {}

    @property
    def properties(self) -> Mapping[str, Any]:
        props = self.data.get("properties")
        return props if isinstance(props, Mapping) else {}

    def lookup(self, path: str) -> Any:
        """Return the value at a dotted ``path`` (``properties.cart_id``), or ``MISSING``."""
        value: Any = self.data
        try:
            for part in path.split("."):
                value = value[part]
        # Event data is JSON: a step is a missing key, or a name into a list, text, a number,
        # a boolean or null (all a TypeError); asking forgiveness is the fast path.
        except (KeyError, TypeError):
            return MISSING
        return value


MAX_EVENT_DEPTH: Final = 64
"""How deeply an event's JSON may nest (the event object itself is level 1). Real events nest
two or three levels; the cap keeps every recursive walk (the id hash, the storage checks, the
ledger's encoder) far from Python's recursion limit (docs/security.md)."""

MAX_EVENT_BYTES: Final = 1024 * 1024
"""The largest event, in bytes of its JSON: the spool's line limit, which Redis entries share."""


def canonical_json(obj: Any) -> str:
    """Return ``obj`` as JSON with sorted keys and no spaces: equal objects, equal text."""
    return _CANONICAL.encode(obj)


# Built once: json.dumps with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash_id(obj: Mapping[str, Any]) -> str:
    """Return the id of an event that has none: so an exact redelivery is still recognised.

    Raises:
        BadEventError: ``too_deep`` for an object nested deeper than the encoder can go (the
            parsers refuse those first, at :data:`MAX_EVENT_DEPTH`).
    """
    try:
        text = canonical_json(obj)
    except RecursionError:
        raise BadEventError("too_deep", _too_deep_detail()) from None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"h_{digest[:32]}"


def parse_ts(value: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    Raises:
        ValueError: when ``value`` is not RFC 3339 with a UTC offset.
    """
    text = value.strip()
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp")
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01 with a positive offset is before datetime.min in UTC
        raise ValueError(f"{value!r} is out of range") from None


def format_ts(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z``."""
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


# An event's time plus any delay or window, or minus any cap period (at most 100 years each),
# must stay inside datetime's range; a time outside these bounds is a producer's bug anyway.
_EARLIEST_TS = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST_TS = datetime(9000, 1, 1, tzinfo=UTC)


def _required_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise BadEventError("missing_field", f"the event has no {name!r}")
    if not isinstance(value, str) or not value.strip():
        raise BadEventError("bad_field", f"{name!r} must be a non-empty string")
    return value


def _checked_email(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("email")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadEventError("bad_email", "'email' must be a string")
    problem = email_problem(value)
    if problem is not None:
        raise BadEventError("bad_email", f"{value!r}: {problem}")
    return value


def _checked_ts(obj: Mapping[str, Any], read_at: datetime) -> datetime:
    value = obj.get("ts")
    if value is None:
        return read_at
    if not isinstance(value, str):
        raise BadEventError("bad_ts", "'ts' must be an RFC 3339 string")
    try:
        ts = parse_ts(value)
    except ValueError as exc:
        raise BadEventError("bad_ts", str(exc)) from None
    if not _EARLIEST_TS <= ts < _LATEST_TS:
        raise BadEventError("bad_ts", f"{value!r} is outside the years 1900 to 8999")
    return ts


def _ts_text(given: object, ts: datetime) -> str:
    """Return ``format_ts(ts)``, reusing the producer's text when it is that already.

    A text in exactly ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` form that parsed is its own format
    (fromisoformat took a digit at every other place); formatting costs more than the check.
    """
    if (
        isinstance(given, str)
        and given[-1:] == "Z"
        and (len(given) == 20 or (len(given) == 27 and given[19] == "." and ts.microsecond))
        and given[4:17:3] == "--T::"
    ):
        return given
    return format_ts(ts)


def _checked_id(obj: Mapping[str, Any]) -> str:
    value = obj.get("id")
    if value is None:
        return event_hash_id(obj)
    if not isinstance(value, str) or not value.strip():
        raise BadEventError("bad_field", "'id' must be a non-empty string")
    return value


def _checked_nested(obj: Mapping[str, Any]) -> None:
    for name in ("user", "properties"):
        if name in obj and type(obj[name]) is not dict:
            raise BadEventError("bad_field", f"{name!r} must be an object")


def event_from_object(obj: object, read_at: datetime) -> Event:
    """Validate a decoded JSON value as an event.

    Args:
        obj: the decoded JSON value.
        read_at: when trigmail read it; the event's time when it has no ``ts``.

    Raises:
        BadEventError: with a stable ``reason`` for any invalid event.
    """
    refuse_too_deep(obj)
    return _event_from_shallow(obj, read_at)


def _event_from_shallow(obj: object, read_at: datetime) -> Event:
    """:func:`event_from_object` for a value known to be within :data:`MAX_EVENT_DEPTH`."""
    if not isinstance(obj, dict):
        raise BadEventError("not_object", f"an event must be a JSON object, not {_kind(obj)}")
    name = _required_str(obj, "event")
    user_id = _required_str(obj, "user_id")
    _checked_nested(obj)
    email = _checked_email(obj)
    ts = _checked_ts(obj, read_at)
    event_id = _checked_id(obj)
    data = {**obj, "id": event_id, "ts": _ts_text(obj.get("ts"), ts)}
    return Event(id=event_id, name=name, user_id=user_id, email=email, ts=ts, data=data)


def parse_event(line: str | bytes, read_at: datetime) -> Event:
    """Parse one JSONL line as an event.

    Raises:
        BadEventError: ``too_large`` for a line over :data:`MAX_EVENT_BYTES`, ``invalid_json``
            for text that is not JSON, ``too_deep`` for JSON nested deeper than
            :data:`MAX_EVENT_DEPTH`, or as :func:`event_from_object`.
    """
    if len(line) > MAX_EVENT_BYTES // 4:  # shorter is under the cap, even at 4 bytes a character
        _refuse_too_large(line)
    if type(line) is bytes and (obj := fast_decoded(line)) is not SLOW:
        # Every container opens with a bracket: with few brackets in the line the value cannot
        # be deep, and counting them is far cheaper than walking the value (nearly every
        # event). Most hold no array: "in" seeks a "[" by memchr, cheaper than a count.
        if line.count(b"{") + (line.count(b"[") if b"[" in line else 0) > MAX_EVENT_DEPTH:
            refuse_too_deep(obj)
    else:
        obj = _decoded_checked(line)
    return _plain_event(obj, read_at) or _event_from_shallow(obj, read_at)


def _decoded_checked(line: str | bytes) -> Any:
    """The value of a line the standard library decodes, refused as :func:`parse_event` says
    (its errors, with their messages, are the standard library's)."""
    try:
        text = line_text(line)
        obj = decoded(text)
    except RecursionError:  # the decoder's own guard: far deeper than the cap
        raise BadEventError("too_deep", _too_deep_detail()) from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise BadEventError("invalid_json", f"not JSON: {exc}") from None
    if text.count("{") + (text.count("[") if "[" in text else 0) > MAX_EVENT_DEPTH:
        refuse_too_deep(obj)  # as above
    if _may_be_unstorable(text):
        _refuse_unstorable(obj)
    return obj


def _plain_event(obj: object, read_at: datetime) -> Event | None:
    """:func:`_event_from_shallow` for the common event, or ``None`` for any other value.

    The common event: an object whose ``event``, ``user_id`` and ``id`` are non-blank text,
    ``email`` a plain or already accepted address (or absent), ``user`` and ``properties``
    objects (or absent), and ``ts`` in exactly the form :func:`format_ts` writes. Its data is
    then the decoded object itself: ``id`` and ``ts`` already hold what the slow path would
    write there, and no one else holds the object (``parse_event`` just decoded it). Anything
    else (every error included) returns ``None``, for the slow path to judge with its reason.
    Exact types: the decoder makes no subclasses, and the slow path takes any that come.
    """
    if type(obj) is not dict:
        return None
    name = obj.get("event")
    user_id = obj.get("user_id")
    event_id = obj.get("id")
    email = obj.get("email")
    if not (
        type(name) is str
        and type(user_id) is str
        and type(event_id) is str
        and name.strip()
        and user_id.strip()
        and event_id.strip()
        and type(obj.get("user", _NO_OBJECT)) is dict
        and type(obj.get("properties", _NO_OBJECT)) is dict
        and (email is None or (type(email) is str and email_problem(email) is None))
    ):
        return None
    ts = _canonical_ts(obj.get("ts"))
    if ts is None:
        return None
    return Event(event_id, name, user_id, email, ts, obj)


# Stands in for an absent ``user`` or ``properties``: as good as an object to the fast path.
_NO_OBJECT: Final[dict[str, Any]] = {}


def _canonical_ts(given: object) -> datetime | None:
    """The time of a ``ts`` written as :func:`format_ts` writes it (so that :func:`_ts_text`
    keeps it as it is), inside the accepted years; ``None`` for any other value."""
    if not (
        type(given) is str
        and given[-1:] == "Z"
        and (len(given) == 20 or (len(given) == 27 and given[19] == "."))
        # The separators at 4, 7, 10, 13 and 16, taken in one slice (five index operations
        # and four concatenations cost ~2,000 instructions more, callgrind).
        and given[4:17:3] == "--T::"
    ):
        return None
    try:
        # Python 3.11 reads a "Z" as UTC, the same instant as "+00:00" (what parse_ts reads).
        ts = datetime.fromisoformat(given)
    except ValueError:
        return None
    if ts.tzinfo is not UTC or (len(given) == 27 and not ts.microsecond):
        return None  # ".000000" is written without its fraction: the slow path writes that
    if not _EARLIEST_TS <= ts < _LATEST_TS:
        return None
    return ts


def _refuse_too_large(line: str | bytes) -> None:
    size = len(line)
    # A character is at most 4 bytes in UTF-8: most text is judged without encoding it.
    if isinstance(line, str) and MAX_EVENT_BYTES // 4 < size <= MAX_EVENT_BYTES:
        size = len(line.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        detail = f"the event is over {MAX_EVENT_BYTES} bytes" + (
            "" if isinstance(line, str) else f" ({size} bytes)"
        )
        raise BadEventError("too_large", detail)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (a scalar is depth 0).

    A walk with a stack of its own, not recursion: it must not fail on the values it is there
    to refuse.
    """
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def refuse_too_deep(value: Any) -> None:
    """Raise ``too_deep`` when ``value`` nests deeper than :data:`MAX_EVENT_DEPTH`.

    Raises:
        BadEventError: ``too_deep``.
    """
    if json_depth_exceeds(value, MAX_EVENT_DEPTH):
        raise BadEventError("too_deep", _too_deep_detail())


def _too_deep_detail() -> str:
    return f"the event nests objects or arrays more than {MAX_EVENT_DEPTH} levels deep"


# What a lone surrogate or a NUL can come from: a surrogate (bytes are decoded with
# "surrogatepass", as json.loads does) or a NUL as such, or their escapes.
_SUSPECT = re.compile(r"[\x00\ud800-\udfff]|\\u(?:0000|[dD][89a-fA-F])")


def _may_be_unstorable(text: str) -> bool:
    # Substring tests first: they are several times faster than the regex, which then runs
    # only on lines with an escape or non-ASCII text; nearly every line skips the full check.
    if text.isascii() and "\\u" not in text and "\x00" not in text:
        return False
    return _SUSPECT.search(text) is not None


def _refuse_unstorable(obj: Any) -> None:
    if _has_lone_surrogate(obj):
        raise BadEventError("invalid_json", "a string holds a lone surrogate: not Unicode text")
    if _holds_nul(obj):
        # PostgreSQL's text and jsonb refuse U+0000: one such event must not block a batch.
        raise BadEventError("bad_field", "a string holds a NUL character (\\u0000)")


def _holds_nul(obj: Any) -> bool:
    if isinstance(obj, str):
        return "\x00" in obj
    if isinstance(obj, dict):
        return any(_holds_nul(key) or _holds_nul(value) for key, value in obj.items())
    if isinstance(obj, list):
        return any(_holds_nul(item) for item in obj)
    return False


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        canonical_json(obj).encode()
    except UnicodeEncodeError:
        return True
    return False


def _kind(obj: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(obj), "a number")
