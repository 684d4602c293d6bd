"""`trigmail status`: what the ledger holds, for people and scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trigmail.cli.app import EXIT_OK, OutputFormat, app
from trigmail.cli.common import (
    ConfigOption,
    FormatOption,
    LedgerOption,
    fail,
    load,
    require_ledger,
)
from trigmail.errors import LedgerError
from trigmail.events import format_ts, parse_ts
from trigmail.ledger import open_ledger
from trigmail.ledger.base import WATERMARK_META, LedgerStatus, SendRecord, SendState
from trigmail.logs import escape_controls
from trigmail.pauses import PAUSES_META, Pause, decode, in_force
from trigmail.secrets import redact_url
from trigmail.webhook.report import delivery_by_rule, evidence_of


def _since(send: SendRecord) -> str | None:
    moment = send.updated_at or send.claimed_at or send.due_at
    return format_ts(moment)


def watermark_json(stored: str | None, source: str, now: datetime) -> dict[str, Any] | None:
    """The event-order gate as serve last published it (see :mod:`trigmail.worker`)."""
    if stored is None:
        return None
    try:
        published = json.loads(stored)
        at = None if published["at"] is None else parse_ts(published["at"])
        held = int(published["held"])
        updated = str(published["updated"])
    except (ValueError, KeyError, TypeError):
        return None
    lag_s = None if at is None else round(max((now - at).total_seconds(), 0.0), 3)
    return {
        "source": source,
        "at": published["at"],
        "lag_s": lag_s,
        "held": held,
        "updated": updated,
    }


def status_json(
    status: LedgerStatus,
    watermark: dict[str, Any] | None = None,
    delivery: dict[str, dict[str, int]] | None = None,
    evidence: dict[str, dict[str, Any]] | None = None,
    pauses: Sequence[Pause] = (),
) -> dict[str, Any]:
    """The shape docs/design.md fixes for ``status --format json`` (plus a few lists).

    ``delivery`` is the webhook's events per rule and type; ``evidence`` each in-doubt send's
    evidence state, by key (:mod:`trigmail.webhook.report`).
    """
    evidence = evidence or {}

    def send_json(send: SendRecord) -> dict[str, Any]:
        return {
            "key": send.key,
            "rule": send.rule_id,
            "user_id": send.user_id,
            "state": send.state.value,
            "due_at": format_ts(send.due_at),
            "since": _since(send),
            "attempts": send.attempts,
            "last_error": send.last_error,
        }

    return {
        "counts": {state.value: status.counts.get(state, 0) for state in SendState},
        "by_rule": {
            rule: {state.value: counts.get(state, 0) for state in SendState}
            for rule, counts in sorted(status.by_rule.items())
        },
        "by_variant": {
            rule: {
                variant: {state.value: counts.get(state, 0) for state in SendState}
                for variant, counts in sorted(variants.items())
            }
            for rule, variants in sorted(status.by_variant.items())
        },
        "in_doubt": [
            {
                "key": s.key,
                "rule": s.rule_id,
                "user_id": s.user_id,
                "since": _since(s),
                **evidence.get(s.key, {}),
            }
            for s in status.in_doubt
        ],
        "dead_letters": status.dead_letters,
        "rules_version": status.rules_version,
        "pauses": [p.to_json() for p in pauses],
        "next_due": [send_json(s) for s in status.next_due],
        "failed": [send_json(s) for s in status.failed],
        "recent": [send_json(s) for s in status.recent],
        "watermark": watermark,
        "delivery": delivery or {},
    }


def _sends_table(title: str, sends: Sequence[SendRecord], when: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("key", "rule", "user", when, "note"):
        table.add_column(column, overflow="fold")
    for send in sends:
        moment = format_ts(send.due_at) if when == "due" else (_since(send) or "")
        # Text, not markup: keys, user ids and errors come from events and may hold brackets;
        # and escaped: they may hold terminal escapes.
        cells = (send.key, send.rule_id, send.user_id, moment, send.last_error or "")
        table.add_row(*(Text(escape_controls(cell)) for cell in cells))
    return table


def _delivery_table(delivery: dict[str, dict[str, int]]) -> Table:
    types = sorted({kind for counts in delivery.values() for kind in counts})
    table = Table(title="delivery (SendGrid's webhook events)", title_justify="left")
    table.add_column("rule")
    for kind in types:
        table.add_column(kind, justify="right")
    for rule, counts in delivery.items():
        table.add_row(Text(escape_controls(rule or "-")), *(str(counts.get(k, 0)) for k in types))
    return table


def _print_tables(
    console: Console,
    status: LedgerStatus,
    ledger: str,
    watermark: dict[str, Any] | None,
    delivery: dict[str, dict[str, int]] | None = None,
    pauses: Sequence[Pause] = (),
) -> None:
    states = list(SendState)
    counts = Table(title=f"ledger {ledger} · rules {status.rules_version or '-'}")
    counts.add_column("rule")
    for state in states:
        counts.add_column(state.value, justify="right")
    for rule, by_state in sorted(status.by_rule.items()):
        counts.add_row(rule, *(str(by_state.get(s, 0)) for s in states))
        # An A/B split's variants, under their rule.
        for variant, in_variant in sorted(status.by_variant.get(rule, {}).items()):
            counts.add_row(f"  {rule}/{variant}", *(str(in_variant.get(s, 0)) for s in states))
    counts.add_row("total", *(str(status.counts.get(s, 0)) for s in states), style="bold")
    console.print(counts)
    console.print(_sends_table("next due", status.next_due, "due"))
    if status.in_doubt:
        console.print(
            _sends_table("in doubt (never resent under on_doubt: skip)", status.in_doubt, "since")
        )
    if status.failed:
        console.print(_sends_table("failed", status.failed, "since"))
    console.print(_sends_table("recent", status.recent, "since"))
    if delivery:
        console.print(_delivery_table(delivery))
    console.print(f"dead letters: {status.dead_letters} (trigmail dead-letters list)")
    for pause in pauses:
        until = "until resumed" if pause.until is None else f"until {format_ts(pause.until)}"
        held = "dropped" if pause.drop else "held"
        line = f"paused: {pause.rule} {until}, due sends {held}: {pause.reason or '-'}"
        console.print(Text(escape_controls(line), style="bold yellow"))
    if watermark is not None:
        lag = "unknown" if watermark["lag_s"] is None else f"{watermark['lag_s']:.1f} s behind"
        console.print(
            Text(
                f"watermark of {watermark['source']}: {watermark['at'] or 'unknown'} ({lag}), "
                f"{watermark['held']} due sends held, as of {watermark['updated']}"
            )
        )


@app.command()
def status(
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    output: FormatOption = OutputFormat.TABLE,
    limit: Annotated[int, typer.Option(min=0, help="Sends listed per section.")] = 10,
) -> None:
    """Show pending, in-doubt, failed and recent sends, and dead letters, from the ledger.

    Reads the ledger only; safe to run beside a running `serve`.

    Example: trigmail status --format json | jq .counts.in_doubt
    """
    config = load(config_path, {("ledger",): ledger})
    target = config.ledger
    require_ledger(target)
    try:
        opened = open_ledger(target)
        try:
            current = opened.status(limit=limit)
            stored = opened.get_meta(WATERMARK_META + config.source.name)
            delivery = delivery_by_rule(opened)
            verify_after_s = config.delivery.verify_after_s
            evidence = evidence_of(opened, current.in_doubt, verify_after_s)
            now = datetime.now(UTC)
            pauses = list(in_force(decode(opened.get_meta(PAUSES_META)), now).values())
        finally:
            opened.close()
    except LedgerError as exc:
        fail(str(exc))
    watermark = watermark_json(stored, config.source.name, datetime.now(UTC))
    if output is OutputFormat.JSON:
        document = status_json(current, watermark, delivery, evidence, pauses)
        typer.echo(json.dumps(document, indent=2))
    else:
        out = Console(highlight=False)
        # Piped output is read by people too: do not fold keys at 80 columns.
        console = out if out.is_terminal else Console(highlight=False, width=140)
        _print_tables(console, current, redact_url(target), watermark, delivery, pauses)
    raise typer.Exit(EXIT_OK)
