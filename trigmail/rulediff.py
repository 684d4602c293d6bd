"""What a rule reload changed: files, and rules added, removed or changed, for its log line.

Compiled rules cannot be compared (templates and conditions are compiled objects), so each
rule is fingerprinted from its source: its mapping, re-read from the file, as canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trigmail.rules.loader import rule_files
from trigmail.rules.yamlsource import load_document


@dataclass(frozen=True)
class Fingerprints:
    """A hash per rule file (by path), and each file's rules' hashes (by id)."""

    files: Mapping[str, str] = field(default_factory=dict)
    by_file: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @property
    def rules(self) -> dict[str, str]:
        """A hash per rule id (of an id written twice, the later file's)."""
        return {rule: digest for pairs in self.by_file.values() for rule, digest in pairs}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _rules_of(text: bytes) -> Iterable[tuple[str, str]]:
    try:
        document = load_document(text.decode("utf-8")).data
    # The file was loaded already; a change since is the next reload's business.
    except (UnicodeDecodeError, ValueError):
        return
    rules = document.get("rules") if isinstance(document, dict) else None
    for rule in rules if isinstance(rules, list) else ():
        if isinstance(rule, dict) and isinstance(rule.get("id"), str):
            canonical = json.dumps(rule, sort_keys=True, default=str).encode()
            yield rule["id"], _digest(canonical)


def fingerprint(dirs: Sequence[Path], previous: Fingerprints | None = None) -> Fingerprints:
    """Fingerprint the rule files of ``dirs`` (a file stands for itself).

    A file whose hash is unchanged since ``previous`` is not parsed again: with 1,000 rules,
    parsing them all again took as long as the reload itself.
    """
    files: dict[str, str] = {}
    by_file: dict[str, tuple[tuple[str, str], ...]] = {}
    for directory in dirs:
        paths = rule_files(directory) if directory.is_dir() else [directory]
        for path in paths:
            try:
                text = path.read_bytes()
            except OSError:
                continue
            name, digest = str(path), _digest(text)
            known = previous is not None and previous.files.get(name) == digest
            of_file = previous.by_file[name] if previous and known else tuple(_rules_of(text))
            files[name], by_file[name] = digest, of_file
    return Fingerprints(files, by_file)


@dataclass(frozen=True)
class Changes:
    """What differs between two fingerprints, each list sorted."""

    files: list[str]
    added: list[str]
    removed: list[str]
    changed: list[str]

    def describe(self) -> str:
        """``files=a.yaml,b.yaml added=x removed=- changed=y``: one line for the log."""
        parts: dict[str, Any] = {
            "files": self.files,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
        }
        return " ".join(f"{k}={','.join(v) or '-'}" for k, v in parts.items())


def _changed(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    return sorted(k for k in old.keys() & new.keys() if old[k] != new[k])


def compare(old: Fingerprints, new: Fingerprints) -> Changes:
    files = sorted(old.files.keys() ^ new.files.keys()) + _changed(old.files, new.files)
    old_rules, new_rules = old.rules, new.rules
    return Changes(
        files=sorted(files),
        added=sorted(new_rules.keys() - old_rules.keys()),
        removed=sorted(old_rules.keys() - new_rules.keys()),
        changed=_changed(old_rules, new_rules),
    )
