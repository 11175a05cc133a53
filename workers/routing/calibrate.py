"""Threshold calibration: the medium/complex thresholds that would have sent a given share of
recent queries to the remote tier, from the scores the route logs recorded.

The medium band keeps its width and the two thresholds move together; the predicted remote share
of a pair counts every complex query and `medium_remote_percent` of the medium ones, as routing
does. Writing the result changes only the two numbers in router.toml, keeping its comments.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.routing.config import InvalidRouterConfig, RouterConfig


@dataclass(frozen=True)
class Calibration:
    samples: int
    target_share: float
    current: tuple[int, int]  # (medium_at, complex_at)
    current_share: float
    proposed: tuple[int, int]
    proposed_share: float


def remote_share(scores: Sequence[int], medium_at: int, complex_at: int, medium_remote_percent: float) -> float:
    """The share of `scores` these thresholds send to the remote tier."""
    if not scores:
        return 0.0
    complex_ = sum(score >= complex_at for score in scores)
    medium = sum(medium_at <= score < complex_at for score in scores)
    return (complex_ + medium * medium_remote_percent / 100) / len(scores)


def calibrate(scores: Sequence[int], config: RouterConfig, target_share: float) -> Calibration:
    """The threshold pair closest to `target_share` (ties: the one nearest the current pair)."""
    if not 0 <= target_share <= 1:
        raise ValueError("the remote share is a fraction between 0 and 1")
    if not scores:
        raise ValueError("no routing jobs recorded in that period: nothing to calibrate from")
    scoring, percent = config.scoring, config.routing.medium_remote_percent
    current = (scoring.medium_at, scoring.complex_at)
    width = scoring.complex_at - scoring.medium_at
    candidates = range(min(scores), max(scores) + 2)  # max + 1: nothing is complex

    def cost(complex_at: int) -> tuple[float, int]:
        medium_at = complex_at - width
        gap = abs(remote_share(scores, medium_at, complex_at, percent) - target_share)
        return round(gap, 9), abs(complex_at - scoring.complex_at)

    best = min(candidates, key=cost)
    proposed = (best - width, best)
    return Calibration(
        samples=len(scores),
        target_share=target_share,
        current=current,
        current_share=remote_share(scores, *current, percent),
        proposed=proposed,
        proposed_share=remote_share(scores, *proposed, percent),
    )


def write_thresholds(path: Path, medium_at: int, complex_at: int) -> None:
    """Set `medium_at` and `complex_at` in router.toml's [scoring] table, keeping everything else
    (comments included); the result is validated before it replaces the file."""
    text = path.read_text(encoding="utf-8")
    for name, value in (("medium_at", medium_at), ("complex_at", complex_at)):
        text, count = re.subn(rf"(?m)^(\s*{name}\s*=\s*)-?\d+", rf"\g<1>{value}", text, count=1)
        if count != 1:
            raise InvalidRouterConfig(f"{path}: no `{name} = N` line to update under [scoring].")
    RouterConfig.model_validate(tomllib.loads(text))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".router.", suffix=".toml")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)
