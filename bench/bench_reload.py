"""Reload: time from writing a rule file to the new rule set being in force in ``trigmail serve``.

A real ``trigmail serve`` (a subprocess, against the fake SendGrid on 127.0.0.1) runs on a copy
of ``rules.d`` plus ``--files`` generated files of 10 rules each. The bench then writes
``--writes`` new rule files, one at a time, and times each until serve logs the new rule set in
force (the file watcher notices it, the whole set is loaded and checked, then swapped).

Run: .venv/bin/python -m bench.bench_reload [--files 0] [--writes 10]
     .venv/bin/python -m bench.bench_reload --files 100   (1,000 more rules)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.bench_validate import write_rules
from bench.common import (
    FAKE_API_KEY,
    RULES_DIR,
    FakeSendGridProcess,
    header,
    percentile,
)
from tests.serve_harness import Serve, clean_env, write_config

_NEW_RULE = """\
rules:
  - id: bench-{n}
    on: user_signup
    send: {{template: d-bench-{n}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=0, help="generated files of 10 rules")
    parser.add_argument("--writes", type=int, default=10, help="rule files written, timed")
    args = parser.parse_args()
    header("reload: rule file written -> new rule set in force")
    with (
        tempfile.TemporaryDirectory(prefix="trigmail-bench-") as temp,
        FakeSendGridProcess() as fake,
    ):
        directory = Path(temp)
        rules_dir = directory / "rules.d"
        shutil.copytree(RULES_DIR, rules_dir)
        write_rules(rules_dir, args.files, 10)
        (directory / "events.jsonl").touch()
        config = write_config(
            directory / "trigmail.yaml",
            fake_url=fake.url,
            source={"spool": str(directory / "events.jsonl")},
            rules_dir=rules_dir,
            ledger=directory / "ledger.db",
        )
        env = clean_env({"SENDGRID_API_KEY": FAKE_API_KEY})
        args_serve = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
        timings_s: list[float] = []
        with Serve(directory, args_serve, env) as serve:
            serve.wait_ready(timeout_s=60)
            rules = int(serve.wait_line(r"rules: version \S+ in force \((\d+) rules").group(1))
            time.sleep(1.0)  # the watcher starts just after ready
            for n in range(args.writes):
                mark = serve.mark()
                rules += 1
                started = time.monotonic()
                (rules_dir / f"bench-{n}.yaml").write_text(_NEW_RULE.format(n=n))
                serve.wait_line(rf"rules: version \S+ in force \({rules} rules", 30, after=mark)
                timings_s.append(time.monotonic() - started)
                time.sleep(0.5)  # let the watcher settle: each write is timed on its own
            serve.stop()
    print(f"rule set: {rules - args.writes} rules + 1 per write; {args.writes} writes")
    print(
        f"write to in force: p50 {percentile(timings_s, 50) * 1000:.0f} ms, "
        f"max {max(timings_s) * 1000:.0f} ms, min {min(timings_s) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
