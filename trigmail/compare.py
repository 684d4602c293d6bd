"""``simulate --compare``: the sends of two rule sets over the same events, and how they differ.

A send is the same send in both runs when it has the same rule, step, user and triggering
event; its key may differ (a changed ``dedupe``). Pure apart from :func:`rules_from_git`, which
reads an older rules directory out of git.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trigmail.decisions import LogEntry, Outcome
from trigmail.errors import TrigmailError
from trigmail.events import format_ts

# How many examples of each kind of difference a rule shows.
SAMPLES = 3
GIT_PREFIX = "git:"
DEFAULT_GIT_RULES_PATH = "rules.d"

_Identity = tuple[str, int, str, str]


class CompareError(TrigmailError):
    """Raised when the older rules to compare with cannot be read (a bad git ref or path)."""


@dataclass
class RuleDiff:
    """How one rule's sends changed: each list holds (user, step, event, old at, new at)."""

    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.moved)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "removed": len(self.removed),
            "moved": len(self.moved),
            "unchanged": self.unchanged,
            "samples": {
                "added": self.added[:SAMPLES],
                "removed": self.removed[:SAMPLES],
                "moved": self.moved[:SAMPLES],
            },
        }


def _identity(entry: LogEntry) -> _Identity:
    return (entry.rule or "", entry.step or 0, entry.user_id or "", entry.event_id or "")


def _sends(entries: Iterable[LogEntry]) -> dict[_Identity, list[LogEntry]]:
    found: dict[_Identity, list[LogEntry]] = defaultdict(list)
    for entry in entries:
        if entry.outcome is Outcome.SENT:
            found[_identity(entry)].append(entry)
    return found


def _sample(entry: LogEntry, old: LogEntry | None, new: LogEntry | None) -> dict[str, Any]:
    return {
        "user_id": entry.user_id,
        "step": entry.step,
        "event_id": entry.event_id,
        "old_at": None if old is None else format_ts(old.at),
        "new_at": None if new is None else format_ts(new.at),
    }


def diff_sends(old: Iterable[LogEntry], new: Iterable[LogEntry]) -> dict[str, RuleDiff]:
    """Return, per rule, the sends only the new rules make, only the old ones, or at a new time."""
    old_sends, new_sends = _sends(old), _sends(new)
    diffs: dict[str, RuleDiff] = defaultdict(RuleDiff)
    for identity in sorted(old_sends.keys() | new_sends.keys()):
        before, after = old_sends.get(identity, []), new_sends.get(identity, [])
        diff = diffs[identity[0]]
        for was, now in zip(before, after, strict=False):
            if was.at == now.at:
                diff.unchanged += 1
            else:
                diff.moved.append(_sample(now, was, now))
        for was in before[len(after) :]:
            diff.removed.append(_sample(was, was, None))
        for now in after[len(before) :]:
            diff.added.append(_sample(now, None, now))
    return dict(sorted(diffs.items()))


def rules_from_git(spec: str, into: Path, repo: Path = Path()) -> Path:
    """Extract the rules directory named by ``git:REF[:PATH]`` into ``into``; return its path.

    ``PATH`` is relative to the repository's top and defaults to ``rules.d``.

    Raises:
        CompareError: git fails (not a repository, an unknown ref, no such path).
    """
    ref, _, path = spec.removeprefix(GIT_PREFIX).partition(":")
    path = path.strip("/") or DEFAULT_GIT_RULES_PATH
    if not ref:
        raise CompareError(f"{spec!r}: name a git ref, as in git:main or git:HEAD~1:rules.d")
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", f"{ref}:{path}"],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompareError(f"cannot run git: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()
        raise CompareError(f"cannot read {path} at {ref} from git: {detail}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into
