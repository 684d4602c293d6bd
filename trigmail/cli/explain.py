"""`trigmail explain USER_ID`: why a user did or did not get an email, from the live ledger."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trigmail.cli.app import EXIT_OK, OutputFormat, app
from trigmail.cli.common import OUTCOME_STYLE, ConfigOption, LedgerOption, fail, load
from trigmail.config import Config
from trigmail.decisions import Reason
from trigmail.durations import parse_duration
from trigmail.errors import DurationError, LedgerError
from trigmail.events import format_ts, parse_ts
from trigmail.explain import History, Line, explain, what
from trigmail.explain_ledger import read_history
from trigmail.logs import escape_controls
from trigmail.rules.loader import load_rules
from trigmail.rules.model import Cap
from trigmail.secrets import redact_url
from trigmail.sends import SendRecord


def parse_since(value: str | None, now: datetime) -> datetime | None:
    """``--since``: a duration back from now (``2d``, ``1h30m``) or an RFC 3339 time."""
    if value is None:
        return None
    try:
        return now - timedelta(seconds=parse_duration(value))
    except DurationError:
        pass
    try:
        return parse_ts(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a duration (2d, 1h30m) nor an RFC 3339 time"
        ) from None


def _caps(config: Config) -> dict[str, Cap]:
    """The caps of the rules in force, to name the sends a full cap counted; none when the
    rules do not load (explain answers anyway, from the ledger alone)."""
    try:
        rules = load_rules(*config.rules_dirs).rules
    except Exception:  # the rules are input; a broken file must not stop an answer
        return {}
    return {} if rules is None else {cap.id: cap for cap in rules.caps}


def _send_cell(line: Line) -> str:
    send = line.send
    if send is None:
        return ""
    parts = [send.state.value, f"{send.attempts} attempt{'s' if send.attempts != 1 else ''}"]
    if send.message_id:
        parts.append(send.message_id)
    if line.delivery is not None:
        parts.append(f"delivery: {line.delivery.event}")
    return " · ".join(parts)


def _timeline_table(history: History, lines: Sequence[Line], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("time (UTC)", "event", "rule", "outcome", "what happened", "send"):
        table.add_column(column, overflow="fold")
    for line in lines:
        entry = line.entry
        # Text, not markup, and escaped: ids and details come from events.
        cells = (
            format_ts(entry.at),
            entry.event_id or "",
            what(entry.rule, entry.step) if entry.rule else "-",
        )
        table.add_row(
            *(Text(escape_controls(cell)) for cell in cells),
            Text(entry.outcome.value, style=OUTCOME_STYLE.get(entry.outcome, "")),
            Text(escape_controls(line.text)),
            Text(escape_controls(_send_cell(line))),
        )
    return table


def _sends_table(sends: Sequence[SendRecord], history: History) -> Table:
    table = Table(title="sends", title_justify="left")
    for column in ("key", "rule", "state", "due (UTC)", "attempts", "message id", "last error"):
        table.add_column(column, overflow="fold")
    for send in sends:
        delivery = history.deliveries.get(send.key)
        state = send.state.value + (f" · {delivery.event}" if delivery else "")
        cells = (
            send.key,
            what(send.rule_id, send.step),
            state,
            format_ts(send.due_at),
            str(send.attempts),
            send.message_id or "",
            send.last_error or "",
        )
        table.add_row(*(Text(escape_controls(cell)) for cell in cells))
    return table


@app.command("explain")
def explain_command(
    user_id: Annotated[str, typer.Argument(help="The user whose timeline to show.")],
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    rule: Annotated[
        str | None, typer.Option(help="Only this rule's decisions.", show_default=False)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only decisions since: a duration back from now (2d, 1h30m) or an RFC 3339 time.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json lines for scripts.")
    ] = OutputFormat.TABLE,
    limit: Annotated[int, typer.Option(min=1, help="The newest decisions shown.")] = 500,
) -> None:
    """Show why a user did or did not get each email: every decision, its reason, each send.

    Reads the ledger only (SQLite read-only, or a read-only PostgreSQL transaction); safe to
    run beside a running `serve`. Times are UTC.

    Example: trigmail explain u_ana --rule cart-recovery --since 2d
    """
    config = load(config_path, {("ledger",): ledger})
    start = parse_since(since, datetime.now(UTC))
    try:
        history = read_history(config.ledger, user_id, rule=rule, since=start, limit=limit)
    except LedgerError as exc:
        fail(str(exc))
    # The rules are read (a tenth of a second) only to word a full cap.
    if any(entry.reason is Reason.CAP_FULL for entry in history.entries):
        history = replace(history, caps=_caps(config))
    lines = explain(history)
    if output is OutputFormat.JSON:
        out = sys.stdout
        for line in lines:
            out.write(json.dumps(line.to_json(), ensure_ascii=False) + "\n")
        raise typer.Exit(EXIT_OK)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    target = redact_url(config.ledger)
    if not lines:
        console.print(Text(escape_controls(f"no decisions about {user_id} in {target}")))
    else:
        more = f" (the newest {limit}; older ones left out)" if history.truncated else ""
        title = f"{user_id} · {target}{more}"
        console.print(_timeline_table(history, lines, escape_controls(title)))
    sends = sorted(
        (s for s in history.sends.values() if rule is None or s.rule_id == rule),
        key=lambda s: (s.due_at, s.key),
    )
    if sends:
        console.print(_sends_table(sends, history))
    raise typer.Exit(EXIT_OK)
