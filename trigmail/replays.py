"""Replay allowances: a dead-lettered event may be decided once more, whatever its seen id says.

`trigmail dead-letters replay` delivers the event again through the source and, in the same
breath, allows its id one more decision in the ledger (a meta row per event, so concurrent
writers never lose one another's). The ingest takes the allowance when it meets the event as
a duplicate. Keys are kept: a send the event already made is a ``duplicate_key``, never a
second email (docs/design.md §4).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

from trigmail.events import format_ts
from trigmail.ledger.base import LedgerTxn

_PREFIX: Final = "replay:"
# An allowance taken (meta rows are never deleted): the id is a duplicate again.
_TAKEN: Final = ""


def allow_replay(txn: LedgerTxn, event_id: str, letter_id: str, at: datetime) -> None:
    """Let ``event_id`` be decided once more, the next time it is read."""
    value = json.dumps({"letter": letter_id, "at": format_ts(at)})
    txn.set_meta(_PREFIX + event_id, value)


def take_replay(txn: LedgerTxn, event_id: str) -> bool:
    """Return whether ``event_id`` had an allowance, and use it up."""
    name = _PREFIX + event_id
    if not txn.get_meta(name):
        return False
    txn.set_meta(name, _TAKEN)
    return True
