"""The statistics of A/B tests: per-arm figures, the two tests, and when a test may close.

- Accuracy (feedback labels): a two-proportion z-test with the pooled proportion.
- Latency (audit rows' `inference_time_ms`; a routing test's backend latency) and cost (routing
  tests: each request's cost): Welch's t-test; the two-sided p-value comes from the Student t
  distribution through the regularized incomplete beta function (no scipy), so it is exact for
  small samples too.

Repeated looks. The scheduler evaluates every few minutes, and testing each time at 5% would
declare false winners far more often than 5% of the time. A test therefore *decides* only at a
bounded number of looks, each at a Bonferroni share of alpha:

- interim looks happen when the smaller arm first reaches `min_samples × 2^k` samples
  (k = 0 … MAX_INTERIM_LOOKS-1), the number of looks spent is stored on the test, and the
  evaluations in between only refresh the figures;
- the final look is at `ends_at` (or `onnxq abtest close`);
- every look tests at `LOOK_ALPHA = ALPHA / (MAX_INTERIM_LOOKS + 1)`, so by the union bound the
  chance that an A/A test ever declares a winner is at most ALPHA, however often it is evaluated.

This is conservative (an O'Brien–Fleming or mSPRT boundary would stop a little sooner), but it is
simple to check and cannot be fooled by evaluating more often.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from onnxq.split import Arm
from schema.metrics import percentile_cont

Metric = Literal["accuracy", "latency", "cost"]
ALPHA = 0.05
MAX_INTERIM_LOOKS = 8
LOOK_ALPHA = ALPHA / (MAX_INTERIM_LOOKS + 1)


@dataclass(frozen=True)
class ArmFigures:
    """What one arm served: requests, latency (ms), accuracy over the labelled jobs, and (routing
    tests) the mean cost per request."""

    requests: int
    mean_ms: float | None
    p95_ms: float | None
    variance_ms2: float | None
    labelled: int
    correct: int
    mean_cost: float | None = None
    variance_cost: float | None = None
    fallbacks: int = 0
    failed: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def samples(self, metric: Metric) -> int:
        """The observations `metric` is tested on."""
        return self.labelled if metric == "accuracy" else self.requests

    def moments(self, metric: Metric) -> tuple[int, float | None, float | None]:
        """(n, mean, variance) of the latency or the cost."""
        if metric == "cost":
            return self.requests, self.mean_cost, self.variance_cost
        return self.requests, self.mean_ms, self.variance_ms2

    def as_dict(self) -> dict[str, Any]:
        """The figures as stored and shown: the tests run on the unrounded ones."""
        rounded = {
            "mean_ms": _round(self.mean_ms, 3),
            "p95_ms": _round(self.p95_ms, 3),
            "mean_cost": _round(self.mean_cost, 8),
        }
        return {**asdict(self), **rounded, "accuracy": self.accuracy}


def mean_and_variance(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean and the sample variance (None below one and two values)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    return mean, (math.fsum((x - mean) ** 2 for x in values) / (n - 1) if n > 1 else None)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def arm_figures(
    latencies_ms: Sequence[float],
    labelled: int,
    correct: int,
    costs: Sequence[float] | None = None,
    *,
    fallbacks: int = 0,
    failed: int = 0,
) -> ArmFigures:
    """An arm's figures from its latencies, its labelled/correct counts and (routing tests) the
    cost of each request, in the same order as the latencies, and its fallback/failure counts."""
    n = len(latencies_ms)
    if n == 0:
        return ArmFigures(0, None, None, None, labelled, correct, fallbacks=fallbacks, failed=failed)
    mean, variance = mean_and_variance(latencies_ms)
    p95 = percentile_cont(sorted(latencies_ms), 0.95)
    mean_cost, variance_cost = mean_and_variance(costs) if costs is not None else (None, None)
    return ArmFigures(n, mean, p95, variance, labelled, correct, mean_cost, variance_cost, fallbacks, failed)


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_p(correct_a: int, n_a: int, correct_b: int, n_b: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; None when it is undefined."""
    if n_a == 0 or n_b == 0:
        return None
    pooled = (correct_a + correct_b) / (n_a + n_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 1.0  # every answer right (or wrong) in both arms: no difference to see
    return normal_two_sided_p((correct_b / n_b - correct_a / n_a) / spread)


def welch_p(a: ArmFigures, b: ArmFigures, metric: Metric = "latency") -> float | None:
    """Two-sided p-value of Welch's t-test on the arms' mean latency (or cost); None when
    undefined."""
    (n_a, mean_a, var_a), (n_b, mean_b, var_b) = a.moments(metric), b.moments(metric)
    if mean_a is None or mean_b is None or var_a is None or var_b is None:
        return None
    va, vb = var_a / n_a, var_b / n_b
    if va + vb == 0:
        return 1.0 if mean_a == mean_b else 0.0
    t = (mean_b - mean_a) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return student_t_two_sided_p(t, df)


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return regularized_beta(df / (df + t * t), df / 2, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast only below the mean; use the symmetry above it.
    if x > (a + 1) / (a + b + 2):
        return 1.0 - math.exp(log_front) * _beta_fraction(1 - x, b, a) / b
    return math.exp(log_front) * _beta_fraction(x, a, b) / a


def _beta_fraction(x: float, a: float, b: float, max_terms: int = 300, eps: float = 1e-15) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, max_terms + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return fraction


def p_value(metric: Metric, a: ArmFigures, b: ArmFigures) -> float | None:
    if metric == "accuracy":
        return two_proportion_p(a.correct, a.labelled, b.correct, b.labelled)
    return welch_p(a, b, metric)


def better_arm(metric: Metric, a: ArmFigures, b: ArmFigures) -> Arm | None:
    """The arm ahead on `metric` (higher accuracy, lower mean latency or cost), significant or not."""
    if metric == "accuracy":
        if a.accuracy is None or b.accuracy is None or a.accuracy == b.accuracy:
            return None
        return "B" if b.accuracy > a.accuracy else "A"
    mean_a, mean_b = a.moments(metric)[1], b.moments(metric)[1]
    if mean_a is None or mean_b is None or mean_a == mean_b:
        return None
    return "B" if mean_b < mean_a else "A"


def looks_reached(samples: int, min_samples: int) -> int:
    """How many interim looks the smaller arm's sample count has unlocked (0 below min_samples)."""
    if samples < min_samples:
        return 0
    return min(MAX_INTERIM_LOOKS, int(math.log2(samples / max(min_samples, 1))) + 1)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one evaluation: close or not, the winner, the p-value and why."""

    close: bool
    winner: Arm | None
    p_value: float | None
    looks: int
    reason: str


def decide(
    metric: Metric, a: ArmFigures, b: ArmFigures, *, min_samples: int, looks_done: int, final: str | None = None
) -> Verdict:
    """Whether a test closes now. `final` says why this is the last look ("at its end", "by
    hand"); without it only a new interim look can close the test."""
    p = p_value(metric, a, b)
    ahead = better_arm(metric, a, b)
    significant = p is not None and p < LOOK_ALPHA and ahead is not None
    shown = "n/a" if p is None else f"{p:.3g}"
    what = {"accuracy": "more accurate", "latency": "faster", "cost": "cheaper"}[metric]
    if final is not None:
        if significant:
            return Verdict(True, ahead, p, looks_done + 1, f"{ahead} {what} (p={shown}); closed {final}")
        return Verdict(True, None, p, looks_done + 1, f"no significant difference (p={shown}); closed {final}")
    smaller = min(a.samples(metric), b.samples(metric))
    reached = looks_reached(smaller, min_samples)
    if reached <= looks_done:
        return Verdict(False, None, p, looks_done, "")
    if significant:
        return Verdict(True, ahead, p, reached, f"{ahead} {what} (p={shown} < {LOOK_ALPHA:.4f}) at look {reached}")
    return Verdict(False, None, p, reached, "")
