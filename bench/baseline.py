"""The straightforward design, written plainly, so that trigmail's figures are ratios to it.

Same rules, same engine and the same ledger schema as trigmail, driven the obvious way:

- ingest: read a line, decide it, commit its decisions and position: one SQLite transaction
  (``synchronous=FULL``) per event;
- delivery: for each due send, claim it (one transaction), call SendGrid through the ``sendgrid``
  package's own client (one request per email, a new connection each time), record the outcome
  (another transaction); one email after the other.

Run through ``bench.bench_ingest --baseline``, ``bench.bench_delivery --baseline`` and, for a
backlog decided and then delivered, ``bench.bench_backlog --baseline``.
"""

from __future__ import annotations

from pathlib import Path

import sendgrid
from sendgrid.helpers.mail import Category, CustomArg, From, Mail, ReplyTo, To

from bench.common import FAKE_API_KEY, SENDER, utc_now
from trigmail.decisions import Cancel, Fire, Schedule
from trigmail.engine import decide, decide_due
from trigmail.events import parse_event
from trigmail.ingest import record_for
from trigmail.ledger.base import SendRecord, SendState
from trigmail.ledger.sqlite import SqliteLedger
from trigmail.rules.model import RuleSet

SOURCE = "baseline"


def ingest(spool: Path, ledger_path: Path, rules: RuleSet) -> int:
    """Decide every line of ``spool``, one transaction per event; return how many were read."""
    ledger = SqliteLedger(ledger_path)
    count = 0
    offset = 0
    try:
        with spool.open("rb") as lines:
            for line in lines:
                offset += len(line)
                count += 1
                now = utc_now()
                event = parse_event(line.rstrip(b"\n"), now)
                with ledger.transaction() as txn:
                    for decision in decide(event, rules, txn, now):
                        if isinstance(decision, Schedule):
                            txn.insert_send(record_for(decision, rules.version, now))
                        elif isinstance(decision, Cancel):
                            txn.cancel_sends(decision.keys, decision.reason.value, now)
                    txn.mark_seen(event.id, now)
                    txn.set_position(SOURCE, str(offset))
    finally:
        ledger.close()
    return count


def deliver(ledger_path: Path, url: str, rules: RuleSet, limit: int) -> int:
    """Send up to ``limit`` due sends one by one through the ``sendgrid`` client; return how many
    the provider accepted."""
    client = sendgrid.SendGridAPIClient(FAKE_API_KEY, host=url)
    ledger = SqliteLedger(ledger_path)
    accepted = 0
    try:
        with ledger.transaction() as txn:
            due = txn.due_sends(utc_now(), limit)
        for send in due:
            now = utc_now()
            with ledger.transaction() as txn:
                if not isinstance(decide_due(send, rules, txn, now), Fire):
                    continue
                if not txn.claim([send.key], now):
                    continue
            response = client.send(_mail(send))
            with ledger.transaction() as txn:
                message_id = response.headers.get("X-Message-Id")
                txn.finish([send.key], SendState.SENT, utc_now(), message_id=message_id)
            accepted += 1
    finally:
        ledger.close()
    return accepted


def _mail(send: SendRecord) -> Mail:
    payload = send.payload
    message = Mail(from_email=From(SENDER.email, SENDER.name), to_emails=To(send.email))
    message.template_id = payload.template
    message.dynamic_template_data = dict(payload.data)
    message.custom_arg = [
        CustomArg("trigmail_key", send.key),
        CustomArg("trigmail_rule", send.rule_id),
    ]
    if payload.categories:
        message.category = [Category(name) for name in payload.categories]
    if payload.reply_to is not None:
        message.reply_to = ReplyTo(payload.reply_to.email, payload.reply_to.name)
    return message
