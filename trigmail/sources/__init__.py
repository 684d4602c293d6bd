"""Event sources: a JSONL spool and a Redis stream behind one small consumer protocol."""

from __future__ import annotations

from trigmail.sources.base import Source, SourceItem, SourceReason
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
