"""The SQL ledgers' core: transactions written once (:mod:`.txn`), the ledger around them
(:mod:`.ledger`), a dialect per database (:mod:`.dialect`)."""

from __future__ import annotations

from trigmail.ledger.sql.dialect import Dialect, Statements, json_text
from trigmail.ledger.sql.ledger import SqlLedger, committed
from trigmail.ledger.sql.txn import SqlTxn, in_order

__all__ = ["Dialect", "SqlLedger", "SqlTxn", "Statements", "committed", "in_order", "json_text"]
