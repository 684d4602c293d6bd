"""The reads of a SQL ledger's transaction that serve status and the tools, not decisions."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, ClassVar

from trigmail.decisions import LogEntry
from trigmail.ledger.base import DeadLetter, LedgerStatus
from trigmail.ledger.semantics import count_states, count_variants
from trigmail.ledger.sql.dialect import Statements
from trigmail.ledger.sql.evidence import EvidenceTxn, Params
from trigmail.sends import SendRecord, SendState


class ToolReads(EvidenceTxn):
    """Status, a send by key, dead letters, the decision log, and pruning."""

    sql: ClassVar[Statements]

    # Provided by SqlTxn.
    def _scalar(self, sql: str, params: Params = ()) -> Any:
        raise NotImplementedError

    def count_sends(self, states: Collection[SendState]) -> dict[SendState, int]:
        return {state: int(self._scalar(self.sql.count_in[state])) for state in states}

    def get_send(self, key: str) -> SendRecord | None:
        found = self._sends(self.sql.get_send, (key,))
        return found[0] if found else None

    def get_meta(self, name: str) -> str | None:
        value: str | None = self._scalar(self.sql.get_meta, (name,))
        return value

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        dead = self.dialect.rows.dead
        return [dead(row) for row in self._rows(self.sql.dead_letters, (max(limit, 0),))]

    def decision_log(self, event_id: str | None, limit: int) -> list[LogEntry]:
        if event_id is None:
            rows = self._rows(self.sql.log_newest, (max(limit, 0),))
        else:
            rows = self._rows(self.sql.log_of_event, (event_id, max(limit, 0)))
        return [self.dialect.rows.log(row) for row in rows]

    def _latest(self, state: SendState | None, limit: int) -> list[SendRecord]:
        if state is None:
            return self._sends(self.sql.latest, (max(limit, 0),))
        # latest_in reads the sends other than scheduled (their index, schema v11).
        assert state is not SendState.SCHEDULED
        return self._sends(self.sql.latest_in, (state.value, max(limit, 0)))

    def status(self, limit: int) -> LedgerStatus:
        groups = self._rows(self.sql.counts)
        counts, by_rule = count_states(
            (g["rule_id"], SendState(g["state"]), g["n"]) for g in groups
        )
        variant_groups = self._rows(self.sql.variant_counts)
        return LedgerStatus(
            counts=counts,
            by_rule=by_rule,
            by_variant=count_variants(
                (g["rule_id"], g["variant"], SendState(g["state"]), g["n"]) for g in variant_groups
            ),
            next_due=self._sends(self.sql.next_due, (max(limit, 0),)),
            in_doubt=self._latest(SendState.IN_DOUBT, limit),
            failed=self._latest(SendState.FAILED, limit),
            recent=self._latest(None, limit),
            dead_letters=self._scalar(self.sql.dead_count),
            rules_version=self.get_meta("rules_version"),
        )

    def prune(self, before: datetime) -> int:
        cutoff = (self.dialect.time(before),)
        removed = sum(self._run(sql, cutoff) for sql in self.sql.prune)
        return removed + self.prune_evidence(before)
