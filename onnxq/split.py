"""Sticky, keyed traffic splits: which side of a split a user lands on.

A subject (a user id, else something stable about the request) is hashed with HMAC under the
audit key into one of `SPLIT_BUCKETS` buckets, so a user always lands on the same side, the sides
match the split over many users, and nobody can predict or choose theirs without the key. The
router's configured medium split and every A/B test (of model versions or of routing backends)
use it.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

SPLIT_BUCKETS = 10_000
Arm = Literal["A", "B"]


def split_bucket(key: bytes, subject: str) -> int:
    """A stable bucket in [0, SPLIT_BUCKETS) for `subject`."""
    digest = hmac.new(key, b"router-split\x1f" + subject.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS


def in_share(key: bytes, subject: str, percent: float) -> bool:
    """Whether `subject` falls in the first `percent` of the buckets."""
    return split_bucket(key, subject) < percent * SPLIT_BUCKETS / 100


def variant_for(key: bytes, test_name: str, split_percent: int, subject: str) -> Arm:
    """The arm of `subject` in the A/B test `test_name`; B takes `split_percent` of the buckets.
    Each test splits the same users independently of the others."""
    return "B" if in_share(key, f"abtest\x1f{test_name}\x1f{subject}", split_percent) else "A"
