"""How `simulate --compare` shows the difference in sends, for people."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from trigmail.compare import SAMPLES, RuleDiff


def print_compare(diffs: dict[str, RuleDiff]) -> None:
    """Print one row per rule, then samples of each change."""
    console = Console(highlight=False, soft_wrap=True)
    table = Table(title="sends, old rules -> new rules", title_justify="left")
    for name in ("rule", "added", "removed", "moved", "unchanged"):
        table.add_column(name, justify="left" if name == "rule" else "right")
    for rule, diff in diffs.items():
        table.add_row(
            rule,
            str(len(diff.added)),
            str(len(diff.removed)),
            str(len(diff.moved)),
            str(diff.unchanged),
        )
    console.print(table)
    for rule, diff in diffs.items():
        for kind in ("added", "removed", "moved"):
            for sample in getattr(diff, kind)[:SAMPLES]:
                when = (
                    f"{sample['old_at']} -> {sample['new_at']}"
                    if kind == "moved"
                    else sample["new_at"] or sample["old_at"]
                )
                step = f" step {sample['step']}" if sample["step"] else ""
                who = f"{sample['user_id']} ({sample['event_id']})"
                console.print(Text(f"{kind:<8} {rule}{step} to {who} {when}"))
    if not any(diff.changed for diff in diffs.values()):
        console.print("no difference in sends")
