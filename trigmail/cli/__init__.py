"""The ``trigmail`` command line: the only place rich output and logging handlers are set up."""

from __future__ import annotations

from trigmail.cli import (  # noqa: F401  (each registers itself)
    catalog,
    check,
    explain,
    pause,
    preview,
    ruletest,
    serve,
    simulate,
    status,
    validate,
)
from trigmail.cli.app import app
from trigmail.cli.deadletters import dead_letters_app
from trigmail.cli.ledger import ledger_app

app.add_typer(ledger_app, name="ledger")
app.add_typer(dead_letters_app, name="dead-letters")


def main() -> None:
    """Entry point of the ``trigmail`` console script."""
    app()
