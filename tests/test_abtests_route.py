"""Routing A/B tests: the router's medium queries split between two backends by the A/B-test
machinery (the same keyed assignment, evaluation, verdicts and `onnxq abtest` / `/v1/abtests`),
end to end through the real worker, the demo model and the fake OpenAI-compatible API."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from onnxq.cli import app as cli
from onnxq.errors import OnnxqError
from onnxq.split import variant_for
from producer.route import decide_route, submit_route
from schema.abtests import ROUTE, ROUTER, RunningTest, clear_abtest_cache, create_test
from schema.db import get_engine, session_scope
from schema.tables import Job, RouteLog, utcnow
from tests.conftest import AUDIT_KEY, REPO
from tests.fake_llm import FakeLLM
from tests.helpers import DEMO, wait_all
from tests.test_router_jobs import COMPLEX, MEDIUM, SIMPLE, router
from workers.abtests import evaluate_all, show_test
from workers.routing.config import load_router_config
from workers.routing.decide import decide

__all__ = ["router"]  # the fixture, imported for these tests
KEY = AUDIT_KEY.encode()
runner = CliRunner()


def _users(test: str, split: int, arm: str, n: int) -> list[str]:
    """`n` user ids that land on `arm` of test `test`."""
    users = (f"user-{i}" for i in range(10_000))
    return [u for u in users if variant_for(KEY, test, split, u) == arm][:n]


def test_a_running_routing_test_splits_only_medium_queries_sticky_and_to_its_split() -> None:
    config = load_router_config(REPO / "router.toml")
    test = RunningTest(7, "medium-split", 30, "chest-xray", "llm")
    users = [f"user-{i}" for i in range(4000)]
    decisions = [decide(MEDIUM, config, KEY, user_id=u, test=test) for u in users]
    # Medium queries go to the arm's backend, marked with the test and the arm
    assert {(d.reason, d.ab_test_id) for d in decisions} == {("medium-query-abtest", 7)}
    assert {(d.variant, d.backend, d.tier) for d in decisions} == {("A", "chest-xray", "local"), ("B", "llm", "remote")}
    # B gets its 30% of users (3 standard deviations: ±0.022), the same user the same arm every time
    share_b = sum(d.variant == "B" for d in decisions) / len(users)
    assert abs(share_b - 0.30) < 0.022
    assert [d.variant for d in decisions[:200]] == [
        decide(MEDIUM, config, KEY, user_id=u, test=test).variant for u in users[:200]
    ]
    # The assignment is the A/B tests' own (a model test with the same name splits users alike)
    assert [d.variant for d in decisions[:200]] == [variant_for(KEY, "medium-split", 30, u) for u in users[:200]]
    # Simple, complex and forced queries are not in the test
    assert decide(SIMPLE, config, KEY, test=test).reason == "simple-query"
    assert decide(COMPLEX, config, KEY, test=test).reason == "complex-query"
    forced = decide(MEDIUM, config, KEY, backend="llm", test=test)
    assert (forced.reason, forced.ab_test_id, forced.variant) == ("forced", None, None)


def test_a_test_naming_a_backend_the_config_lost_falls_back_to_the_configured_split() -> None:
    config = load_router_config(REPO / "router.toml")
    gone = RunningTest(8, "stale", 50, "chest-xray", "removed-backend")
    decision = decide(MEDIUM, config, KEY, user_id="u1", test=gone)
    assert (decision.reason, decision.ab_test_id) == ("medium-query-ab", None)
    assert decision.variant in ("local", "remote")


def _create(name: str = "r", **options: object) -> None:
    with session_scope() as session:
        create_test(session, name, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend_a": "chest-xray", "backend_b": "nope"}, "No backend named 'nope'"),
        ({"backend_a": "llm", "backend_b": "llm"}, "two different backends"),
        ({"backend_a": "chest-xray", "backend_b": "llm", "metric": "accuracy"}, "latency, cost"),
        ({"backend_a": "chest-xray", "backend_b": "llm", "auto_promote": True}, "cannot promote"),
        ({"backend_a": "chest-xray"}, "either two model versions"),
        ({"backend_a": "chest-xray", "backend_b": "llm", "model_a": f"{DEMO}@1"}, "either two model versions"),
        ({}, "either two model versions"),
    ],
)
def test_a_bad_routing_test_is_a_validation_error(router: FakeLLM, options: dict[str, object], message: str) -> None:
    with pytest.raises(OnnxqError) as raised:
        _create(**options)
    assert raised.value.code == "validation_error" and message in raised.value.message


def test_one_running_routing_test_alongside_model_tests(router: FakeLLM) -> None:
    _create("r1", backend_a="chest-xray", backend_b="llm")
    with pytest.raises(OnnxqError) as raised:
        _create("r2", backend_a="llm", backend_b="chest-xray")
    assert raised.value.code == "abtest_conflict" and "router's medium queries" in raised.value.message
    # The router's test does not block a model test (a model named like the subject either)
    with session_scope() as session:
        from schema.tables import PytorchModel

        v1 = session.exec(select(PytorchModel).where(PytorchModel.model_name == DEMO)).one()
        session.add(PytorchModel(**{**v1.model_dump(exclude={"id"}), "model_version": "2"}))
    _create("m1", model_a=f"{DEMO}@1", model_b=f"{DEMO}@2")


def test_a_cheaper_backend_wins_a_cost_test_end_to_end(router: FakeLLM, worker: object) -> None:
    # Given a routing test between the local model (A) and the remote API (B), on cost
    _create("cheaper", backend_a="chest-xray", backend_b="llm", metric="cost", min_samples=4)
    image = (REPO / "samples" / "normal_1.jpg").read_bytes()
    users = _users("cheaper", 50, "A", 5) + _users("cheaper", 50, "B", 5)
    # When medium queries (with an image, which the local model can classify) are routed
    outcomes = [submit_route(MEDIUM, image=image, user_id=u) for u in users]
    assert {decision["reason"] for _, decision in outcomes} == {"medium-query-abtest"}
    views = wait_all([o.job_id for o, _ in outcomes])
    assert all(v["status"] == "succeeded" for v in views.values()), views
    # Then each arm's backend served its users, and the job and the route log carry the arm
    served = [
        (views[o.job_id]["result"]["decision"]["variant"], views[o.job_id]["result"]["served_by"]) for o, _ in outcomes
    ]
    assert served == [("A", "chest-xray")] * 5 + [("B", "llm")] * 5
    with Session(get_engine()) as session:
        jobs = session.exec(select(Job).where(Job.kind == "route")).all()
        assert {(j.ab_test_id is not None, j.variant) for j in jobs} == {(True, "A"), (True, "B")}
        assert sorted(r.variant or "" for r in session.exec(select(RouteLog)).all()) == ["A"] * 5 + ["B"] * 5
    # The live view shows both arms' latency and cost
    live = show_test("cheaper")
    assert (live.kind, live.model, live.model_a, live.model_b) == (ROUTE, ROUTER, "chest-xray", "llm")
    assert (live.arms["A"].requests, live.arms["B"].requests) == (5, 5)
    assert (live.arms["A"].mean_cost, live.arms["B"].mean_cost) == (0.0001, 0.02)
    assert live.arms["A"].mean_ms is not None and live.arms["B"].p95_ms is not None
    # When the scheduler evaluates it: A is cheaper at the first look, and the test closes
    assert evaluate_all(utcnow()) == ["cheaper"]
    closed = show_test("cheaper")
    assert closed.status == "closed" and closed.winner == "chest-xray" and closed.p_value == 0.0
    assert closed.verdict.startswith("closed: A cheaper")
    # Then medium queries are split by the config again
    clear_abtest_cache()
    assert decide_route(MEDIUM, user_id=users[0])["reason"] == "medium-query-ab"


def test_fallbacks_and_failures_count_on_the_assigned_arm(router: FakeLLM, worker: object) -> None:
    # Given a routing test between the local model (A) and the remote API (B)
    _create("honest", backend_a="chest-xray", backend_b="llm", metric="latency")
    user_a, user_b = _users("honest", 50, "A", 1)[0], _users("honest", 50, "B", 1)[0]
    # When A's user sends no image (the local model cannot answer: the API does), and the API
    # fails for B's user, who sent no image either (nobody can answer)
    router.script(FakeLLM.ok("from the API"), FakeLLM.status(500), FakeLLM.status(500))
    fell_back, _ = submit_route(MEDIUM, user_id=user_a)
    wait_all([fell_back.job_id])
    failed, decided = submit_route(MEDIUM, user_id=user_b, idempotency_key="k-honest")
    views = wait_all([fell_back.job_id, failed.job_id])
    assert views[fell_back.job_id]["result"]["served_by"] == "llm"
    assert views[failed.job_id]["status"] == "failed"
    # Then each counts on its own arm, with what it cost and the time it took, failure included
    shown = show_test("honest").arms
    assert (shown["A"].requests, shown["A"].fallbacks, shown["A"].failed, shown["A"].mean_cost) == (1, 1, 0, 0.02)
    assert (shown["B"].requests, shown["B"].fallbacks, shown["B"].failed, shown["B"].mean_cost) == (1, 0, 1, 0.0)
    assert shown["B"].mean_ms is not None and shown["B"].mean_ms > 0
    # And the failed job, asked for again by its idempotency key once the test is closed and its
    # input is gone, still answers with the decision it was made with
    runner.invoke(cli, ["abtest", "close", "honest"])
    clear_abtest_cache()
    _, again = submit_route(MEDIUM, user_id=user_b, idempotency_key="k-honest")
    kept = ("backend", "tier", "reason", "variant", "ab_test_id")
    assert {k: again[k] for k in kept} == {k: decided[k] for k in kept}
    assert (again["reason"], again["variant"]) == ("medium-query-abtest", "B")


def test_a_latency_test_short_of_samples_waits_and_closes_at_its_end_without_a_winner(
    router: FakeLLM, worker: object
) -> None:
    ends = utcnow() + timedelta(hours=1)
    _create("lat", backend_a="chest-xray", backend_b="llm", metric="latency", min_samples=50, ends_at=ends)
    image = (REPO / "samples" / "covid-19_1.jpg").read_bytes()
    outcomes = [submit_route(MEDIUM, image=image, user_id=u) for u in _users("lat", 50, "A", 3)]
    wait_all([o.job_id for o, _ in outcomes])
    # Below the minimum sample: evaluated again and again, it does not close
    for _ in range(3):
        assert evaluate_all(utcnow()) == []
    # At its end it closes, with no winner (arm B served nothing)
    assert evaluate_all(ends + timedelta(minutes=1)) == ["lat"]
    closed = show_test("lat")
    assert closed.winner is None and closed.verdict.startswith("closed: no significant difference")


def test_routing_tests_from_the_cli_and_over_http(router: FakeLLM, client: TestClient) -> None:
    created = runner.invoke(
        cli, ["abtest", "create", "cli-route", "--backend-a", "chest-xray", "--backend-b", "llm", "--split", "25"]
    )
    assert created.exit_code == 0, created.output
    assert "75% of medium routing jobs to chest-xray, 25% to llm" in created.output
    shown = runner.invoke(cli, ["abtest", "show", "cli-route"])
    assert shown.exit_code == 0, shown.output
    assert "A: chest-xray\nB: llm" in shown.output
    assert "mean cost" in shown.output and "accuracy" not in shown.output
    assert json.loads(runner.invoke(cli, ["abtest", "show", "cli-route", "--json"]).output)["metric"] == "latency"
    closed = runner.invoke(cli, ["abtest", "close", "cli-route"])
    assert closed.exit_code == 0 and "closed: no significant difference" in closed.output
    bad = runner.invoke(cli, ["abtest", "create", "x", "--backend-a", "chest-xray", "--backend-b", "nope"])
    assert bad.exit_code == 1 and "No backend named 'nope'" in bad.output
    # Over HTTP
    body = {"name": "http-route", "backend_a": "llm", "backend_b": "chest-xray", "metric": "cost"}
    made = client.post("/v1/abtests", json=body)
    assert made.status_code == 201, made.text
    assert (made.json()["kind"], made.json()["arms"]["A"]["model"], made.json()["metric"]) == (ROUTE, "llm", "cost")
    decided = client.post("/v1/route/decide", json={"query": MEDIUM, "user_id": "someone"})
    assert decided.status_code == 200, decided.text
    assert (decided.json()["reason"], decided.json()["ab_test_id"]) == ("medium-query-abtest", made.json()["id"])
    mixed = client.post("/v1/abtests", json={**body, "name": "mixed", "model_a": f"{DEMO}@1"})
    assert (mixed.status_code, mixed.json()["error"]["code"]) == (422, "validation_error")
    conflict = client.post("/v1/abtests", json={**body, "name": "second"})
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "abtest_conflict")
