"""How long load_rules takes on 500 rule files of 10 rules each (target: under 2 s).

Run: .venv/bin/python bench/bench_validate.py [--files 500] [--rules 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trigmail.rules.loader import load_rules

_RULE = """\
  - id: rule-{file}-{n}
    description: Generated rule {n} of file {file}
    on: [cart_abandoned, checkout_started]
    when:
      properties.cart_value: {{gte: {n}}}
      user.country: {{in: [PT, ES, "NO"]}}
      any:
        - {{properties.coupon: {{exists: false}}}}
        - {{email: {{matches: "@example\\\\.com$"}}}}
    delay: 1h30m
    cancel_on: [order_completed, {{event: cart_emptied, match: properties.cart_id}}]
    cooldown: 24h
    max_late: 6h
    dedupe: "{{rule}}:{{user_id}}:{{date}}"
    send_window: {{from: "09:00", to: "20:00", timezone: user.timezone}}
    send:
      template: d-{file}-{n}
      data:
        first_name: "{{{{ user.first_name }}}}"
        cart_url: "{{{{ properties.cart_url }}}}"
        greeting: "Hi {{{{ user.first_name | default('there') }}}} ({file}/{n})"
      category: cart-recovery
      asm_group: 1234
"""


def write_rules(directory: Path, files: int, rules: int) -> None:
    """Write ``files`` rule files of ``rules`` distinct rules each into ``directory``."""
    for file in range(files):
        body = "".join(_RULE.format(file=file, n=n) for n in range(rules))
        (directory / f"rules-{file:04d}.yaml").write_text("rules:\n" + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rules", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        write_rules(directory, args.files, args.rules)
        started = time.perf_counter()
        result = load_rules(directory)
        elapsed_s = time.perf_counter() - started
    if result.problems:
        raise SystemExit(f"generated rules are not clean: {result.problems[0]}")
    print(
        f"load_rules: {args.files} files x {args.rules} rules = {result.rules_written} rules "
        f"in {elapsed_s:.2f} s  (command: .venv/bin/python bench/bench_validate.py)"
    )


if __name__ == "__main__":
    main()
