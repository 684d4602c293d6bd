"""`trigmail test`: run the rule tests marketing writes beside the rules (docs/testing.md)."""

from __future__ import annotations

import json
import logging
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from trigmail.cli.app import EXIT_INVALID, EXIT_OK, OutputFormat, app
from trigmail.rules.loader import RULE_FILE_SUFFIXES, load_rules
from trigmail.rules.model import RuleSet
from trigmail.rules.problems import Problem, Severity
from trigmail.ruletests import RuleTest, TestResult, parse_tests, run_test

DEFAULT_TESTS_DIR = Path("rules.d/tests")


def _test_files(paths: list[Path], problems: list[Problem]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix in RULE_FILE_SUFFIXES and not p.name.startswith(".")
                )
            )
        elif path.is_file():
            files.append(path)
        else:
            problems.append(
                Problem(str(path), 1, 1, Severity.ERROR, "", "no such file or directory")
            )
    return files


def _read_tests(files: list[Path], problems: list[Problem]) -> list[RuleTest]:
    tests: list[RuleTest] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), 1, 1, Severity.ERROR, "", f"cannot read: {exc}"))
            continue
        found, bad = parse_tests(text, str(path))
        tests.extend(found)
        problems.extend(bad)
    return tests


def _junit(results: list[TestResult], problems: list[Problem], path: Path) -> None:
    """Write JUnit XML: one testsuite per file, a bad file as a suite with one error."""
    root = ET.Element("testsuites", name="trigmail test")
    by_file: dict[str, list[TestResult]] = {}
    for result in results:
        by_file.setdefault(result.test.file, []).append(result)
    for file, group in by_file.items():
        failed = sum(1 for r in group if not r.passed)
        suite = ET.SubElement(
            root, "testsuite", name=file, tests=str(len(group)), failures=str(failed), errors="0"
        )
        for result in group:
            case = ET.SubElement(suite, "testcase", classname=file, name=result.test.name)
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=result.failures[0].split("\n")[0])
                failure.text = "\n".join(result.failures)
    for problem in problems:
        suite = ET.SubElement(
            root, "testsuite", name=problem.file, tests="1", failures="0", errors="1"
        )
        case = ET.SubElement(suite, "testcase", classname=problem.file, name="test file")
        ET.SubElement(case, "error", message=str(problem)).text = str(problem)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _print(results: list[TestResult], problems: list[Problem], elapsed_s: float) -> None:
    console = Console(highlight=False, soft_wrap=True)
    file = None
    for result in results:
        if result.test.file != file:
            file = result.test.file
            console.print(Text(file, style="bold"))
        mark = (
            Text("  PASS ", style="green") if result.passed else Text("  FAIL ", style="bold red")
        )
        console.print(mark + Text(result.test.name))
        for failure in result.failures:
            for line in failure.split("\n"):
                console.print(Text(f"        {line}"))
    for problem in problems:
        console.print(Text(str(problem), style="red"))
    passed = sum(1 for r in results if r.passed)
    failed = len(results) - passed
    parts = [f"{failed} failed"] if failed else []
    parts.append(f"{passed} passed")
    if problems:
        parts.append(f"{len(problems)} {'error' if len(problems) == 1 else 'errors'} in test files")
    style = "bold red" if failed or problems else "bold green"
    console.print(Text(f"{', '.join(parts)} in {elapsed_s:.2f}s", style=style))


def _as_json(results: list[TestResult], problems: list[Problem]) -> dict[str, Any]:
    return {
        "passed": sum(1 for r in results if r.passed),
        "failed": sum(1 for r in results if not r.passed),
        "tests": [r.to_json() for r in results],
        "problems": [p.to_json() for p in problems],
    }


def _rules(rules_dirs: list[Path] | None) -> RuleSet:
    loaded = load_rules(*(rules_dirs or [Path("rules.d")]))
    if loaded.rules is None:
        console = Console(stderr=True, highlight=False, soft_wrap=True)
        for problem in loaded.problems:
            console.print(Text(str(problem)))
        console.print(Text("the rules are invalid: run `trigmail validate` first"))
        raise typer.Exit(EXIT_INVALID)
    return loaded.rules


@app.command("test")
def run_rule_tests(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Test files or directories.", show_default="./rules.d/tests"),
    ] = None,
    rules_dirs: Annotated[
        list[Path] | None,
        typer.Option("--rules", help="Rule directory (repeatable).", show_default="./rules.d"),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="table for people, json for scripts.")
    ] = OutputFormat.TABLE,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="Also write JUnit XML here (for CI).", show_default=False),
    ] = None,
) -> None:
    """Run rule tests: a timeline of events and the emails expected from it.

    Each test runs on the same engine as `simulate`, on a virtual clock. Exit 0 when every
    test passes, 1 when one fails or a test file is wrong (file:line:col), 2 on usage errors.

    Example: trigmail test rules.d/tests --junit report.xml
    """
    started = time.perf_counter()
    logging.basicConfig(level=logging.ERROR)
    rules = _rules(rules_dirs)
    problems: list[Problem] = []
    files = _test_files(paths or [DEFAULT_TESTS_DIR], problems)
    tests = _read_tests(files, problems)
    results = [run_test(test, rules) for test in tests]
    elapsed_s = time.perf_counter() - started
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(_as_json(results, problems), indent=2))
    else:
        _print(results, problems, elapsed_s)
    if junit is not None:
        _junit(results, problems, junit)
    ok = not problems and all(r.passed for r in results)
    raise typer.Exit(EXIT_OK if ok else EXIT_INVALID)
