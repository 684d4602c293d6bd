"""`trigmail pause RULE`, `resume RULE` and `pauses`: stop a rule everywhere at once.

A pause is kept in the ledger, so every worker obeys it within a second, without editing the
rules or reloading (like an Alertmanager silence). A paused rule's due sends are held, or
dropped with reason ``paused`` under ``--drop``; its triggers are still recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trigmail.cli.app import EXIT_OK, OutputFormat, app
from trigmail.cli.common import (
    ConfigOption,
    FormatOption,
    LedgerOption,
    err_console,
    fail,
    load,
    require_ledger,
)
from trigmail.durations import parse_duration
from trigmail.errors import DurationError, LedgerError
from trigmail.events import format_ts, parse_ts
from trigmail.ledger import open_ledger
from trigmail.logs import escape_controls
from trigmail.pauses import Pause, in_force, read_pauses, write_pauses
from trigmail.rules.loader import load_rules


def _until(value: str | None, now: datetime) -> datetime | None:
    """``--until``: an RFC 3339 time, or a duration from now (``2h``)."""
    if value is None:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        pass
    try:
        return now + timedelta(seconds=parse_duration(value))
    except DurationError:
        raise typer.BadParameter(
            f"{value!r} is neither an RFC 3339 time nor a duration (2h, 30m)"
        ) from None


def _change(
    config_path: ConfigOption, ledger: str | None, edit: Callable[[dict[str, Pause]], str]
) -> str:
    """Read the pauses, ``edit`` them and write them back, in one ledger transaction."""
    target = load(config_path, {("ledger",): ledger}).ledger
    require_ledger(target)
    try:
        opened = open_ledger(target)
        try:
            with opened.transaction() as txn:
                pauses = read_pauses(txn)
                said = edit(pauses)
                write_pauses(txn, pauses)
        finally:
            opened.close()
    except LedgerError as exc:
        fail(str(exc))
    return said


def _warn_unknown(config_path: ConfigOption, rule: str) -> None:
    rules = load_rules(*load(config_path).rules_dirs).rules
    if rules is not None and rules.get(rule) is None:
        err_console.print(
            Text(f"warning: no rule {escape_controls(rule)!r} in the rules in force here"),
            soft_wrap=True,
        )


@app.command()
def pause(
    rule: Annotated[str, typer.Argument(help="The rule id to pause.")],
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    until: Annotated[
        str | None, typer.Option(help="Resume by itself then: an RFC 3339 time or a duration (2h).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for status, logs and colleagues.")] = "",
    drop: Annotated[
        bool, typer.Option("--drop", help="Drop its due sends (reason paused) instead of holding.")
    ] = False,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Pause a rule on every worker within a second: its due sends are held (or dropped with
    --drop), its triggers still recorded. Undo with `trigmail resume RULE`.

    Example: trigmail pause cart-recovery --reason "cart template broken" --until 2h
    """
    now = datetime.now(UTC)
    paused = Pause(rule, now, _until(until, now), reason, drop)
    _warn_unknown(config_path, rule)

    def edit(pauses: dict[str, Pause]) -> str:
        said = "replaced" if rule in pauses else "set"
        pauses[rule] = paused
        return said

    _change(config_path, ledger, edit)
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(paused.to_json()))
        raise typer.Exit(EXIT_OK)
    when = "until resumed" if paused.until is None else f"until {format_ts(paused.until)}"
    held = "dropped" if drop else "held"
    typer.echo(escape_controls(f"paused {rule} {when}; its due sends are {held}"))
    raise typer.Exit(EXIT_OK)


@app.command()
def resume(
    rule: Annotated[str, typer.Argument(help="The rule id to resume.")],
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Lift a rule's pause: its held sends go out within seconds."""

    def edit(pauses: dict[str, Pause]) -> str:
        return "resumed" if pauses.pop(rule, None) is not None else "was not paused"

    said = _change(config_path, ledger, edit)
    if output is OutputFormat.JSON:
        typer.echo(json.dumps({"rule": rule, "resumed": said == "resumed"}))
    else:
        typer.echo(escape_controls(f"{rule}: {said}"))
    raise typer.Exit(EXIT_OK)


@app.command("pauses")
def list_pauses(
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """List the rules paused now."""
    target = load(config_path, {("ledger",): ledger}).ledger
    require_ledger(target)
    try:
        opened = open_ledger(target)
        try:
            with opened.transaction() as txn:
                current = in_force(read_pauses(txn), datetime.now(UTC))
        finally:
            opened.close()
    except LedgerError as exc:
        fail(str(exc))
    if output is OutputFormat.JSON:
        typer.echo(json.dumps([p.to_json() for p in current.values()], indent=2))
        raise typer.Exit(EXIT_OK)
    table = Table(title=f"paused rules: {len(current)}", title_justify="left")
    for column in ("rule", "since", "until", "due sends", "reason"):
        table.add_column(column, overflow="fold")
    for p in current.values():
        until = "resumed" if p.until is None else format_ts(p.until)
        cells = (p.rule, format_ts(p.at), until, "dropped" if p.drop else "held", p.reason)
        table.add_row(*(Text(escape_controls(cell)) for cell in cells))
    Console(highlight=False, width=140).print(table)
    raise typer.Exit(EXIT_OK)
