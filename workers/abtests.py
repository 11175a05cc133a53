"""Evaluating A/B tests: the scheduler's periodic evaluation, closing by hand, and the figures
`onnxq abtest show` prints. Each test is evaluated under its row lock, so a redelivered or
concurrent evaluation cannot spend a look twice."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import cast

from sqlmodel import Session

from schema.abtests import (
    CLOSED,
    RUNNING,
    ABTestView,
    arm_samples,
    clear_abtest_cache,
    get_test,
    list_tests,
    promote,
    running_ids,
    view,
)
from schema.db import get_engine, session_scope
from schema.registry import clear_model_cache
from schema.tables import PytorchABTest, utcnow
from workers.abstats import LOOK_ALPHA, ArmFigures, Metric, Verdict, arm_figures, better_arm, decide, p_value

log = logging.getLogger(__name__)


def figures_of(session: Session, test: PytorchABTest) -> dict[str, ArmFigures]:
    """Each arm's figures from its jobs so far."""
    return {
        arm: arm_figures(
            sample.latencies_ms,
            sample.labelled,
            sample.correct,
            sample.costs,
            fallbacks=sample.fallbacks,
            failed=sample.failed,
        )
        for arm, sample in arm_samples(session, test).items()
    }


def _record(session: Session, test: PytorchABTest, figures: dict[str, ArmFigures], verdict: Verdict) -> None:
    now = utcnow()
    test.figures = {arm: fig.as_dict() for arm, fig in figures.items()}
    test.model_a_avg_latency_ms = test.figures["A"]["mean_ms"]
    test.model_b_avg_latency_ms = test.figures["B"]["mean_ms"]
    test.p_value = verdict.p_value
    test.looks = verdict.looks
    test.evaluated_at = now
    if verdict.close:
        test.status = CLOSED
        test.closed_at = now
        test.reason = verdict.reason
        test.winner_arm = verdict.winner
        # A routing test has no model arms: its winner is only the arm (the backend).
        test.winner_model_id = {"A": test.model_a_id, "B": test.model_b_id}.get(verdict.winner or "")
        if test.auto_promote and test.winner_model_id is not None:
            promoted = promote(session, test.winner_model_id)
            test.reason = f"{verdict.reason}; {promoted.ref} promoted"
        clear_abtest_cache()
        clear_model_cache()
    session.add(test)


def evaluate(test_id: int, now: datetime, *, by_hand: bool = False) -> PytorchABTest | None:
    """Evaluate one running test (closing it at its end date, by hand, or on a significant
    difference at a look); None if it is no longer running."""
    with session_scope() as session:
        test = session.get(PytorchABTest, test_id, with_for_update=True, populate_existing=True)
        if test is None or test.status != RUNNING:
            return None
        figures = figures_of(session, test)
        final = "by hand" if by_hand else "at its end" if test.ends_at is not None and now >= test.ends_at else None
        verdict = decide(
            cast(Metric, test.metric),
            figures["A"],
            figures["B"],
            min_samples=test.min_samples,
            looks_done=test.looks,
            final=final,
        )
        _record(session, test, figures, verdict)
        if verdict.close:
            log.info("A/B test %s closed: %s", test.test_name, test.reason)
        return test


def evaluate_all(now: datetime) -> list[str]:
    """Evaluate every running test; the names of those that closed."""
    with Session(get_engine()) as session:
        ids = running_ids(session)
    closed = []
    for test_id in ids:
        test = evaluate(test_id, now)
        if test is not None and test.status == CLOSED:
            closed.append(test.test_name)
    return closed


def close_test(name: str) -> ABTestView:
    """Close a running test now, with a final look (a winner only if significant)."""
    with Session(get_engine()) as session:
        test = get_test(session, name)
    if test.status == RUNNING and test.id is not None:
        evaluate(test.id, utcnow(), by_hand=True)
    return show_test(name)


def show_test(name: str) -> ABTestView:
    """A test with its per-arm figures (live while it runs) and a one-line verdict."""
    with Session(get_engine()) as session:
        test = get_test(session, name)
        if test.status != RUNNING:
            stored = test.figures or {}
            return view(session, test, stored, f"closed: {test.reason or 'no reason recorded'}")
        figures = figures_of(session, test)
        return view(session, test, {arm: f.as_dict() for arm, f in figures.items()}, running_verdict(test, figures))


def show_all() -> list[ABTestView]:
    """Every test, newest first (stored figures only: listing stays cheap)."""
    with Session(get_engine()) as session:
        tests = list_tests(session)
        return [view(session, t, t.figures or {}, t.reason or t.status) for t in tests]


def running_verdict(test: PytorchABTest, figures: dict[str, ArmFigures]) -> str:
    """Where a running test stands, in one line."""
    metric = cast(Metric, test.metric)
    a, b = figures["A"], figures["B"]
    n = f"{a.samples(metric)}/{b.samples(metric)} samples (A/B), {test.min_samples} per arm needed"
    p = p_value(metric, a, b)
    ahead = better_arm(metric, a, b)
    if p is None or ahead is None:
        return f"running: no difference yet; {n}"
    return f"running: {ahead} ahead on {metric} (p={p:.3g}; a look decides below {LOOK_ALPHA:.4f}); {n}"
