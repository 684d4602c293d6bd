"""The SQL ledgers' core: transactions written once (:mod:`.txn`), a dialect per database
(:mod:`.dialect`)."""

from __future__ import annotations

from trigmail.ledger.sql.dialect import Dialect, Statements, json_text
from trigmail.ledger.sql.txn import SqlLedger, SqlTxn, committed, in_order

__all__ = ["Dialect", "SqlLedger", "SqlTxn", "Statements", "committed", "in_order", "json_text"]
