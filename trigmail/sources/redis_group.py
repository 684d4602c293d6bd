"""A worker's hold on its consumer group: one Redis connection, and what is asked of the group.

- The connection is made when first needed and the group created on each connect (``MKSTREAM``,
  starting at the stream's first entry).
- A Redis error drops the connection, is noted as an :class:`~trigmail.sources.outage.Outage`
  (for the back-off and ``/healthz``) and raised as a :class:`SourceError` that names the URL
  without its password; the next use connects again.
- Two Lua scripts do in one round trip what must not be split: the group's watermark, and
  setting an entry aside with its ``XACK``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from trigmail.errors import SourceError
from trigmail.events import format_ts
from trigmail.secrets import redact_url
from trigmail.sources import keys
from trigmail.sources.outage import Outage
from trigmail.sources.redis_entries import entry_time

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0

T = TypeVar("T")


# XACK, then XADD the letter only if that XACK took the entry off the pending list, in one
# script (atomic, like the MULTI it replaces). With several workers an entry can be decided by
# two at once (one claimed it with XAUTOCLAIM while the other, slow, still held it); each would
# set it aside, and the letter would be written twice. Only the first XACK counts one.
_SET_ASIDE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
end
return 0
"""


# The group's watermark in one round trip: its oldest pending entry (delivered to a consumer,
# not yet acknowledged), its first entry not yet delivered, and the server's clock. Entry ids
# carry the same clock, so the earliest of the three is a time before which every entry of
# the stream has been acknowledged by some consumer.
_WATERMARK = """
local last = false
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, delivered
    for i = 1, #group, 2 do
        if group[i] == 'name' then name = group[i + 1] end
        if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
    end
    if name == ARGV[1] then last = delivered end
end
local now = redis.call('TIME')
if not last then return {false, false, now[1], now[2]} end
local oldest = redis.call('XPENDING', KEYS[1], ARGV[1])[2] or false
local after = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
local first = false
if #after > 0 then first = after[1][1] end
return {oldest, first, now[1], now[2]}
"""


class ConsumerGroup:
    """One consumer's connection to its group on ``url``.

    Args:
        url: ``redis://`` or ``rediss://`` URL, possibly with a password.
        stream: the stream the group reads.
        group: the consumer group's name.
        consumer: this worker's name in the group.
        socket_timeout_s: how long a command may keep the socket silent.
        clock: the wall clock an outage's start is reported in.
        on_connect: called after every new connection (the reader re-reads its own pending
            entries then).
    """

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        consumer: str,
        *,
        socket_timeout_s: float,
        clock: Callable[[], datetime],
        on_connect: Callable[[], None],
    ) -> None:
        self.name = f"redis:{stream}"
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_stream = keys.dead_stream(stream)
        self.outage = Outage(clock)
        self._url = url
        self._safe_url = redact_url(url)
        self._socket_timeout_s = socket_timeout_s
        self._on_connect = on_connect
        self._client: redis.Redis | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    def guarded(self, action: Callable[[], T]) -> T:
        """Run ``action``; on a Redis error disconnect, note the outage, raise SourceError."""
        try:
            return action()
        except redis.RedisError as exc:
            self.close()
            self.outage.failed(f"{type(exc).__name__}: {exc}")
            # Raised, not logged: the daemon logs it once, with its back-off.
            message = f"redis {self._safe_url} stream {self.stream}: {type(exc).__name__}: {exc}"
            raise SourceError(message) from exc

    def client(self) -> redis.Redis:
        """Return the connection, connecting (and creating the group) when there is none.

        Raises:
            SourceError: when the URL is malformed.
            redis.RedisError: when Redis cannot be reached (call it under :meth:`guarded`).
        """
        if self._client is not None:
            return self._client
        try:
            client = redis.Redis.from_url(
                self._url,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                socket_timeout=self._socket_timeout_s,
                # The daemon backs off on SourceError; retrying here too would hold a read
                # past its timeout_s.
                retry=Retry(NoBackoff(), 0),
                client_name=keys.client_name(self.consumer),
            )
        except ValueError as exc:
            raise SourceError(f"redis {self._safe_url}: bad URL: {exc}") from None
        try:
            self._create_group(client)
        except BaseException:
            client.close()
            raise
        self._client = client
        down_since = self.outage.recovered()
        if down_since is not None:
            logger.info(
                "source %s: redis reachable again (down since %s)",
                self.name,
                format_ts(down_since),
            )
        self._on_connect()
        logger.info("source %s: connected to %s as %s", self.name, self._safe_url, self.consumer)
        return client

    def watermark(self) -> datetime | None:
        """Return a time before which every entry of the stream has been acknowledged by some
        consumer of the group; ``None`` when Redis cannot tell now."""
        if self._client is None and not self.outage.due():
            return None  # Redis is down: the reads' back-off says when to try it again
        try:
            reply = self.client().eval(_WATERMARK, 1, self.stream, self.group)
        except (redis.RedisError, SourceError) as exc:
            logger.debug("source %s: no watermark now: %s", self.name, exc)
            return None
        oldest, first, seconds, micros = reply
        candidates = [entry_time(entry) for entry in (oldest, first) if entry]
        candidates.append(datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, UTC))
        return min(candidates)

    def set_aside(self, entry: str, letter: dict[FieldT, EncodableT]) -> None:
        """Add ``letter`` to the dead stream if ``entry``'s ``XACK`` takes it off the pending
        list (one script: atomic, and one letter even when two workers set it aside)."""
        fields = [part for pair in letter.items() for part in pair]
        self.client().eval(
            _SET_ASIDE,
            2,
            self.stream,
            self.dead_stream,
            self.group,
            entry,
            keys.DEAD_MAXLEN,
            *fields,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _create_group(self, client: redis.Redis) -> None:
        try:
            client.xgroup_create(self.stream, self.group, id=keys.GROUP_START_ID, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:
            logger.info("source %s: created consumer group %s", self.name, self.group)
