"""`trigmail dead-letters list|show|replay`: the events set aside, and putting them back.

The ledger holds every dead letter (the spool's file and the stream's ``:dead`` are copies).
A replay delivers the event again through the source; a running serve decides it under the
rules in force now, and keys are kept, so nothing is sent twice (trigmail/deadletters.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trigmail.cli.app import EXIT_INVALID, EXIT_OK, OutputFormat
from trigmail.cli.common import (
    ConfigOption,
    FormatOption,
    LedgerOption,
    fail,
    load,
    parse_time_option,
    require_ledger,
)
from trigmail.deadletters import Letter, dry_run_lines, read_letters, replay, select
from trigmail.decisions import LogEntry
from trigmail.errors import LedgerError
from trigmail.events import format_ts
from trigmail.ledger import open_ledger
from trigmail.ledger.base import Ledger
from trigmail.logs import escape_controls
from trigmail.rules.loader import load_rules

dead_letters_app = typer.Typer(
    name="dead-letters",
    help="List, show and replay the events set aside (dead letters), from the ledger.",
    no_args_is_help=True,
)

ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Only letters set aside for this reason.")
]
SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="Only letters set aside at or after this RFC 3339 time."),
]


def _letters(ledger: Ledger) -> list[Letter]:
    try:
        return read_letters(ledger)
    except LedgerError as exc:
        fail(str(exc))


def _open(target: str) -> Ledger:
    require_ledger(target)
    try:
        return open_ledger(target)
    except LedgerError as exc:
        fail(str(exc))


def _table(letters: list[Letter]) -> Table:
    table = Table(title=f"dead letters: {len(letters)}", title_justify="left")
    table.add_column("id", no_wrap=True)
    for column in ("at", "reason", "ref", "detail"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        d = letter.letter
        cells = (letter.id, format_ts(d.at), d.reason, d.position, d.detail)
        table.add_row(*(Text(escape_controls(cell)) for cell in cells))
    return table


@dead_letters_app.command("list")
def list_letters(
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    output: FormatOption = OutputFormat.TABLE,
    limit: Annotated[int, typer.Option(min=0, help="Letters listed at most, newest first.")] = 100,
) -> None:
    """List dead letters, newest first: id, time, reason, where it was read, why."""
    config = load(config_path, {("ledger",): ledger})
    opened = _open(config.ledger)
    try:
        letters = select(_letters(opened), reason=reason, since=parse_time_option(since))[:limit]
    finally:
        opened.close()
    if output is OutputFormat.JSON:
        typer.echo(json.dumps([letter.to_json() for letter in letters], indent=2))
    else:
        Console(highlight=False, width=160).print(_table(letters))
    raise typer.Exit(EXIT_OK)


@dead_letters_app.command()
def show(
    letter_id: Annotated[str, typer.Argument(metavar="ID", help="A letter's id (or its start).")],
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Show one dead letter with its raw event."""
    config = load(config_path, {("ledger",): ledger})
    opened = _open(config.ledger)
    try:
        found = select(_letters(opened), ids=[letter_id])
    finally:
        opened.close()
    if len(found) != 1:
        fail(f"{len(found)} dead letters have an id starting with {letter_id!r}")
    obj = found[0].to_json(raw=True)
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(obj, indent=2))
    else:
        for name, value in obj.items():
            typer.echo(f"{name}: {escape_controls(str(value))}")
    raise typer.Exit(EXIT_OK)


def _dry_run(letters: list[Letter], rules_dirs: Sequence[Path], fmt: OutputFormat) -> None:
    """What the rules in force would decide for the letters' events, as ``simulate`` does."""
    from trigmail.simulate import Simulation

    result = load_rules(*rules_dirs)
    if result.rules is None:
        fail(f"the rules are invalid ({result.errors} errors; trigmail validate lists them)")
    entries: list[LogEntry] = []
    Simulation(result.rules, entries.append).run(dry_run_lines(letters), source="dead-letters")
    for entry in entries:
        if fmt == OutputFormat.JSON:
            typer.echo(json.dumps(entry.to_json()))
        else:
            rule = entry.rule or "-"
            typer.echo(
                escape_controls(
                    f"{format_ts(entry.at)} {entry.user_id or '-'} {rule} "
                    f"{entry.outcome.value} {entry.reason.value} {entry.key or ''}".rstrip()
                )
            )


@dead_letters_app.command("replay")
def replay_letters(
    letter_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="Letters to replay.")
    ] = None,
    config_path: ConfigOption = None,
    ledger: LedgerOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Only show what the rules in force would do (simulate); no replay."
        ),
    ] = False,
    output: FormatOption = OutputFormat.TABLE,
) -> None:
    """Put dead-lettered events back through the pipeline, once the cause is fixed.

    Each event is delivered again through the source (a line appended to the spool, an entry
    added to the stream) and a running serve decides it under the rules in force now. An event
    that was already decided once is allowed one more decision; the keys are kept, so what it
    already sent is never sent twice. Give ids, or --reason and/or --since.

    Example: trigmail dead-letters replay --reason template_error --since 2026-03-02T09:00:00Z
    """
    if not letter_ids and reason is None and since is None:
        raise typer.BadParameter("give letter ids, --reason or --since")
    config = load(config_path, {("ledger",): ledger})
    opened = _open(config.ledger)
    try:
        chosen = select(
            _letters(opened), ids=letter_ids or (), reason=reason, since=parse_time_option(since)
        )
        if not chosen:
            fail("no dead letter matches")
        if dry_run:
            _dry_run(chosen, config.rules_dirs, output)
            raise typer.Exit(EXIT_OK)
        try:
            results = replay(config, opened, chosen, datetime.now(UTC))
        except (LedgerError, OSError) as exc:
            fail(f"replay failed: {exc}")
    finally:
        opened.close()
    if output is OutputFormat.JSON:
        typer.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            verdict = f"replayed event {r.event_id}" if r.problem is None else r.problem
            typer.echo(escape_controls(f"{r.letter.id}: {verdict}"))
    failed = sum(1 for r in results if r.problem is not None)
    raise typer.Exit(EXIT_OK if not failed else EXIT_INVALID)
