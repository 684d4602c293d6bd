"""What a Redis stream entry holds: its event as JSON, its size, and what a dead letter keeps.

Pure functions of an entry's id and fields (names and values as Redis returns them, in
bytes); none of those of its fields raises, whatever the fields hold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from trigmail.events import MAX_EVENT_DEPTH
from trigmail.sources import keys
from trigmail.sources.base import SourceReason

DEAD_RAW_MAX_BYTES: Final = 1024
"""How much of an entry too large to decide its dead letter keeps, as the spool does."""

MAX_FLAT_SEGMENTS: Final = MAX_EVENT_DEPTH
"""The most dotted segments of a flat field's name: a name of n segments nests n levels deep,
the event object included, so a longer one makes an event too deep to decide anyway."""


def entry_time(entry_id: bytes | str) -> datetime:
    """Return when an entry entered its stream: the milliseconds of its id (Redis's clock)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return datetime.fromtimestamp(int(text.partition("-")[0]) / 1000, UTC)


def entry_order(entry_id: str) -> str:
    """Return an entry id as text that sorts as the stream orders its entries."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):020d}-{int(seq or 0):020d}"


def refusal(
    fields: Mapping[bytes, bytes], deliveries: int, max_deliveries: int, max_entry_bytes: int
) -> tuple[SourceReason, str, bytes] | None:
    """Why an entry is not to be decided, with the detail and the raw bytes its dead letter
    keeps; ``None`` when it is to be. The delivery count comes first: an entry that made a
    worker fail that often is not looked into again."""
    size = entry_size(fields)
    if deliveries > max_deliveries:
        detail = f"delivered {deliveries} times (max_deliveries {max_deliveries})"
        if size > max_entry_bytes:
            return SourceReason.TOO_MANY_DELIVERIES, detail, raw_head(fields)
        return SourceReason.TOO_MANY_DELIVERIES, detail, _whole(fields)
    if size > max_entry_bytes:
        detail = f"the entry is {size} bytes, over {max_entry_bytes}; raw is its start"
        return SourceReason.TOO_LARGE, detail, raw_head(fields)
    if keys.DATA_FIELD not in fields and flat_fields_too_deep(fields):
        detail = f"a field name has more than {MAX_FLAT_SEGMENTS} dotted segments"
        return SourceReason.TOO_DEEP, detail, flat_fields_json(fields)
    return None


def _whole(fields: Mapping[bytes, bytes]) -> bytes:
    data = fields.get(keys.DATA_FIELD)
    return data if data is not None else flat_fields_json(fields)


def flat_fields_json(fields: Mapping[bytes, bytes]) -> bytes:
    """Return an entry's flat fields as a JSON object, dotted names nested (as
    :mod:`trigmail.sources.redis_stream` describes).

    Never raises: names too deep to nest (see :func:`flat_fields_too_deep`) are kept flat.
    """
    flat = {
        name.decode("utf-8", errors="replace"): value.decode("utf-8", errors="replace")
        for name, value in fields.items()
    }
    event = None if flat_fields_too_deep(fields) else _nested(flat)
    return json.dumps(event if event is not None else flat, ensure_ascii=False).encode()


def flat_fields_too_deep(fields: Mapping[bytes, bytes]) -> bool:
    """Whether a flat field's dotted name has more than :data:`MAX_FLAT_SEGMENTS` segments."""
    return any(name.count(b".") >= MAX_FLAT_SEGMENTS for name in fields)


def entry_size(fields: Mapping[bytes, bytes]) -> int:
    """The bytes of an entry's field names and values, the measure of ``max_entry_bytes``."""
    return sum(len(name) + len(value) for name, value in fields.items())


def raw_head(fields: Mapping[bytes, bytes]) -> bytes:
    """The first :data:`DEAD_RAW_MAX_BYTES` of an entry, built without reading it all."""
    data = fields.get(keys.DATA_FIELD)
    if data is not None:
        return data[:DEAD_RAW_MAX_BYTES]
    head = bytearray()
    for name, value in fields.items():
        head += name[:DEAD_RAW_MAX_BYTES] + b"=" + value[:DEAD_RAW_MAX_BYTES] + b"\n"
        if len(head) >= DEAD_RAW_MAX_BYTES:
            break
    return bytes(head[:DEAD_RAW_MAX_BYTES])


def _nested(flat: Mapping[str, str]) -> dict[str, Any] | None:
    """Return ``flat`` with dotted names as nested objects; ``None`` when two names collide."""
    event: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = event
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return None
        if not leaf or leaf in node:
            return None
        node[leaf] = value
    return event
