"""Talk to systemd: the sd_notify protocol over ``$NOTIFY_SOCKET``, and the watchdog interval.

A few datagrams on an ``AF_UNIX`` socket are the whole protocol, so there is no libsystemd
binding here. Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a no-op, and a send that
fails is logged, never raised: the daemon must not die because the notify socket went away.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

# systemd recommends pinging at half the watchdog timeout, so one late ping is not fatal.
_PING_FRACTION = 0.5


def _monotonic_ns() -> int:
    # systemd compares MONOTONIC_USEC against its own CLOCK_MONOTONIC, so it must be this clock.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _socket_address(notify_socket: str) -> str | None:
    """Map ``$NOTIFY_SOCKET`` to an address ``sendto`` takes; ``None`` when unsupported."""
    if notify_socket.startswith("@"):
        # A leading '@' names a socket in the abstract namespace, spelled with a NUL byte.
        return "\0" + notify_socket[1:]
    if notify_socket.startswith("/"):
        return notify_socket
    return None


class Notifier:
    """Send sd_notify messages to the service manager.

    Build it with :meth:`from_env` in the daemon. Each message opens a fresh datagram socket,
    like libsystemd's ``sd_notify``, so nothing stays open between the rare messages and a
    restarted manager is reached by the next one.

    Args:
        notify_socket: the value of ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
            namespace); ``None`` makes every method a no-op.
        monotonic_ns: the ``CLOCK_MONOTONIC`` clock, passed in so tests can fix it.
    """

    def __init__(
        self,
        notify_socket: str | None,
        *,
        monotonic_ns: Callable[[], int] = _monotonic_ns,
    ) -> None:
        self._address = None if not notify_socket else _socket_address(notify_socket)
        self._monotonic_ns = monotonic_ns
        if notify_socket and self._address is None:
            logger.warning(
                "notify socket %r: unsupported address, notifications off", notify_socket
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Return a notifier for ``$NOTIFY_SOCKET`` (a no-op one when it is unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._address is not None

    def ready(self) -> bool:
        """Tell systemd start-up is over: ``Type=notify`` units count as started from here."""
        return self.notify("READY=1")

    def stopping(self) -> bool:
        """Tell systemd a graceful stop (the drain of in-flight sends) has begun."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """Tell systemd a reload started; send :meth:`ready` when it is over.

        systemd 253 and later match the reload to its request by ``MONOTONIC_USEC``.
        """
        now_us = self._monotonic_ns() // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_us}")

    def watchdog(self) -> bool:
        """Ping the watchdog; call it from the main loop so a stuck loop stops the pings."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        # Assignments are newline-separated, so a newline in the text would end it early.
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram.

        Returns:
            Whether the datagram was sent; ``False`` when disabled or on a socket error.
        """
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            logger.warning("notify %s: cannot send: %s", assignments[0], exc)
            return False
        return True


def watchdog_interval_s(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Return how often to ping the watchdog, or ``None`` when no watchdog is set for us.

    The interval is half of ``$WATCHDOG_USEC``. A ``$WATCHDOG_PID`` naming another process
    means the watchdog is not ours (the variable was inherited), so the answer is ``None``.

    Args:
        environ: the environment to read; the process environment by default.
        pid: this process's id; :func:`os.getpid` by default.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    own_pid = os.getpid() if pid is None else pid
    if raw_pid and raw_pid != str(own_pid):
        return None
    try:
        timeout_us = int(raw_usec)
    except ValueError:
        timeout_us = 0
    if timeout_us <= 0:
        logger.warning("watchdog: ignoring invalid WATCHDOG_USEC=%r", raw_usec)
        return None
    return timeout_us / 1_000_000 * _PING_FRACTION
