"""`trigmail ledger`: list the sends in doubt and settle them by hand.

An in-doubt send may or may not have reached SendGrid, so trigmail never resends it on its own
(under ``on_doubt: skip``). SendGrid's webhook settles it when configured (docs/webhook.md);
otherwise an operator who has checked SendGrid's activity feed settles it here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trigmail.cli.app import EXIT_OK, OutputFormat
from trigmail.cli.common import (
    ConfigOption,
    FormatOption,
    LedgerOption,
    fail,
    load,
    require_ledger,
)
from trigmail.errors import LedgerError
from trigmail.events import format_ts
from trigmail.ledger import open_ledger
from trigmail.ledger.base import Ledger, LedgerStatus, SendRecord, SendState
from trigmail.logs import escape_controls
from trigmail.scheduler import Scheduler
from trigmail.webhook.report import evidence_of

T = TypeVar("T")

ledger_app = typer.Typer(
    name="ledger",
    help="Look into the ledger and settle in-doubt sends by hand.",
    no_args_is_help=True,
)

# A running daemon reads sends due this far ahead at once; a send scheduled again now is picked
# up when it next reads, so within this bound.
PICKUP_S = int(Scheduler().horizon_s)


@contextmanager
def _opened(config_path: Path | None, ledger: str | None) -> Iterator[Ledger]:
    target = load(config_path, {("ledger",): ledger}).ledger
    # Opening a SQLite path creates it: a typo must not make an empty ledger that lists nothing.
    require_ledger(target)
    opened = open_ledger(target)
    try:
        yield opened
    finally:
        opened.close()


def _using(config_path: Path | None, ledger: str | None, work: Callable[[Ledger], T]) -> T:
    """Run ``work`` on the opened ledger; a ledger that fails to open or answer exits 1."""
    try:
        with _opened(config_path, ledger) as opened:
            return work(opened)
    except LedgerError as exc:
        fail(str(exc))


def _since(send: SendRecord) -> str:
    return format_ts(send.updated_at or send.claimed_at or send.due_at)


def send_json(send: SendRecord) -> dict[str, Any]:
    """One send as ``ledger`` prints it for scripts."""
    return {
        "key": send.key,
        "rule": send.rule_id,
        "step": send.step,
        "user_id": send.user_id,
        "email": send.email,
        "state": send.state.value,
        "due_at": format_ts(send.due_at),
        "since": _since(send),
        "attempts": send.attempts,
        "last_error": send.last_error,
    }


def _in_doubt_table(
    sends: Sequence[SendRecord], total: int, evidence: dict[str, dict[str, Any]]
) -> Table:
    table = Table(
        title=f"in doubt: {total} (showing {len(sends)})",
        title_justify="left",
        caption="settle each with: trigmail ledger resolve KEY --sent | --not-sent",
    )
    # The key is copied into `resolve`: it stays whole; the other columns fold instead.
    table.add_column("key", no_wrap=True, min_width=max((len(s.key) for s in sends), default=3))
    for column in ("rule", "user", "recipient", "since", "attempts", "evidence", "last error"):
        table.add_column(column, overflow="fold")
    for send in sends:
        found = evidence.get(send.key, {})
        resend_at = found.get("resend_at")
        shown = str(found.get("evidence", "")) + (f" (resend {resend_at})" if resend_at else "")
        cells = (
            send.key,
            send.rule_id,
            send.user_id,
            send.email,
            _since(send),
            str(send.attempts),
            shown,
            send.last_error or "",
        )
        # Text, not markup: keys, user ids and errors come from events and may hold brackets;
        # and escaped: they may hold terminal escapes.
        table.add_row(*(Text(escape_controls(cell)) for cell in cells))
    return table


@ledger_app.command("in-doubt")
def in_doubt(
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    output: FormatOption = OutputFormat.TABLE,
    limit: Annotated[int, typer.Option(min=0, help="Sends listed at most, newest first.")] = 100,
) -> None:
    """List the sends in doubt: they may or may not have reached SendGrid.

    Look each one up in SendGrid's activity feed (custom arg `trigmail_key`).

    Then settle it with `trigmail ledger resolve KEY --sent | --not-sent`.

    Example: trigmail ledger in-doubt --format json | jq -r '.[].key'
    """
    verify_after_s = load(config_path, {("ledger",): ledger}).delivery.verify_after_s

    def read(opened: Ledger) -> tuple[LedgerStatus, dict[str, dict[str, Any]]]:
        status = opened.status(limit=limit)
        return status, evidence_of(opened, status.in_doubt, verify_after_s)

    status, evidence = _using(config_path, ledger, read)
    sends = list(status.in_doubt)
    if output is OutputFormat.JSON:
        listed = [{**send_json(send), **evidence.get(send.key, {})} for send in sends]
        typer.echo(json.dumps(listed, indent=2))
    else:
        total = status.counts.get(SendState.IN_DOUBT, 0)
        Console(highlight=False).print(_in_doubt_table(sends, total, evidence))
    raise typer.Exit(EXIT_OK)


def _resolve(opened: Ledger, key: str, sent: bool) -> SendRecord | str:
    """Return the settled send, or why it cannot be settled."""
    with opened.transaction() as txn:
        settled = txn.resolve(key, sent, datetime.now(UTC))
    if settled is not None:
        return settled
    found = opened.get_send(key)
    if found is None:
        return f"no send with key {key!r} in the ledger"
    return f"send {key!r} is {found.state.value}, not in_doubt: only a send in doubt is resolved"


def _chosen(sent: bool, not_sent: bool) -> bool:
    if sent == not_sent:
        raise typer.BadParameter("give exactly one", param_hint="'--sent' / '--not-sent'")
    return sent


@ledger_app.command()
def resolve(
    key: Annotated[str, typer.Argument(help="The idempotency key of the send in doubt.")],
    sent: Annotated[
        bool, typer.Option("--sent", help="SendGrid has it: mark it sent.", show_default=False)
    ] = False,
    not_sent: Annotated[
        bool,
        typer.Option(
            "--not-sent", help="SendGrid never got it: schedule it again now.", show_default=False
        ),
    ] = False,
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Settle one send in doubt, after checking SendGrid's activity feed.

    --sent marks it sent. --not-sent schedules it again, due now.

    A running `serve` sends it within five minutes (when it next reads the sends due).

    Exit 1 for an unknown key or a send that is not in doubt.

    Example: trigmail ledger resolve 'cart-recovery:evt_01JD' --not-sent
    """
    is_sent = _chosen(sent, not_sent)
    settled = _using(config_path, ledger, lambda opened: _resolve(opened, key, is_sent))
    if isinstance(settled, str):
        fail(settled)
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(send_json(settled), indent=2))
    elif is_sent:
        typer.echo(f"send {key}: marked sent")
    else:
        typer.echo(
            f"send {key}: scheduled again, due {format_ts(settled.due_at)}; a running "
            f"`trigmail serve` sends it within {PICKUP_S // 60} minutes, or at once after "
            "`systemctl reload trigmail` (SIGHUP)"
        )
    raise typer.Exit(EXIT_OK)
