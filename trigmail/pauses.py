"""Rule pauses: runtime switches an operator sets with `trigmail pause`, kept in the ledger.

Every worker reads them from the ledger (at most a second old), so one command stops a rule
everywhere, like an Alertmanager silence. They are one JSON value in the ledger's ``meta``
table (no migration), read, changed and written back in one transaction. A paused rule's due
sends are held (or dropped with reason ``paused`` when the pause says ``drop``); its triggers
are still decided and recorded. Pure apart from :func:`read_pauses` and :func:`write_pauses`,
which take a transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from trigmail.events import format_ts, parse_ts

PAUSES_META: Final = "pauses"


class MetaTxn(Protocol):
    """The two reads and writes of a ledger transaction pauses need."""

    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str) -> None: ...


@dataclass(frozen=True)
class Pause:
    """One rule paused: until when (``None``: until resumed), why, and whether its due sends
    are dropped rather than held."""

    rule: str
    at: datetime
    until: datetime | None = None
    reason: str = ""
    drop: bool = False

    def in_force(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "at": format_ts(self.at),
            "until": None if self.until is None else format_ts(self.until),
            "reason": self.reason,
            "drop": self.drop,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Pause:
        until = obj.get("until")
        return cls(
            rule=str(obj["rule"]),
            at=parse_ts(str(obj["at"])),
            until=None if until is None else parse_ts(str(until)),
            reason=str(obj.get("reason") or ""),
            drop=bool(obj.get("drop")),
        )


Pauses = Mapping[str, Pause]


def decode(text: str | None) -> dict[str, Pause]:
    """The pauses stored as ``text``; an unreadable value is no pause (and never a crash)."""
    if not text:
        return {}
    try:
        stored = json.loads(text)
        return {rule: Pause.from_json(obj) for rule, obj in stored.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def encode(pauses: Pauses) -> str:
    return json.dumps({rule: p.to_json() for rule, p in sorted(pauses.items())})


def in_force(pauses: Pauses, now: datetime) -> dict[str, Pause]:
    """The pauses not yet expired at ``now``."""
    return {rule: p for rule, p in pauses.items() if p.in_force(now)}


def read_pauses(txn: MetaTxn) -> dict[str, Pause]:
    return decode(txn.get_meta(PAUSES_META))


def write_pauses(txn: MetaTxn, pauses: Pauses) -> None:
    txn.set_meta(PAUSES_META, encode(pauses))


def log_changes(old: Pauses, new: Pauses, log: logging.Logger) -> None:
    """Pauses are what an operator acts on: each one set or lifted is logged once, on ``log``."""
    for rule, pause in new.items():
        if old.get(rule) != pause:
            until = "until resumed" if pause.until is None else f"until {pause.until.isoformat()}"
            held = "dropped" if pause.drop else "held"
            log.info("rule %s: paused %s, due sends %s: %s", rule, until, held, pause.reason or "-")
    for rule in old.keys() - new.keys():
        log.info("rule %s: resumed", rule)
