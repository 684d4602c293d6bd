"""The serve loop's event order on the SQLite ledger, which decides the claims of sends due
inside a batch from their rows read at once and writes them later (trigmail/ledger/sql/buffer.py):
the same sends as ``simulate``, no reminder an order entered before, no claim twice."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_worker import T0, Served, simulated_sent, workload, wrong_reminders
from trigmail.ledger.sqlite import SqliteLedger, SqliteTxn
from trigmail.sends import SendState


def _on_sqlite(path: Path) -> Any:
    return lambda clock: SqliteLedger(path, clock=clock)


def test_a_backlog_on_sqlite_claims_from_rows_read_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    sends = SqliteTxn._sends

    def counted(txn: SqliteTxn, sql: str, params: Any = ()) -> Any:
        statements.append(sql)
        return sends(txn, sql, params)

    monkeypatch.setattr(SqliteTxn, "_sends", counted)
    lines = workload(seed=1, count=600)
    served = Served(T0 + timedelta(hours=1), ledger=_on_sqlite(tmp_path / "ledger.db"))
    for line in lines:
        served.source.put(line.data(), entered_at=line.ts)
    served.run_until_idle()
    sent = served.sent_keys()
    assert sent == simulated_sent(lines)
    assert wrong_reminders(lines, sent) == []
    assert len(served.provider.sent) == len(sent)  # no key twice
    status = served.ledger.status()
    assert status.counts[SendState.CANCELLED] > 0, "the workload must exercise cancels"
    # The reminders due inside a batch were read with the batch, not claimed one by one.
    assert statements.count(SqliteTxn.sql.sends_of) > 0
    reminders = sum(1 for key in sent if key.startswith("cart:"))
    assert statements.count(SqliteTxn.sql.claim) < reminders / 4


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.sampled_from([1, 7, 50, 500]))
def test_any_backlog_on_sqlite_matches_simulate(seed: int, batch_size: int) -> None:
    lines = workload(seed, count=120, users=8)
    with tempfile.TemporaryDirectory() as root:
        ledger = _on_sqlite(Path(root) / "ledger.db")
        served = Served(T0 + timedelta(minutes=30), batch_size=batch_size, ledger=ledger)
        for line in lines:
            served.source.put(line.data(), entered_at=line.ts)
        served.run_until_idle()
        assert served.sent_keys() == simulated_sent(lines)
        assert len(served.provider.sent) == len(served.sent_keys())
        served.ledger.close()
