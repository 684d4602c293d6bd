"""A SQLite ledger writer for the crash test: it is killed with SIGKILL in the middle of a batch.

Batch ``b`` (1, 2, ...) writes ``--sends`` sends under rule ``batch-b``, as many seen event ids,
and the position ``b``, in one transaction. It prints ``batch b started`` after BEGIN and
``batch b committed`` after COMMIT. With ``--pause-at b`` it prints ``batch b paused`` halfway
through that batch and waits on stdin, which never answers: the test kills it there.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from trigmail.decisions import Payload
from trigmail.ledger import open_ledger
from trigmail.ledger.base import LedgerTxn, SendRecord
from trigmail.rules.model import OnDoubt

SOURCE = "spool"
T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def make_send(batch: int, number: int, padding: str) -> SendRecord:
    return SendRecord(
        key=f"b{batch}-{number}",
        rule_id=f"batch-{batch}",
        step=0,
        user_id=f"u{number}",
        email=f"u{number}@example.com",
        event_id=f"evt-{batch}-{number}",
        due_at=T0 + timedelta(seconds=number),
        payload=Payload(template="d-1", data={"pad": padding}, categories=("crash",)),
        on_doubt=OnDoubt.SKIP,
        rules_version="v1",
    )


def write_batch(txn: LedgerTxn, batch: int, args: argparse.Namespace) -> None:
    padding = "x" * args.padding
    for number in range(args.sends):
        if batch == args.pause_at and number == args.sends // 2:
            print(f"batch {batch} paused", flush=True)
            sys.stdin.readline()
        txn.insert_send(make_send(batch, number, padding))
        txn.mark_seen(f"evt-{batch}-{number}", T0)
    txn.set_position(SOURCE, str(batch))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--padding", type=int, default=0, help="payload bytes per send")
    parser.add_argument("--pause-at", type=int, default=0)
    parser.add_argument("--batches", type=int, default=10_000, help="a bound, in case no kill")
    args = parser.parse_args()
    ledger = open_ledger(args.path)
    for batch in range(1, args.batches + 1):
        with ledger.transaction() as txn:
            print(f"batch {batch} started", flush=True)
            write_batch(txn, batch, args)
        print(f"batch {batch} committed", flush=True)
    ledger.close()


if __name__ == "__main__":
    main()
