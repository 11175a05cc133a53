"""From a classification to a decision: which tier and which backend, and why.

Simple queries go to the local tier, complex ones to the remote tier. Medium ones are split,
sticky per user (`onnxq.split`: a keyed hash of the user id, so a user always lands on the same
side and nobody can choose theirs): by a running routing A/B test between two backends when there
is one (`onnxq abtest create --backend-a X --backend-b Y`, evaluated and closed like any A/B
test), else by the config's `medium_remote_percent`. A request may force a backend. Within a tier
the first backend that is available (not cooling down) is chosen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from onnxq.errors import PermanentError
from onnxq.split import in_share, variant_for
from schema.abtests import RunningTest
from workers.routing.config import OpenAIBackend, RouterConfig
from workers.routing.scoring import Classification, Complexity, classify

Tier = Literal["local", "remote"]
TOKENS_PER_WORD = 1.4  # rough prompt-token estimate, for the estimated cost only
log = logging.getLogger(__name__)
_warned: set[int] = set()  # tests whose missing backend was logged (once per process)


class UnknownBackend(PermanentError):
    code = "unknown_backend"


@dataclass(frozen=True)
class Decision:
    """Where a query goes: the backend, its tier, the reason, the classification behind it and
    what it should cost; for medium queries the side of the split (`local`/`remote` by the
    config, `A`/`B` in a routing A/B test, whose id is then `ab_test_id`)."""

    backend: str
    tier: Tier
    reason: str
    classification: Classification
    estimated_cost: float
    variant: str | None = None
    ab_test_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "tier": self.tier,
            "reason": self.reason,
            "variant": self.variant,
            "ab_test_id": self.ab_test_id,
            "classification": self.classification.as_dict(),
            "estimated_cost": self.estimated_cost,
        }


def medium_variant(config: RouterConfig, key: bytes, subject: str) -> Tier:
    """The configured split: `medium_remote_percent` of users go remote."""
    return "remote" if in_share(key, subject, config.routing.medium_remote_percent) else "local"


def tier_of(config: RouterConfig, backend: str) -> Tier:
    return "local" if backend in config.routing.local else "remote"


def estimated_cost(config: RouterConfig, backend: str, word_count: int) -> float:
    """The backend's cost for one request; for token-priced APIs an upper estimate (the prompt
    from the word count, plus the whole `max_tokens` answer)."""
    spec = config.backends[backend]
    cost = spec.cost_per_request
    if isinstance(spec, OpenAIBackend) and spec.cost_per_1k_tokens:
        tokens = math.ceil(word_count * TOKENS_PER_WORD) + spec.max_tokens
        cost += spec.cost_per_1k_tokens * tokens / 1000
    return round(cost, 6)


def decide(
    query: str,
    config: RouterConfig,
    key: bytes,
    *,
    user_id: str | None = None,
    backend: str | None = None,
    available: Callable[[str], bool] = lambda _name: True,
    test: RunningTest | None = None,
) -> Decision:
    """The decision for `query`. `user_id` makes the medium split sticky (without one, the same
    query always lands on the same side); `backend` forces one; `available` says which backends
    may be chosen now (those cooling down may not); `test` is the running routing A/B test,
    which splits medium queries between its two backends."""
    classification = classify(query, config.scoring)
    words = classification.word_count
    if backend is not None:
        if backend not in config.backends:
            known = ", ".join(sorted(config.backends))
            raise UnknownBackend(f"No backend named {backend!r} in the router config (backends: {known}).")
        tier = tier_of(config, backend)
        return Decision(backend, tier, "forced", classification, estimated_cost(config, backend, words))
    variant: Tier | None = None
    if classification.complexity is Complexity.SIMPLE:
        tier, reason = "local", "simple-query"
    elif classification.complexity is Complexity.COMPLEX:
        tier, reason = "remote", "complex-query"
    else:
        subject = user_id if user_id is not None else "query\x1f" + query
        if test is not None and {test.arm_a, test.arm_b} <= {*config.routing.local, *config.routing.remote}:
            # The arm's backend is decided even while it cools down: a test counts each query
            # on the arm it was assigned to (execution falls back as for any decided backend).
            arm = variant_for(key, test.name, test.split_percent, subject)
            chosen = test.arm_a if arm == "A" else test.arm_b
            cost = estimated_cost(config, chosen, words)
            return Decision(chosen, tier_of(config, chosen), "medium-query-abtest", classification, cost, arm, test.id)
        if test is not None and test.id not in _warned:
            _warned.add(test.id)
            log.warning(
                "A/B test %s names a backend no longer in the router config's tiers; using the configured split",
                test.name,
            )
        variant = tier = medium_variant(config, key, subject)
        reason = "medium-query-ab"
    candidates: list[str] = getattr(config.routing, tier)
    chosen = next((name for name in candidates if available(name)), candidates[0])
    return Decision(chosen, tier, reason, classification, estimated_cost(config, chosen, words), variant)
