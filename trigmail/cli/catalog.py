"""`trigmail catalog EVENTS.jsonl`: draft the event catalogue (rules.d/events.yaml) from events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from trigmail.cli.app import EXIT_OK, app
from trigmail.cli.common import err_console, fail
from trigmail.rules.catalog import draft, draft_yaml


@app.command()
def catalog(
    events: Annotated[
        Path,
        typer.Argument(help="Events, one JSON object per line ('-' for standard input)."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the catalogue there (e.g. rules.d/events.yaml) instead of printing it.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --output file.")
    ] = False,
) -> None:
    """Draft the event catalogue from real events: every event name, its fields and their types.

    Check the draft, then keep it as rules.d/events.yaml: `validate` then flags an `on:` name
    no event has ("did you mean order_completed?"), a `when` path or template variable the
    events do not carry, and a text compared with a number.

    Example: trigmail catalog last-week.jsonl -o rules.d/events.yaml
    """
    if output is not None and output.exists() and not force:
        fail(f"{output} exists: check it against the draft, or pass --force to replace it")
    try:
        if str(events) == "-":
            result = draft(sys.stdin.buffer)
        else:
            with events.open("rb") as handle:
                result = draft(handle)
    except OSError as exc:
        fail(f"{events}: cannot read: {exc.strerror or exc}")
    if not result.seen:
        fail(f"{events}: no events found (each line a JSON object with an 'event' name)")
    text = draft_yaml(result, events.name)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            fail(f"{output}: cannot write: {exc.strerror or exc}")
    total = sum(result.seen.values())
    skipped = f"; {result.bad_lines:,} lines skipped (not an event)" if result.bad_lines else ""
    err_console.print(
        f"{len(result.seen)} event names from {total:,} events{skipped}", highlight=False
    )
    raise typer.Exit(EXIT_OK)
