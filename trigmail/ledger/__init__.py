"""The ledger: everything trigmail decided, behind one protocol (:mod:`trigmail.ledger.base`).

The backends are imported on first use: the engine and the commands that never open a SQLite
or PostgreSQL ledger (validate, simulate) start without their drivers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trigmail.errors import LedgerError
from trigmail.files import make_dirs
from trigmail.lazy import lazy_attributes
from trigmail.ledger.base import Ledger
from trigmail.ledger.semantics import Clock, utc_now

if TYPE_CHECKING:
    from trigmail.ledger.memory import MemoryLedger
    from trigmail.ledger.postgres import PostgresLedger
    from trigmail.ledger.sqlite import SqliteLedger

__all__ = ["Ledger", "MemoryLedger", "PostgresLedger", "SqliteLedger", "open_ledger"]

_BACKENDS = {
    "MemoryLedger": "trigmail.ledger.memory",
    "PostgresLedger": "trigmail.ledger.postgres",
    "SqliteLedger": "trigmail.ledger.sqlite",
}


__getattr__ = lazy_attributes(__name__, _BACKENDS)


_MEMORY_TARGETS = frozenset({":memory:", "memory"})
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_ledger(
    target: str | Path,
    busy_timeout_s: float = 5.0,
    clock: Clock = utc_now,
    worker_id: str | None = None,
) -> Ledger:
    """Open the ledger a config's ``ledger:`` value names.

    Args:
        target: ``:memory:`` (or ``memory``) for an in-memory ledger, a ``postgresql://`` URL
            (a ledger shared by several workers), or the path of a SQLite file, created with its
            parent directory when missing.
        busy_timeout_s: how long a SQLite write waits for another process's lock.
        clock: the time of writes that carry none; ``simulate`` passes its virtual clock.
        worker_id: this worker's name in a shared ledger's leases (default
            ``<hostname>-<pid>``); it must be unique among the live workers.

    Raises:
        LedgerError: when the ledger cannot be opened or is of a newer schema.
    """
    text = str(target)
    if text in _MEMORY_TARGETS:
        from trigmail.ledger.memory import MemoryLedger

        return MemoryLedger(clock=clock)
    if text.startswith(_POSTGRES_SCHEMES):
        from trigmail.ledger.postgres import PostgresLedger

        return PostgresLedger(text, worker_id=worker_id, clock=clock)
    path = Path(target)
    try:
        make_dirs(path.parent)  # 0750 whatever the umask
    except OSError as exc:
        raise LedgerError(f"ledger {path}: cannot create its directory: {exc}") from exc
    from trigmail.ledger.sqlite import SqliteLedger

    return SqliteLedger(path, busy_timeout_s=busy_timeout_s, clock=clock)
