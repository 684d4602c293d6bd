"""One rule file's way through the per-file stages, and the files a reload can reuse.

YAML (syntax, duplicate keys), the JSON Schema (structure), then semantic checks and
compilation (``rules.build``). What comes out depends on the file's name and text alone, which
is what lets :class:`CompiledFiles` hand a reload the files that did not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trigmail.rules.build import build_cap, build_rule
from trigmail.rules.everyproblem import every_problem, misindented
from trigmail.rules.model import Cap, Location, Rule
from trigmail.rules.problems import Finding, Problem, Severity, format_path
from trigmail.rules.schema import check_structure, kind
from trigmail.rules.yamlsource import Path, YamlDocument, load_document


@dataclass
class RuleFile:
    """One file's way through the stages."""

    name: str
    text: str
    document: YamlDocument | None = None
    rules: list[tuple[int, Rule]] = field(default_factory=list)
    caps: list[tuple[int, Cap]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rules_written: int = 0

    def place(self, finding: Finding) -> Problem:
        mark = self.document.position(finding.path, key=finding.at_key) if self.document else None
        line, col = (mark.line, mark.col) if mark else (1, 1)
        path = format_path(finding.path)
        return Problem(self.name, line, col, finding.severity, path, finding.message)

    def add(self, findings: Iterable[Finding]) -> None:
        self.problems.extend(self.place(finding) for finding in findings)

    def location(self, path: Path) -> Location:
        assert self.document is not None
        mark = self.document.position(path)
        return Location(self.name, mark.line, mark.col)


def _check_document(source: RuleFile) -> Any:
    """Return the document's data when it can go on to the schema, else ``None``."""
    document = source.document = load_document(source.text)
    source.problems.extend(
        Problem(
            source.name,
            issue.mark.line,
            issue.mark.col,
            Severity.ERROR,
            format_path(issue.path),
            issue.message,
        )
        for issue in document.issues
    )
    data = document.data
    if (data is None and not document.issues) or data == {}:
        source.add([Finding((), "the file is empty: it needs a 'rules:' list or a 'caps:' list")])
        return None
    if data is not None and not isinstance(data, dict):
        message = f"a rule file is a mapping with 'rules:' and/or 'caps:', not {kind(data)}"
        source.add([Finding((), message)])
        return None
    return data


def compile_file(source: RuleFile) -> None:
    data = _check_document(source)
    if data is None:
        return
    if isinstance(data.get("rules"), list):
        source.rules_written = len(data["rules"])
    structural = check_structure(data)
    source.add(misindented(data, structural) if structural else structural)
    # A rule or cap the schema rejected would only repeat its problems in other words.
    rejected = {finding.path[:2] for finding in structural}
    for section, build in (("rules", build_rule), ("caps", build_cap)):
        items = data.get(section)
        if not isinstance(items, list) or (section,) in rejected:
            continue
        for index, spec in enumerate(items):
            base: Path = (section, index)
            if base in rejected:
                continue
            built, findings = build(spec, base, source.location((*base, "id")))
            source.add(every_problem(spec, base, findings) if findings else findings)
            if isinstance(built, Rule):
                source.rules.append((index, built))
            elif isinstance(built, Cap):
                source.caps.append((index, built))


class CompiledFiles:
    """The files compiled by the last load, by name and text, for the next load to reuse.

    A file's compilation (YAML, schema, semantic checks, compiled rules) depends on its name
    and text alone, so a reload compiles only the files that changed; the checks across files
    (ids, events, lint) still run on the whole set. With 1,000 rules in 100 files, compiling
    them all took most of a reload. Only the last load's files are kept.
    """

    def __init__(self) -> None:
        self._files: dict[tuple[str, str], RuleFile] = {}

    def compile(self, sources: Sequence[RuleFile]) -> list[RuleFile]:
        """Return ``sources`` compiled, each one reused from the last load if it was there."""
        files: dict[tuple[str, str], RuleFile] = {}
        compiled = []
        for source in sources:
            key = (source.name, source.text)
            # A file listed twice (a directory given twice) is compiled twice, as before.
            known = None if key in files else self._files.get(key)
            if known is None:
                compile_file(source)
                known = source
            files[key] = known
            compiled.append(known)
        # One assignment: a load in another thread sees the old files or the new ones.
        self._files = files
        return compiled
