"""Event sources: a JSONL spool and a Redis stream behind one small consumer protocol.

The sources load on first use, as the ledger backends do: a serve on a spool never imports
redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trigmail.lazy import lazy_attributes
from trigmail.sources.base import Source, SourceItem, SourceReason

if TYPE_CHECKING:
    from trigmail.sources.redis_stream import RedisStreamSource
    from trigmail.sources.spool import SpoolSource
    from trigmail.sources.spool_tail import SpoolPosition

__all__ = [
    "RedisStreamSource",
    "Source",
    "SourceItem",
    "SourceReason",
    "SpoolPosition",
    "SpoolSource",
]

_MODULES = {
    "RedisStreamSource": "trigmail.sources.redis_stream",
    "SpoolSource": "trigmail.sources.spool",
    "SpoolPosition": "trigmail.sources.spool_tail",
}


__getattr__ = lazy_attributes(__name__, _MODULES)
