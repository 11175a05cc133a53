"""The statistics of A/B tests: per-arm figures, the two tests, and when a test may close.

- Accuracy (feedback labels): a two-proportion z-test with the pooled proportion.
- Latency (audit rows' `inference_time_ms`): Welch's t-test; the two-sided p-value comes from the
  Student t distribution through the regularized incomplete beta function (no scipy), so it is
  exact for small samples too.

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

from schema.metrics import percentile_cont
from workers.routing.decide import SPLIT_BUCKETS, split_bucket

Metric = Literal["accuracy", "latency"]
Arm = Literal["A", "B"]
METRICS: tuple[Metric, ...] = ("accuracy", "latency")
ALPHA = 0.05
MAX_INTERIM_LOOKS = 8
LOOK_ALPHA = ALPHA / (MAX_INTERIM_LOOKS + 1)


def variant_for(key: bytes, test_name: str, split_percent: int, subject: str) -> Arm:
    """The arm of `subject` (a user id, else the job's own id) in a test: the router's keyed
    split bucket, so it is sticky per user and nobody can pick their arm; B takes
    `split_percent` of the buckets."""
    bucket = split_bucket(key, f"abtest\x1f{test_name}\x1f{subject}")
    return "B" if bucket < split_percent * SPLIT_BUCKETS // 100 else "A"


@dataclass(frozen=True)
class ArmFigures:
    """What one arm served: requests, latency (ms), and accuracy over the labelled jobs."""

    requests: int
    mean_ms: float | None
    p95_ms: float | None
    variance_ms2: float | None
    labelled: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def samples(self, metric: Metric) -> int:
        """The observations `metric` is tested on."""
        return self.labelled if metric == "accuracy" else self.requests

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmFigures:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def arm_figures(latencies_ms: Sequence[float], labelled: int, correct: int) -> ArmFigures:
    """An arm's figures from its inference times and its labelled/correct counts."""
    n = len(latencies_ms)
    if n == 0:
        return ArmFigures(0, None, None, None, labelled, correct)
    mean = math.fsum(latencies_ms) / n
    variance = math.fsum((x - mean) ** 2 for x in latencies_ms) / (n - 1) if n > 1 else None
    p95 = percentile_cont(sorted(latencies_ms), 0.95)
    return ArmFigures(n, round(mean, 3), round(p95, 3), variance, labelled, correct)


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


def welch_p(a: ArmFigures, b: ArmFigures) -> float | None:
    """Two-sided p-value of Welch's t-test on the arms' mean latencies; None when undefined."""
    if a.mean_ms is None or b.mean_ms is None or a.variance_ms2 is None or b.variance_ms2 is None:
        return None
    va, vb = a.variance_ms2 / a.requests, b.variance_ms2 / b.requests
    if va + vb == 0:
        return 1.0 if a.mean_ms == b.mean_ms else 0.0
    t = (b.mean_ms - a.mean_ms) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.requests - 1) + vb**2 / (b.requests - 1))
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
    return welch_p(a, b)


def better_arm(metric: Metric, a: ArmFigures, b: ArmFigures) -> Arm | None:
    """The arm ahead on `metric` (higher accuracy, lower mean latency), significant or not."""
    if metric == "accuracy":
        if a.accuracy is None or b.accuracy is None or a.accuracy == b.accuracy:
            return None
        return "B" if b.accuracy > a.accuracy else "A"
    if a.mean_ms is None or b.mean_ms is None or a.mean_ms == b.mean_ms:
        return None
    return "B" if b.mean_ms < a.mean_ms else "A"


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
    what = "more accurate" if metric == "accuracy" else "faster"
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
