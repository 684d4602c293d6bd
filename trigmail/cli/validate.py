"""`trigmail validate`: placeholder until the rules loader lands."""

from __future__ import annotations

from trigmail.cli.app import app


@app.command()
def validate() -> None:
    """Check rule files."""
