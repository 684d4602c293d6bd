"""The rule set in force, and how it changes: a valid reload swaps it atomically, an invalid
one is logged with every problem and the last good rule set stays (Alertmanager's coordinator).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import watchfiles

from trigmail.metrics import Metrics
from trigmail.rulediff import Fingerprints, compare, fingerprint
from trigmail.rules.loader import CompiledFiles, ParseResult, Problem, Severity, load_rules
from trigmail.rules.model import RuleSet
from trigmail.rules.quoting import cut

log = logging.getLogger(__name__)

# A reload logs its problems; a file with thousands (one per duplicate key) must not flood the
# journal on every save.
MAX_LOGGED_PROBLEMS: Final = 50

# The watch wakes this often with no change: its first wake-up says it is in place, which
# serve waits for (at most WATCH_START_S) before it says it is ready.
WATCH_TICK_MS: Final = 50
WATCH_START_S: Final = 5.0


class RuleStore:
    """Holds the current :class:`RuleSet`; calling the store returns it.

    Args:
        dirs: the rule directories.
        retention_s: the ledger's retention (a longer cooldown is warned about).
        metrics: where reload results are counted.
    """

    def __init__(
        self, dirs: Sequence[Path], retention_s: int, metrics: Metrics | None = None
    ) -> None:
        self.dirs = tuple(dirs)
        self.retention_s = retention_s
        self.metrics = metrics
        self._current = RuleSet()
        self._lock = threading.Lock()
        self._fingerprints = Fingerprints()
        self._compiled = CompiledFiles()
        # The versions whose warnings were logged, and the errors of the last rejected reload:
        # each logged once, not on every reload.
        self._warned: set[tuple[str, str]] = set()
        self._rejected: tuple[str, ...] = ()

    def __call__(self) -> RuleSet:
        # One attribute read: a reader sees the old set or the new one, never a mix.
        return self._current

    def load(self) -> ParseResult:
        """Load the rules; the result says whether they replaced the current set.

        Never raises: whatever goes wrong while loading (a bug included) is a rejected load,
        reported as one problem, and the current rules stay in force.
        """
        try:
            result = load_rules(*self.dirs, retention_s=self.retention_s, compiled=self._compiled)
        # A rule file is input: no file, however odd, may stop the daemon (docs/security.md).
        except Exception as exc:
            log.debug("rules: load failed", exc_info=True)
            where = str(self.dirs[0]) if self.dirs else "rules"
            message = f"cannot load the rules: {type(exc).__name__}: {cut(str(exc))}"
            result = ParseResult(None, [Problem(where, 1, 1, Severity.ERROR, "", message)])
        with self._lock:
            if result.rules is not None:
                self._current = result.rules
        return result

    def start(self) -> ParseResult:
        """The first load, at serve's start: its warnings are logged (once for this version)."""
        result = self.load()
        if result.rules is not None:
            self._fingerprints = fingerprint(self.dirs)
            self._log_warnings(result)
        return result

    def changed_since_load(self) -> bool:
        """Whether a rule file was added, removed or changed since the last load took the
        set in force."""
        return fingerprint(self.dirs, self._fingerprints).files != self._fingerprints.files

    def reload(self) -> bool:
        """Reload from disk; on any error keep the current rules. Returns whether it swapped.

        A rejected reload logs its errors at error level once: the same rejected files saved
        again (or seen again by the watcher) are not logged again. A swap logs what changed;
        warnings are logged once per rule-set version.
        """
        old = self._current.version
        result = self.load()
        ok = result.rules is not None
        # The metric first: whoever reads the log line then finds the metric agreeing.
        if self.metrics is not None:
            self.metrics.record_reload(ok, time.time())
        if ok:
            self._rejected = ()
            self._log_swap(old, result)
        else:
            self._log_rejection(old, result)
        return ok

    def _log_swap(self, old: str, result: ParseResult) -> None:
        new = fingerprint(self.dirs, self._fingerprints)
        changes = compare(self._fingerprints, new)
        self._fingerprints = new
        log.info(
            "rules: version %s in force (%d rules, was %s): %s",
            self._current.version,
            len(self._current.rules),
            old,
            changes.describe(),
        )
        self._log_warnings(result)

    def _log_warnings(self, result: ParseResult) -> None:
        # Once per rule-set version: an unchanged reload repeats none, a new version lists
        # them all, and a warning about a file the version does not include (a link refused)
        # is new text under the same version.
        version = self._current.version
        warnings = [
            text
            for p in result.problems
            if p.severity is Severity.WARNING and (version, text := str(p)) not in self._warned
        ]
        self._warned.update((version, text) for text in warnings)
        for text in warnings[:MAX_LOGGED_PROBLEMS]:
            log.warning("rules: %s", text)
        if len(warnings) > MAX_LOGGED_PROBLEMS:
            more = len(warnings) - MAX_LOGGED_PROBLEMS
            log.warning("rules: and %d more warnings (trigmail validate lists them all)", more)

    def _log_rejection(self, old: str, result: ParseResult) -> None:
        errors = tuple(str(p) for p in result.problems if p.severity is Severity.ERROR)
        if errors == self._rejected:
            log.error(
                "rules: reload rejected (%d errors, the same as logged before); version %s stays",
                len(errors),
                old,
            )
            return
        self._rejected = errors
        for problem in errors[:MAX_LOGGED_PROBLEMS]:
            log.error("rules: %s", problem)
        if len(errors) > MAX_LOGGED_PROBLEMS:
            more = len(errors) - MAX_LOGGED_PROBLEMS
            log.error("rules: and %d more errors (trigmail validate lists them all)", more)
        log.error("rules: reload rejected (%d errors); version %s stays", len(errors), old)


class RulesWatcher:
    """Calls ``on_change`` from a background thread whenever a rule directory changes.

    Args:
        dirs: the directories to watch; one that is missing is waited for.
        on_change: called after each burst of changes (debounced by watchfiles).
        retry_s: how long to wait before watching again after the directory vanished.
    """

    def __init__(
        self,
        dirs: Sequence[Path],
        on_change: Callable[[], None],
        retry_s: float = 1.0,
        changed_since_load: Callable[[], bool] = lambda: False,
    ) -> None:
        self.dirs = tuple(dirs)
        self.on_change = on_change
        self.retry_s = retry_s
        self.changed_since_load = changed_since_load
        self._stop = threading.Event()
        self._watching = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trigmail-rules-watch", daemon=True)

    def start(self) -> None:
        """Start watching; return once the watch is in place (bounded by ``WATCH_START_S``).

        A file written before the watch was in place, since the rules were loaded, is caught
        by ``changed_since_load``: without both, a rule saved just as serve said it was ready
        was never loaded.
        """
        self._thread.start()
        if not self._watching.wait(WATCH_START_S):
            log.warning("rules: the watch on %s is not in place yet", list(self.dirs))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            present = [d for d in self.dirs if d.exists()]
            if not present:
                self._watching.set()  # nothing to wait for: a directory that comes is loaded
                self._stop.wait(self.retry_s)
                continue
            try:
                # Not recursive: rule files are only at the top, and a link in rules.d to `/`
                # would otherwise add an inotify watch for every directory it leads to. The
                # first yield, a change or a timeout, says the watch is in place.
                for changes in watchfiles.watch(
                    *present,
                    stop_event=self._stop,
                    debounce=200,
                    step=50,
                    rust_timeout=WATCH_TICK_MS,
                    yield_on_timeout=True,
                    recursive=False,
                ):
                    if not self._watching.is_set():
                        self._watching.set()
                        if not changes and self.changed_since_load():
                            self.on_change()
                    if changes:
                        self.on_change()
            except (OSError, RuntimeError) as exc:
                # The directory vanished or was replaced: the last good rules stay in force.
                log.warning("rules: cannot watch %s: %s", present, exc)
                self._watching.set()  # serve need not wait for a watch that failed
                self.on_change()
                self._stop.wait(self.retry_s)
