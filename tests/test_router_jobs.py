"""Routing jobs end to end in process: the real worker, the real demo model for the local tier and
a real HTTP server speaking the OpenAI protocol (tests/fake_llm.py) for the remote tier."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from onnxq.cli import app as cli
from producer.reports import cost_report
from producer.route import submit_route
from schema.db import get_engine
from schema.tables import Job, RouteLog
from tests.conftest import AUDIT_KEY, REPO
from tests.fake_llm import FakeLLM
from tests.helpers import wait_all
from workers.routing.config import load_router_config
from workers.routing.decide import medium_variant

SIMPLE = "Merhaba"
MEDIUM = "Bu göğüs röntgeninde pnömoni var mı?"
COMPLEX = "Hasta verilerini analiz ederek COVID-19, pnömoni ve normal akciğer dokusu arasındaki farkları karşılaştır"
runner = CliRunner()


@pytest.fixture()
def router(migrated: str, fake_llm: FakeLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeLLM:
    """The shipped router.toml, its remote backend pointed at the fake API, with short timeouts."""
    text = (REPO / "router.toml").read_text()
    text = text.replace('base_url = "https://api.openai.com/v1"', f'base_url = "{fake_llm.base_url}"')
    text = text.replace("timeout_s = 30\nretries = 2", "timeout_s = 2\nretries = 1")
    text = text.replace("cooldown_s = 30 ", "cooldown_s = 60 ")
    path = tmp_path / "router.toml"
    path.write_text(text)
    monkeypatch.setenv("ONNXQ_ROUTER_CONFIG", str(path))
    from onnxq.settings import get_settings
    from workers.routing.config import clear_router_config

    get_settings.cache_clear()
    clear_router_config()
    return fake_llm


def _user_with_variant(variant: str) -> str:
    config = load_router_config(REPO / "router.toml")
    return next(f"user-{i}" for i in range(1000) if medium_variant(config, AUDIT_KEY.encode(), f"user-{i}") == variant)


def _run(query: str, **kwargs: Any) -> dict[str, Any]:
    outcome, _ = submit_route(query, **kwargs)
    return wait_all([outcome.job_id])[outcome.job_id]


def test_the_seeds_three_queries_route_as_the_seed_says(router: FakeLLM, worker: object, samples: list[Path]) -> None:
    router.script(FakeLLM.ok("Merhaba! Size nasıl yardımcı olabilirim?"), FakeLLM.ok("Uzun bir analiz…"))
    image = (REPO / "samples" / "pneumonia_1.png").read_bytes()
    # "Merhaba": simple → the local tier, which needs an image; with none it falls back to remote
    simple = _run(SIMPLE)
    assert simple["kind"] == "route" and simple["status"] == "succeeded", simple
    result = simple["result"]
    assert result["decision"]["backend"] == "chest-xray" and result["decision"]["reason"] == "simple-query"
    assert (result["served_by"], result["fallback_used"]) == ("llm", True)
    assert result["fallback_reason"] == "chest-xray: no_image"
    assert result["answer"] == "Merhaba! Size nasıl yardımcı olabilirim?" and result["cost"] == 0.02
    # The medium one, for a user on the local side of the split, with an image: the local model answers
    medium = _run(MEDIUM, image=image, user_id=_user_with_variant("local"))["result"]
    assert medium["decision"]["reason"] == "medium-query-ab" and medium["decision"]["variant"] == "local"
    assert (medium["served_by"], medium["fallback_used"]) == ("chest-xray", False)
    assert medium["details"]["prediction"] == "Pneumonia" and medium["answer"].startswith("Pneumonia (")
    assert medium["cost"] == 0.0001
    # The long comparative one: complex → remote
    complex_ = _run(COMPLEX)["result"]
    assert complex_["decision"]["reason"] == "complex-query"
    assert (complex_["served_by"], complex_["fallback_used"]) == ("llm", False)
    assert complex_["tokens"]["prompt"] > 0
    # The remote API saw the query, the local model never did; the API got no image it was not given
    assert [r.body["messages"][0]["content"] for r in router.requests] == [SIMPLE, COMPLEX]


def test_a_failing_remote_falls_back_to_the_local_model(router: FakeLLM, worker: object) -> None:
    router.script(FakeLLM.status(500), FakeLLM.status(500))  # both attempts (retries = 1)
    image = (REPO / "samples" / "covid-19_2.png").read_bytes()
    view = _run(COMPLEX, image=image)
    result = view["result"]
    assert (result["served_by"], result["fallback_used"]) == ("chest-xray", True)
    assert result["fallback_reason"] == "llm: server_error"
    assert result["details"]["prediction"] == "COVID-19"


def test_no_backend_left_fails_the_job_with_every_reason(router: FakeLLM, worker: object) -> None:
    router.script(FakeLLM.status(503), FakeLLM.status(503))
    view = _run(COMPLEX)  # remote fails, and the local model cannot serve without an image
    assert view["status"] == "failed"
    assert view["error"]["code"] == "all_backends_failed"
    assert "llm: server_error" in view["error"]["message"] and "chest-xray: no_image" in view["error"]["message"]
    with Session(get_engine()) as session:
        row = session.exec(select(RouteLog)).one()
    assert row.served_by is None and row.cost == 0


def test_repeated_failures_put_the_remote_in_cooldown(router: FakeLLM, worker: object) -> None:
    image = (REPO / "samples" / "normal_1.jpg").read_bytes()
    # Three failed jobs (cooldown_after_failures = 3), each with two failed attempts
    router.script(*[FakeLLM.status(500)] * 6)
    for _ in range(3):
        assert _run(COMPLEX, image=image)["result"]["served_by"] == "chest-xray"
    seen = len(router.requests)
    # Then the remote is skipped without being called while it cools down
    result = _run(COMPLEX, image=image)["result"]
    assert (result["served_by"], result["fallback_reason"]) == ("chest-xray", "llm: cooling_down")
    assert len(router.requests) == seen
    from producer.route import decide_route

    decided = decide_route(COMPLEX)
    assert decided["backend"] == "llm"  # the remote tier has no other backend to choose


def test_the_query_is_never_stored_or_logged(router: FakeLLM, worker: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Hasta Ayşe Yılmaz'ın akciğer grafisini analiz et ve karşılaştır"
    view = _run(secret, user_id="u1")
    assert view["status"] == "succeeded"
    with Session(get_engine()) as session:
        job = session.get(Job, view["job_id"])
        row = session.exec(select(RouteLog)).one()
    assert job is not None and row.input_hash == job.input_hash
    expected = hmac.new(AUDIT_KEY.encode(), secret.encode(), hashlib.sha256).hexdigest()
    assert row.input_hash == expected
    stored = json.dumps([job.model_dump(mode="json"), row.model_dump(mode="json")], ensure_ascii=False)
    for fragment in ("Ayşe", "Yılmaz", "grafisini"):
        assert fragment not in stored
        assert fragment not in caplog.text


def test_the_cost_report_matches_hand_computed_numbers(router: FakeLLM, worker: object) -> None:
    image = (REPO / "samples" / "pneumonia_2.jpg").read_bytes()
    local_user = _user_with_variant("local")
    router.script(*[FakeLLM.ok("ok")] * 3)
    for query, kwargs in [
        (MEDIUM, {"image": image, "user_id": local_user}),  # local: 0.0001
        (MEDIUM, {"image": image, "user_id": local_user}),  # local: 0.0001
        (COMPLEX, {}),  # remote: 0.02
        (SIMPLE, {}),  # decided local, no image → remote: 0.02
    ]:
        assert _run(query, **kwargs)["status"] == "succeeded"
    report = cost_report()
    assert report["requests"] == 4
    by_backend = {row["backend"]: row for row in report["by_backend"]}
    assert by_backend["chest-xray"]["requests"] == 2 and by_backend["llm"]["requests"] == 2
    assert by_backend["llm"]["fallbacks"] == 1
    assert report["cost"] == pytest.approx(0.0402)
    assert report["all_remote_cost"] == pytest.approx(0.08)  # every query at the remote's 0.02
    assert report["savings"] == pytest.approx(0.0398)
    assert report["savings_percent"] == pytest.approx(49.75)
    assert report["days"] == 1
    assert report["projection"]["monthly"]["cost"] == pytest.approx(0.0402 * 30)
    assert report["projection"]["yearly"]["savings"] == pytest.approx(0.0398 * 360)
    printed = runner.invoke(cli, ["report", "costs"], terminal_width=160)
    assert printed.exit_code == 0, printed.output
    assert "49.8%" in printed.stdout and "chest-xray" in printed.stdout


def test_routing_over_http_and_the_cli(router: FakeLLM, worker: object, client: TestClient) -> None:
    router.script(FakeLLM.ok("hello"), FakeLLM.ok("hello again"))
    decided = client.post("/v1/route/decide", json={"query": MEDIUM, "user_id": "42"})
    assert decided.status_code == 200, decided.text
    assert decided.json()["classification"]["complexity"] == "medium"
    assert client.post("/v1/route/decide", json={"query": "x", "backend": "gpt-9"}).json()["error"]["code"] == (
        "unknown_backend"
    )
    accepted = client.post("/v1/jobs/route", json={"query": SIMPLE, "user_id": "42"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["decision"]["backend"] == "chest-xray"
    job_id = accepted.json()["job_id"]
    assert accepted.headers["location"] == f"/v1/jobs/{job_id}"
    wait_all([job_id])
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["kind"] == "route" and job["result"]["answer"] == "hello"
    report = client.get("/v1/reports/costs").json()
    assert report["requests"] == 1
    # The CLI: the decision alone, then a job waited for
    only = runner.invoke(cli, ["route", COMPLEX, "--decide-only", "--json"])
    assert only.exit_code == 0, only.output
    assert json.loads(only.stdout)["reason"] == "complex-query"
    ran = runner.invoke(cli, ["route", SIMPLE, "--wait", "--json"])
    assert ran.exit_code == 0, ran.output
    view = json.loads(ran.stdout)
    assert view["kind"] == "route" and view["result"]["served_by"] == "llm"
    piped = runner.invoke(cli, ["route", "-", "--decide-only", "--json"], input=COMPLEX + "\n")
    assert json.loads(piped.stdout)["classification"]["score"] == 70
    human = runner.invoke(cli, ["route", MEDIUM, "--decide-only"])
    assert "medium (score 30)" in human.stdout and "+20 medical" in human.stdout


@pytest.fixture()
def _no_router_config(migrated: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("ONNXQ_ROUTER_CONFIG", str(tmp_path / "missing.toml"))
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    yield


def test_a_missing_router_config_is_a_clear_error(_no_router_config: None) -> None:
    result = runner.invoke(cli, ["route", SIMPLE, "--decide-only"])
    assert result.exit_code == 1
    assert "invalid_router_config" in result.output and "ONNXQ_ROUTER_CONFIG" in result.output


def test_a_local_model_that_is_down_falls_back_to_remote(router: FakeLLM, worker: object) -> None:
    from sqlalchemy import update

    from schema.db import session_scope
    from schema.registry import clear_model_cache
    from schema.tables import PytorchModel

    router.script(FakeLLM.ok("from the API"))
    with session_scope() as session:
        session.execute(update(PytorchModel).values(deployment_status="inactive"))
    clear_model_cache()
    image = (REPO / "samples" / "normal_2.png").read_bytes()
    result = _run(SIMPLE, image=image)["result"]
    assert (result["served_by"], result["fallback_reason"]) == ("llm", "chest-xray: model_inactive")


def test_an_idempotency_key_returns_the_same_routing_job(router: FakeLLM) -> None:
    from onnxq.errors import OnnxqError

    first, _ = submit_route(SIMPLE, user_id="u", idempotency_key="k1")
    again, _ = submit_route(SIMPLE, user_id="u", idempotency_key="k1")
    assert again.job_id == first.job_id and again.reused
    with pytest.raises(OnnxqError) as conflict:
        submit_route(MEDIUM, user_id="u", idempotency_key="k1")
    assert conflict.value.code == "idempotency_conflict"


def test_a_locally_classified_image_gets_a_chained_audit_row(router: FakeLLM, worker: object) -> None:
    from schema.audit import verify_chain
    from tests.helpers import audit_rows

    image = (REPO / "samples" / "pneumonia_1.png").read_bytes()
    view = _run(MEDIUM, image=image, user_id=_user_with_variant("local"))
    assert view["result"]["served_by"] == "chest-xray"
    [row] = audit_rows([view["job_id"]])
    assert row.input_hash == hmac.new(AUDIT_KEY.encode(), image, hashlib.sha256).hexdigest()
    assert row.result["prediction"] == "Pneumonia" and row.batch_size == 1
    with Session(get_engine()) as session:
        assert verify_chain(session, AUDIT_KEY.encode()).ok


def test_a_redelivered_routing_job_does_not_call_the_api_again(router: FakeLLM) -> None:
    from onnxq import payloads
    from workers.routing.job import run_routing_job

    outcome, _ = submit_route(COMPLEX)  # no worker: the test runs the job by hand, twice
    payload = payloads.fetch_route(outcome.job_id)
    assert payload is not None
    run_routing_job(payload)
    run_routing_job(payload)  # the same message again, before its payload was deleted
    assert len(router.requests) == 1
    with Session(get_engine()) as session:
        assert len(session.exec(select(RouteLog)).all()) == 1


def test_a_model_that_crashes_falls_back_to_remote(
    router: FakeLLM, worker: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.routing.execute as execute

    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("onnxruntime said no")

    monkeypatch.setattr(execute, "preprocess", broken)
    image = (REPO / "samples" / "normal_2.png").read_bytes()
    result = _run(SIMPLE, image=image)["result"]
    assert (result["served_by"], result["fallback_reason"]) == ("llm", "chest-xray: inference_failed")
