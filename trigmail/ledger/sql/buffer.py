"""New sends of one SQL transaction, written together rather than one statement each.

A send the engine has just found absent (``send_exists``) is kept here when inserted, and the
kept sends go in with one ``executemany`` before the first statement that could read them (the
transaction's :meth:`~trigmail.ledger.sql.txn.SqlTxn._before`), or at the commit. Reads of one
user's sends write that user's first; ``send_exists`` answers kept keys itself.
"""

from __future__ import annotations

from typing import Any


class SendBuffer:
    """The kept sends' parameters, their keys and users, and the keys found absent."""

    def __init__(self) -> None:
        self.params: list[list[Any]] = []
        self.keys: set[str] = set()
        self.users: set[str] = set()
        # Found absent by send_exists in this transaction and not inserted since: an insert of
        # one of these can wait (on PostgreSQL, a key another worker commits meanwhile is found
        # when the kept sends are written, and the transaction fails and is decided again).
        self.absent: set[str] = set()
        # Something is waiting to be written: kept sends, or what goes with sends already
        # written (SQLite's categories), which any read of sends must find written.
        self.dirty = False

    def keep(self, key: str, user_id: str, params: list[Any]) -> None:
        self.params.append(params)
        self.keys.add(key)
        self.users.add(user_id)
        self.absent.discard(key)
        self.dirty = True

    def take(self) -> list[list[Any]]:
        """Return the kept sends' parameters and forget them."""
        params = self.params
        self.params = []
        self.keys.clear()
        self.users.clear()
        self.dirty = False
        return params
