"""What a reload changed, for its log line: fingerprints of rule files and rules."""

from __future__ import annotations

from pathlib import Path

from bench.bench_validate import write_rules
from trigmail.rulediff import compare, fingerprint


def test_a_fingerprint_built_on_the_last_one_equals_one_from_scratch(tmp_path: Path) -> None:
    write_rules(tmp_path, 3, 2)
    first = fingerprint([tmp_path])
    changed = tmp_path / "rules-0001.yaml"
    changed.write_text(changed.read_text().replace("rule-1-1", "rule-1-x"))
    (tmp_path / "rules-0002.yaml").unlink()
    (tmp_path / "rules-0003.yaml").write_text((tmp_path / "rules-0000.yaml").read_text())
    second = fingerprint([tmp_path], first)
    assert second == fingerprint([tmp_path])
    changes = compare(first, second)
    assert changes.added == ["rule-1-x"]  # rules-0003 repeats rules-0000's ids: not new
    assert changes.removed == ["rule-1-1", "rule-2-0", "rule-2-1"]
    assert changes.files == [str(tmp_path / f"rules-000{n}.yaml") for n in (1, 2, 3)]


def test_a_rule_edited_in_place_is_changed(tmp_path: Path) -> None:
    write_rules(tmp_path, 1, 2)
    first = fingerprint([tmp_path])
    path = tmp_path / "rules-0000.yaml"
    path.write_text(path.read_text().replace("delay: 1h30m", "delay: 2h", 1))
    second = fingerprint([tmp_path], first)
    assert second == fingerprint([tmp_path])
    assert compare(first, second).changed == ["rule-0-0"]
