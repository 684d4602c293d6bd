"""``trigmail ARGS`` run inside the test process, for tests of what a command prints and how it
exits: an interpreter start costs ~0.35 s of CPU per command, this a few milliseconds.

What a real process is tested for (signals, a running ``serve``, the exit code of a crash, the
console script itself) stays a subprocess: ``serve_harness.run_trigmail`` and ``Serve``.

The run matches a fresh process in what the commands see: the environment is exactly ``env``
(nothing inherited), the working directory is ``cwd``, stdin is empty, and logging starts as
in a new interpreter (no handler on the root logger, level ``WARNING``), so a command's warnings
reach its stderr as they would. An exception a command does not handle fails the test with its
traceback, where a process would have exited 1 printing it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from typer.testing import CliRunner

import trigmail.cli  # noqa: F401  (registers every command on the app)
from trigmail.cli.app import app


@contextmanager
def _fresh_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(level)


@contextmanager
def _working_directory(cwd: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before)


def cli(
    *args: str | Path, cwd: Path, env: Mapping[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``trigmail ARGS`` in ``cwd`` with exactly the environment ``env``; the result reads
    as :func:`subprocess.run`'s (``returncode``, ``stdout``, ``stderr``)."""
    argv = [str(arg) for arg in args]
    environ: dict[str, str | None] = {name: None for name in os.environ}
    environ.update(env)
    with _working_directory(cwd), _fresh_root_logger():
        result = CliRunner().invoke(
            app, argv, input=stdin, env=environ, catch_exceptions=False, prog_name="trigmail"
        )
    return subprocess.CompletedProcess(
        ["trigmail", *argv], result.exit_code, result.stdout, result.stderr
    )


def run_trigmail_here(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`tests.serve_harness.run_trigmail` in this process: the same environment (the
    test's, without trigmail's settings, no colour, wide tables) plus ``env``."""
    from tests.serve_harness import clean_env

    return cli(*args, cwd=cwd, env=clean_env({"NO_COLOR": "1", "COLUMNS": "250", **(env or {})}))
