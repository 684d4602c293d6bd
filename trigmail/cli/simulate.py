"""`trigmail simulate`: replay events through the real engine on a virtual clock."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
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
from trigmail.cli.common import OUTCOME_STYLE, parse_time_option
from trigmail.cli.compare import print_compare
from trigmail.compare import GIT_PREFIX, CompareError, diff_sends, rules_from_git
from trigmail.decisions import LogEntry, Outcome
from trigmail.events import format_ts
from trigmail.logs import escape_controls
from trigmail.rules.loader import load_rules
from trigmail.rules.model import RuleSet
from trigmail.simulate import Simulation, Summary


class _Position:
    """The line being decided: a dead letter is always set aside while its own line is fed."""

    line = 0


def _lines(handle: IO[bytes], progress: Progress | None, position: _Position) -> Iterator[bytes]:
    task = None
    if progress is not None:
        size = Path(handle.name).stat().st_size if handle.name != "<stdin>" else None
        task = progress.add_task("simulating", total=size)
    for line in handle:
        position.line += 1
        if progress is not None and task is not None:
            progress.advance(task, len(line))
        yield line


def _filter(
    users: list[str] | None, rules: list[str] | None, outcomes: list[Outcome] | None
) -> Callable[[LogEntry], bool]:
    user_set, rule_set, outcome_set = set(users or ()), set(rules or ()), set(outcomes or ())

    def keep(entry: LogEntry) -> bool:
        return (
            (not user_set or entry.user_id in user_set)
            and (not rule_set or entry.rule in rule_set)
            and (not outcome_set or entry.outcome in outcome_set)
        )

    return keep


def _load_or_exit(dirs: list[Path]) -> RuleSet:
    loaded = load_rules(*dirs)
    if loaded.rules is None:
        err = Console(stderr=True)
        for problem in loaded.problems:
            # One problem per line, never wrapped: scripts read `file:line:col: message`.
            err.print(str(problem), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID)
    return loaded.rules


def _open(events: Path) -> IO[bytes]:
    try:
        return sys.stdin.buffer if str(events) == "-" else events.open("rb")
    except OSError as exc:
        err = Console(stderr=True)
        err.print(f"[red]error:[/red] {escape(f'cannot read {events}: {exc.strerror}')}")
        raise typer.Exit(EXIT_INVALID) from None


def _run_file(
    simulation: Simulation,
    events: Path,
    stop_at: datetime | None,
    position: _Position,
    *,
    progress: bool,
) -> Summary:
    err = Console(stderr=True)
    handle = _open(events)
    show_progress = progress and err.is_terminal and str(events) != "-"
    with (
        handle,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            console=err,
            transient=True,
            disable=not show_progress,
        ) as bar,
    ):
        lines = _lines(handle, bar if show_progress else None, position)
        source = events.name if str(events) != "-" else "stdin"
        return simulation.run(lines, stop_at, source=source)


def _summary_json(summary: Summary) -> dict[str, object]:
    return {
        "events": summary.events,
        "outcomes": dict(summary.outcomes),
        "by_rule": {rule: dict(counts) for rule, counts in sorted(summary.by_rule.items())},
    }


def _kept_entries(
    rules: RuleSet,
    lines: list[bytes],
    stop_at: datetime | None,
    keep: Callable[[LogEntry], bool],
    source: str,
) -> list[LogEntry]:
    kept: list[LogEntry] = []

    def collect(entry: LogEntry) -> None:
        if keep(entry):
            kept.append(entry)

    Simulation(rules, collect).run(lines, stop_at, source=source)
    return kept


def _run_compare(
    spec: str,
    new_rules: RuleSet,
    events: Path,
    stop_at: datetime | None,
    keep: Callable[[LogEntry], bool],
    as_json: bool,
) -> int:
    """Run the old and the new rules over the same events; print the difference in sends."""
    with tempfile.TemporaryDirectory(prefix="trigmail-compare-") as tmp:
        if spec.startswith(GIT_PREFIX):
            try:
                old_dir = rules_from_git(spec, Path(tmp))
            except CompareError as exc:
                Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}")
                return EXIT_INVALID
        else:
            old_dir = Path(spec)
        old_rules = _load_or_exit([old_dir])
    with _open(events) as handle:
        lines = list(handle)
    runs = [
        _kept_entries(rules, lines, stop_at, keep, events.name) for rules in (old_rules, new_rules)
    ]
    diffs = diff_sends(runs[0], runs[1])
    if as_json:
        report = {rule: diff.to_json() for rule, diff in diffs.items()}
        sys.stdout.write(json.dumps({"rules": report}) + "\n")
    else:
        print_compare(diffs)
    return EXIT_OK


def _line_parts(entry: LogEntry) -> tuple[str, str, str]:
    """Return one decision's line as (time, outcome, the rest), the outcome padded."""
    what = entry.rule or "-"
    if entry.step:
        what += f" step {entry.step}"
    if entry.variant is not None:
        what += f" [{entry.variant}]"
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
        text = Text.assemble(f"{at}  ", (outcome, OUTCOME_STYLE[entry.outcome]), f" {rest}")
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
    users: Annotated[
        list[str] | None,
        typer.Option(
            "--user", help="Show only this user's decisions (repeatable).", show_default=False
        ),
    ] = None,
    rules: Annotated[
        list[str] | None,
        typer.Option(
            "--rule", help="Show only this rule's decisions (repeatable).", show_default=False
        ),
    ] = None,
    outcomes: Annotated[
        list[Outcome] | None,
        typer.Option("--outcome", help="Show only this outcome (repeatable).", show_default=False),
    ] = None,
    summary_only: Annotated[
        bool, typer.Option("--summary", help="Print only the counts per rule and outcome.")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any line is set aside (dead letter).")
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            help="Also run these older rules over the same events and print how the sends "
            "differ per rule: a directory, or git:REF[:PATH] (PATH defaults to rules.d).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Dry-run events through the same engine as `serve`, on a virtual clock.

    Time is taken from each event's `ts`; every send fires at its virtual due time. Nothing
    is sent and nothing is written: the ledger is in memory, the provider only records.
    Prints what each event scheduled, cancelled or skipped and why, and each email sent.

    Bad lines are reported (with their line number) and the run carries on. Exit 0 when the
    run completed, 1 when the rules are invalid or the file cannot be read, and with
    --strict also when any line was set aside.

    Example: trigmail simulate events.jsonl --rules rules.d --format json | jq .outcome
    """
    stop_at = parse_time_option(until)
    # Bad lines are part of the report itself; the log would only repeat them.
    logging.basicConfig(level=logging.ERROR)
    new_rules = _load_or_exit(rules_dir or [Path("rules.d")])
    as_json = output is OutputFormat.JSON
    keep = _filter(users, rules, outcomes)
    if compare is not None:
        raise typer.Exit(_run_compare(compare, new_rules, events, stop_at, keep, as_json))
    out = Console()
    # Piped output is read by people too: keep the summary table's headers whole.
    console = Console(highlight=False, width=None if out.is_terminal else 120)
    shown = Summary()
    position = _Position()

    def emit_json(entry: LogEntry) -> None:
        obj = entry.to_json()
        if entry.outcome is Outcome.DEAD_LETTER:
            obj["line"] = position.line
        sys.stdout.write(json.dumps(obj) + "\n")

    write = emit_json if as_json else _line_writer(console)

    def on_entry(entry: LogEntry) -> None:
        if keep(entry):
            shown.count(entry)
            if not summary_only:
                write(entry)

    simulation = Simulation(new_rules, on_entry)
    summary = _run_file(simulation, events, stop_at, position, progress=not as_json)
    shown.events = summary.events
    if summary_only and as_json:
        sys.stdout.write(json.dumps(_summary_json(shown)) + "\n")
    elif not as_json:
        console.print(_summary_table(shown))
    dead = summary.outcomes[Outcome.DEAD_LETTER]
    if dead and not strict:
        Console(stderr=True, highlight=False).print(
            f"{dead} {'line was' if dead == 1 else 'lines were'} set aside (dead_letter); "
            "--strict makes that exit 1",
            markup=False,
        )
    raise typer.Exit(EXIT_INVALID if dead and strict else EXIT_OK)
