"""Rule files in, an immutable compiled :class:`RuleSet` (or every problem found) out.

Each file goes through the same stages: YAML (syntax, duplicate keys), the JSON Schema
(structure), semantic checks and compilation (``rules.build``); then the files are checked
together (rule and cap ids unique across files) and linted. ``validate`` and the daemon's
(re)load share this code, so what validates is exactly what runs.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Final

from trigmail.errors import RulesError, UnreadableFileError
from trigmail.rules.catalog import CATALOGUE_FILE, Catalog, EventType, parse_catalog
from trigmail.rules.eventcheck import check_rule, likely_typos
from trigmail.rules.files import outside, read_text
from trigmail.rules.lint import Code, lint
from trigmail.rules.model import Location, Rule, RuleSet
from trigmail.rules.problems import Finding, Problem, Severity
from trigmail.rules.quoting import quote
from trigmail.rules.rulefile import CompiledFiles, RuleFile
from trigmail.rules.yamlsource import Path

__all__ = [
    "DEFAULT_RETENTION_S",
    "CompiledFiles",
    "ParseResult",
    "Problem",
    "Severity",
    "load_rule_set",
    "load_rules",
    "parse_rules",
    "rule_files",
]

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_S: Final = 90 * 86_400
RULE_FILE_SUFFIXES: Final = (".yaml", ".yml")


@dataclass(frozen=True)
class ParseResult:
    """The outcome of loading rules: a rule set when there is no error, and every problem.

    ``rules`` is ``None`` whenever any problem is an error; warnings never stop a load.
    """

    rules: RuleSet | None
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    rules_written: int = 0

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity is Severity.WARNING)

    def rule_set(self) -> RuleSet:
        """Return the rule set, for callers that want an exception rather than a result.

        Raises:
            RulesError: carrying every problem, when there is an error.
        """
        if self.rules is None:
            raise RulesError(list(self.problems))
        return self.rules


def _duplicates(sources: Sequence[RuleFile], section: str) -> list[Problem]:
    """Report each id used twice, at the second use, naming the first."""
    first: dict[str, Location] = {}
    problems = []
    for source in sources:
        items = source.rules if section == "rules" else source.caps
        for index, item in items:
            assert item.location is not None
            if item.id in first:
                finding = Finding(
                    (section, index, "id"),
                    f"{section[:-1]} id {quote(item.id)} is already used at {first[item.id]}",
                )
                problems.append(source.place(finding))
            else:
                first[item.id] = item.location
    return problems


def _lint(sources: Sequence[RuleFile], retention_s: int) -> list[Problem]:
    # By identity: with a duplicate id (an error of its own) each rule still has one home.
    owners = {id(rule): (source, index) for source in sources for index, rule in source.rules}
    rules = [rule for source in sources for _, rule in source.rules]
    caps = [cap for source in sources for _, cap in source.caps]
    problems = []
    for found in lint(rules, caps, retention_s):
        source, index = owners[id(found.rule)]
        if found.code in _acknowledged(source, index):
            continue
        message = f"{found.message} (if intended, add acknowledge: [{found.code}] to the rule)"
        finding = Finding(("rules", index, *found.path), message, Severity.WARNING)
        problems.append(source.place(finding))
    for source in sources:
        for index, _ in source.rules:
            problems.extend(source.place(f) for f in _unknown_acknowledged(source, index))
    return problems


def _acknowledge_list(source: RuleFile, index: int) -> list[Any]:
    data = None if source.document is None else source.document.data
    rules = data.get("rules") if isinstance(data, dict) else None
    spec = rules[index] if isinstance(rules, list) and index < len(rules) else None
    listed = spec.get("acknowledge") if isinstance(spec, dict) else None
    return listed if isinstance(listed, list) else []


def _acknowledged(source: RuleFile, index: int) -> frozenset[str]:
    """The warnings a rule accepts on purpose (``acknowledge: [self_cancel]``)."""
    return frozenset(name for name in _acknowledge_list(source, index) if isinstance(name, str))


def _unknown_acknowledged(source: RuleFile, index: int) -> list[Finding]:
    known = [code.value for code in Code]
    findings = []
    for position, name in enumerate(_acknowledge_list(source, index)):
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        message = f"no warning is called {quote(name)} ({hint})"
        findings.append(Finding(("rules", index, "acknowledge", position), message))
    return findings


def _version(sources: Sequence[RuleFile]) -> str:
    # File names without directories: the same rules copied elsewhere keep their version.
    digest = hashlib.sha256()
    for name, text in sorted((FsPath(s.name).name, s.text) for s in sources):
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:16]


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, if it runs, for the duration of a load.

    A load allocates hundreds of thousands of long-lived objects (documents, compiled rules)
    and no reference cycles; every 25% of heap growth the collector walks the whole heap, which
    measured about half of the time of loading 500 files. Reference counting still frees
    everything meanwhile. Only an enabled collector is re-enabled, so an application that
    disabled it keeps it off; a load in another thread at the same time at worst re-enables it
    early, which only costs time. What the load allocated is handed to the oldest generation
    (freeze, then unfreeze) rather than left in the youngest, whose first collection after the
    pause would walk all of it at once (about a tenth of loading 500 files).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        gc.unfreeze()


def _assemble(
    sources: Sequence[RuleFile],
    retention_s: int,
    extra: list[Problem],
    catalog: Catalog | None = None,
    compiled: CompiledFiles | None = None,
) -> ParseResult:
    with _cyclic_gc_paused():
        sources = (compiled or CompiledFiles()).compile(sources)
        return _assemble_paused(sources, retention_s, extra, catalog)


def _assemble_paused(
    sources: Sequence[RuleFile], retention_s: int, extra: list[Problem], catalog: Catalog | None
) -> ParseResult:
    problems = [*extra, *(p for source in sources for p in source.problems)]
    problems += _event_problems(sources, catalog)
    problems += _duplicates(sources, "rules") + _duplicates(sources, "caps")
    problems += _lint(sources, retention_s)
    problems.sort(key=lambda p: (p.file, p.line, p.col))
    rule_set = None
    if not any(p.severity is Severity.ERROR for p in problems):
        rule_set = RuleSet(
            rules=tuple(rule for s in sources for _, rule in s.rules),
            caps=tuple(cap for s in sources for _, cap in s.caps),
            version=_version(sources),
        )
    written = sum(source.rules_written for source in sources)
    return ParseResult(rule_set, problems, len(sources), written)


def _catalogue(dirs: Sequence[FsPath], problems: list[Problem]) -> Catalog | None:
    """The event catalogue of the rule directories (``events.yaml``), if any has one."""
    events: dict[str, EventType] = {}
    found = False
    for directory in dirs:
        path = directory / CATALOGUE_FILE
        if not (directory.is_dir() and path.is_file()):
            continue
        found = True
        try:
            text = read_text(path.resolve(), follow=False)
        except (UnreadableFileError, OSError, RuntimeError) as exc:
            problems.append(_error(path, str(exc)))
            continue
        catalog, document, findings = parse_catalog(text)
        problems.extend(RuleFile(str(path), text, document).place(f) for f in findings)
        events.update(catalog.events)
    return Catalog(events) if found else None


def _event_problems(sources: Sequence[RuleFile], catalog: Catalog | None) -> list[Problem]:
    """The rules, checked against the events they read (trigmail.rules.eventcheck)."""
    specs: list[tuple[RuleFile, int, Any]] = []
    for source in sources:
        data = None if source.document is None else source.document.data
        written = data.get("rules") if isinstance(data, dict) else None
        if isinstance(written, list):
            # Rules that did not build too: every problem of a file in one run.
            specs.extend((source, index, spec) for index, spec in enumerate(written))
    typos = likely_typos([spec for _, _, spec in specs])
    built = {(id(source), index): rule for source in sources for index, rule in source.rules}
    problems: list[Problem] = []
    for source, index, spec in specs:
        rule = built.get((id(source), index))
        fields = {} if rule is None else _fields_read(rule)
        findings = check_rule(spec, ("rules", index), catalog, typos, fields)
        problems.extend(source.place(finding) for finding in findings)
    return problems


def _fields_read(rule: Rule) -> dict[Path, tuple[str, ...]]:
    """The event paths each ``send`` of a rule reads, by where the ``send`` is written."""
    found: dict[Path, tuple[str, ...]] = {}
    for step in rule.steps:
        where: Path = ("send",) if step.number == 0 else ("steps", step.number - 1, "send")
        # Compiled data (trigmail.rules.templating.CompiledData) says which fields it reads.
        found[where] = tuple(getattr(step.send.data, "fields", ()))
    return found


def parse_rules(
    text: str, filename: str = "<string>", retention_s: int = DEFAULT_RETENTION_S
) -> ParseResult:
    """Check and compile the rules of one file's text; pure (no I/O).

    Args:
        text: the YAML text.
        filename: the name problems are reported under.
        retention_s: how long the ledger keeps sends (a longer cooldown is warned about).
    """
    return _assemble([RuleFile(filename, text)], retention_s, [])


def rule_files(directory: FsPath) -> list[FsPath]:
    """Return the rule files of ``directory`` in name order.

    Editor swap files, links leading out of ``directory`` and anything but regular files are
    left out (:func:`load_rules` warns about the last two).
    """
    return _scan(directory, [])


def _scan(directory: FsPath, problems: list[Problem]) -> list[FsPath]:
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        problems.append(_error(directory, f"cannot list: {exc.strerror or exc}"))
        return []
    found = []
    for path in entries:
        if path.suffix not in RULE_FILE_SUFFIXES or path.name.startswith("."):
            continue
        if path.name == CATALOGUE_FILE:
            continue  # the event catalogue, read by _catalogue
        refused = outside(path, directory)
        if refused is not None:
            # The link is named, never where it leads nor what is there.
            problems.append(Problem(str(path), 1, 1, Severity.WARNING, "", refused))
        elif path.is_file():
            found.append(path)
        elif path.exists() and not path.is_dir():
            message = "not a regular file (a FIFO, socket or device): ignored"
            problems.append(Problem(str(path), 1, 1, Severity.WARNING, "", message))
    return found


def _error(path: FsPath, message: str) -> Problem:
    return Problem(str(path), 1, 1, Severity.ERROR, "", message)


def _read(path: FsPath, sources: list[RuleFile], problems: list[Problem], *, inside: bool) -> None:
    try:
        # Inside a rule directory the link was checked: open where it led, refusing a link
        # put in its place since.
        text = read_text(path.resolve(), follow=False) if inside else read_text(path)
    except (UnreadableFileError, OSError, RuntimeError) as exc:
        problems.append(_error(path, str(exc)))
        return
    sources.append(RuleFile(str(path), text))


def load_rules(
    *dirs: FsPath,
    retention_s: int = DEFAULT_RETENTION_S,
    compiled: CompiledFiles | None = None,
) -> ParseResult:
    """Check and compile every ``*.yaml``/``*.yml`` file of ``dirs`` as one rule set.

    Args:
        dirs: the rule directories (a file is accepted too, as itself).
        retention_s: how long the ledger keeps sends (a longer cooldown is warned about).
        compiled: the files an earlier load compiled, reused where unchanged (a reload).
    """
    sources: list[RuleFile] = []
    problems: list[Problem] = []
    for directory in dirs:
        if directory.is_dir():
            for path in _scan(directory, problems):
                _read(path, sources, problems, inside=True)
        elif directory.exists():
            _read(directory, sources, problems, inside=False)
        else:
            problems.append(_error(directory, "no such directory"))
    catalog = _catalogue(dirs, problems)
    result = _assemble(sources, retention_s, problems, catalog, compiled)
    logger.debug(
        "rules: %d files, %d rules, %d problems",
        result.files,
        result.rules_written,
        len(result.problems),
    )
    return result


def load_rule_set(*dirs: FsPath, retention_s: int = DEFAULT_RETENTION_S) -> RuleSet:
    """Load as :func:`load_rules`, returning the rule set.

    Raises:
        RulesError: carrying every problem, when any is an error.
    """
    return load_rules(*dirs, retention_s=retention_s).rule_set()
