"""`trigmail simulate`: replay events through the real engine on a virtual clock."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from trigmail.cli.app import EXIT_INVALID, EXIT_OK, OutputFormat, app
from trigmail.decisions import LogEntry, Outcome
from trigmail.events import format_ts, parse_ts
from trigmail.logs import escape_controls
from trigmail.rules.loader import load_rules
from trigmail.simulate import Simulation, Summary

_STYLE = {
    Outcome.SCHEDULED: "cyan",
    Outcome.SENT: "green",
    Outcome.CANCELLED: "yellow",
    Outcome.SKIPPED: "dim",
    Outcome.DROPPED: "magenta",
    Outcome.DEAD_LETTER: "red",
    Outcome.FAILED: "red",
    Outcome.IN_DOUBT: "magenta",
}


def _parse_until(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an RFC 3339 time") from None


def _lines(handle: IO[bytes], progress: Progress | None) -> Iterator[bytes]:
    task = None
    if progress is not None:
        size = Path(handle.name).stat().st_size if handle.name != "<stdin>" else None
        task = progress.add_task("simulating", total=size)
    for line in handle:
        if progress is not None and task is not None:
            progress.advance(task, len(line))
        yield line


def _line_parts(entry: LogEntry) -> tuple[str, str, str]:
    """Return one decision's line as (time, outcome, the rest), the outcome padded."""
    what = entry.rule or "-"
    if entry.step:
        what += f" step {entry.step}"
    due = (
        f" due {format_ts(entry.due_at)}"
        if entry.due_at and entry.outcome is Outcome.SCHEDULED
        else ""
    )
    detail = f" ({entry.detail})" if entry.detail else ""
    rest = f"{what:<24} {entry.user_id or '-':<12} {entry.reason.value}{due}{detail}"
    # The user id and the detail come from the event: no terminal escape may pass.
    return format_ts(entry.at), f"{entry.outcome.value:<11}", escape_controls(rest)


def _line_writer(console: Console) -> Callable[[LogEntry], None]:
    """Write decision lines: coloured on a terminal, plain text elsewhere.

    Rich costs ~80 us a line, which made a 100,000-event report take half a minute when piped;
    the text of each line is the same either way. Lines are ``Text``, never markup: a detail
    may hold brackets (``data.items[0]``) that markup would read as tags.
    """
    if not console.is_terminal:

        def plain(entry: LogEntry) -> None:
            at, outcome, rest = _line_parts(entry)
            sys.stdout.write(f"{at}  {outcome} {rest}\n")

        return plain

    def coloured(entry: LogEntry) -> None:
        at, outcome, rest = _line_parts(entry)
        text = Text.assemble(f"{at}  ", (outcome, _STYLE[entry.outcome]), f" {rest}")
        console.print(text, highlight=False, soft_wrap=True)

    return coloured


# A simulation's provider never fails: these outcomes get a column only when they occur.
_SERVE_ONLY = (Outcome.FAILED, Outcome.IN_DOUBT)


def _summary_table(summary: Summary) -> Table:
    outcomes = [o.value for o in Outcome if o not in _SERVE_ONLY or summary.outcomes.get(o)]
    table = Table(title=f"{summary.events} events", title_justify="left")
    table.add_column("rule", no_wrap=True)
    for outcome in outcomes:
        table.add_column(outcome, justify="right")
    for rule, counts in sorted(summary.by_rule.items()):
        table.add_row(rule, *(str(counts.get(o, 0)) for o in outcomes))
    table.add_row("total", *(str(summary.outcomes.get(o, 0)) for o in outcomes), style="bold")
    return table


@app.command()
def simulate(
    events: Annotated[
        Path,
        typer.Argument(
            help="A JSONL file of events, one per line ('-' reads standard input).",
            allow_dash=True,
        ),
    ],
    rules_dir: Annotated[
        list[Path] | None,
        typer.Option("--rules", help="Rule directory (repeatable).", show_default="./rules.d"),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json (one per line).")
    ] = OutputFormat.TABLE,
    until: Annotated[
        str | None,
        typer.Option(
            help="Stop the virtual clock here (RFC 3339): later events are not decided and "
            "later sends stay scheduled. Default: decide every event and fire every send."
        ),
    ] = None,
) -> None:
    """Dry-run events through the same engine as `serve`, on a virtual clock.

    Time is taken from each event's `ts`; every send fires at its virtual due time. Nothing
    is sent and nothing is written: the ledger is in memory, the provider only records.
    Prints what each event scheduled, cancelled or skipped and why, and each email sent.

    Exit 0 when every line was a valid event, 1 when the rules are invalid, the file cannot be
    read, or any line was set aside (each is reported with its line number).

    Example: trigmail simulate events.jsonl --rules rules.d --format json | jq .outcome
    """
    stop_at = _parse_until(until)
    # Bad lines are part of the report itself; the log would only repeat them.
    logging.basicConfig(level=logging.ERROR)
    err = Console(stderr=True)
    loaded = load_rules(*(rules_dir or [Path("rules.d")]))
    if loaded.rules is None:
        for problem in loaded.problems:
            # One problem per line, never wrapped: scripts read `file:line:col: message`.
            err.print(str(problem), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID)
    out = Console()
    # Piped output is read by people too: keep the summary table's headers whole.
    console = Console(highlight=False, width=None if out.is_terminal else 120)
    as_json = output is OutputFormat.JSON

    def emit_json(entry: LogEntry) -> None:
        sys.stdout.write(json.dumps(entry.to_json()) + "\n")

    simulation = Simulation(loaded.rules, emit_json if as_json else _line_writer(console))
    try:
        handle = sys.stdin.buffer if str(events) == "-" else events.open("rb")
    except OSError as exc:
        err.print(f"[red]error:[/red] {escape(f'cannot read {events}: {exc.strerror}')}")
        raise typer.Exit(EXIT_INVALID) from None
    show_progress = not as_json and err.is_terminal and str(events) != "-"
    with (
        handle,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            console=err,
            transient=True,
            disable=not show_progress,
        ) as progress,
    ):
        lines = _lines(handle, progress if show_progress else None)
        summary = simulation.run(
            lines, stop_at, source=events.name if str(events) != "-" else "stdin"
        )
    if not as_json:
        console.print(_summary_table(summary))
    raise typer.Exit(EXIT_INVALID if summary.outcomes[Outcome.DEAD_LETTER] else EXIT_OK)
