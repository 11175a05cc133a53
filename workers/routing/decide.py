"""From a classification to a decision: which tier and which backend, and why.

Simple queries go to the local tier, complex ones to the remote tier, medium ones are split by
`medium_remote_percent`, sticky per user: the variant comes from a keyed hash (HMAC under the
audit key) of the user id, so a user always lands on the same side and nobody can choose theirs.
A request may force a backend. Within a tier the first backend that is available (not cooling
down) is chosen.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from onnxq.errors import PermanentError
from workers.routing.config import OpenAIBackend, RouterConfig
from workers.routing.scoring import Classification, Complexity, classify

Tier = Literal["local", "remote"]
SPLIT_BUCKETS = 10_000
TOKENS_PER_WORD = 1.4  # rough prompt-token estimate, for the estimated cost only


class UnknownBackend(PermanentError):
    code = "unknown_backend"


@dataclass(frozen=True)
class Decision:
    """Where a query goes: the backend, its tier, the reason, the A/B variant for medium
    queries, the classification behind it and what it should cost."""

    backend: str
    tier: Tier
    reason: str
    classification: Classification
    estimated_cost: float
    variant: Tier | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "tier": self.tier,
            "reason": self.reason,
            "variant": self.variant,
            "classification": self.classification.as_dict(),
            "estimated_cost": self.estimated_cost,
        }


def split_bucket(key: bytes, subject: str) -> int:
    """A stable bucket in [0, SPLIT_BUCKETS) for `subject` (a user id), keyed so it cannot be
    predicted or chosen without the key."""
    digest = hmac.new(key, b"router-split\x1f" + subject.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS


def medium_variant(config: RouterConfig, key: bytes, subject: str) -> Tier:
    share = config.routing.medium_remote_percent / 100
    return "remote" if split_bucket(key, subject) < share * SPLIT_BUCKETS else "local"


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
) -> Decision:
    """The decision for `query`. `user_id` makes the medium split sticky (without one, the same
    query always lands on the same side); `backend` forces one; `available` says which backends
    may be chosen now (those cooling down may not)."""
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
        variant = tier = medium_variant(config, key, subject)
        reason = "medium-query-ab"
    candidates: list[str] = getattr(config.routing, tier)
    chosen = next((name for name in candidates if available(name)), candidates[0])
    return Decision(chosen, tier, reason, classification, estimated_cost(config, chosen, words), variant)
