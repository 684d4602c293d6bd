"""Stable assignment of users to A/B variants and holdout groups, from (rule id, user id).

Pure and deterministic: every worker, every restart and ``simulate`` put a user in the same
place, with no state to share. Two choices, both by hashing:

* **Variants: weighted rendezvous hashing.** Each variant scores ``weight / -ln(h)``, where
  ``h`` in (0, 1) is a hash of (rule, user, variant id); the highest score wins. A variant
  wins with probability ``weight / sum(weights)``, and when one weight changes, only users
  moving into or out of *that* variant move: raising ``b`` from 50 to 60 moves 4.5% of
  users (60/110 - 50/100) from ``a`` to ``b`` and nobody else, and adding a variant ``c``
  only takes users into ``c``. A hash mapped over cumulative weights in id order moves as
  few users for two variants but, with three or more, a change to the first weight shifts
  every boundary after it.
  Scores do not depend on the order the variants are written in, nor on the step: a user in
  ``a`` on day 0 of a sequence is in ``a`` on day 3 if that step has the same variants.
* **Holdout: a threshold.** A user is held out when a hash of (rule, user) is below the
  share, so raising ``holdout`` from 10% to 15% only adds users to the control group; it uses
  its own hash, so the variants split the users who are not held out evenly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Protocol, TypeVar

# 2**64 buckets: far finer than any weight a rule can express.
_SCALE = float(1 << 64)


class Weighted(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float: ...


V = TypeVar("V", bound=Weighted)


def unit_hash(*parts: str) -> float:
    """Return a hash of ``parts`` as a float in the open interval (0, 1)."""
    text = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(text, digest_size=8, person=b"trigmail-ab").digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


def choose_variant(rule_id: str, user_id: str, variants: Sequence[V]) -> V:
    """Return the user's variant by weighted rendezvous hashing (see the module docstring)."""
    best = variants[0]
    best_score = -1.0
    for variant in variants:
        score = variant.weight / -math.log(unit_hash("variant", rule_id, user_id, variant.id))
        # Ties (practically never) go to the smaller id, whatever order the rule lists them in.
        if score > best_score or (score == best_score and variant.id < best.id):
            best, best_score = variant, score
    return best


def in_holdout(rule_id: str, user_id: str, share: float) -> bool:
    """Return whether the user is in the rule's holdout (control) group of ``share`` (0..1)."""
    return share > 0 and unit_hash("holdout", rule_id, user_id) < share
