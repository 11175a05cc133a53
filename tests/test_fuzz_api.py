"""Fuzz the HTTP API from its own OpenAPI document (schemathesis, in process, bounded), and send
it the awkward inputs fuzzers are known to miss.

Every documented operation gets generated requests, valid and invalid; every answer must be a
documented status with a documented content type and body, and never a 5xx. Both databases:
PostgreSQL refuses some text SQLite stores (NUL characters), so a 500 can hide on one only.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case, HookContext

from producer.keys import create_key
from producer.web.app import create_app
from tests.corpus import encode, xray_like
from tests.helpers import DEMO

# A schema-valid body can still name an unknown model or job (404, accepted by default) or carry
# bytes that are not an image, or a label the model does not have: the document cannot say which
# strings are images or labels, so those refusals count as correct answers to "valid" data.
IMAGE_REFUSALS = ["2XX", "400", "401", "403", "404", "409", "413", "415", "422", "429"]
IMAGE = encode(xray_like(64), "PNG")
CONFIG = schemathesis.Config.from_dict(
    {
        "operations": [
            {
                "include-path-regex": "^/v1/jobs/inference|^/api/pytorch/inference$|^/v1/jobs/route$",
                "checks": {"positive_data_acceptance": {"expected-statuses": IMAGE_REFUSALS}},
            },
            {
                # A backend name that router.toml does not have, or a date that does not exist.
                "include-path-regex": "^/v1/route/decide$|^/v1/reports/costs$",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "401", "403", "422", "429"]}},
            },
            {
                # Model versions the registry does not have, an end date already past, two
                # versions of different models: the document cannot say which strings are which.
                # And Starlette answers OPTIONS on a path with a GET and a POST route with the
                # first route's `Allow` only: a known limit of its routing, not a wrong answer.
                "include-path-regex": "^/v1/abtests",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2XX", "401", "403", "404", "409", "422", "429"]
                    },
                    "allow_header_conformance": {"enabled": False},
                },
            },
            {
                "include-path-regex": "/feedback$",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "401", "403", "404", "422"]}},
            },
        ]
    }
)
# Only the document is read from this app; requests go to a fresh app built inside each test,
# once the test's database and settings are in place. (`schemathesis.pytest.from_fixture` would
# build it from a fixture, but it breaks on pytest 9.2: it writes the removed `Node._nodeid`.)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=CONFIG)


@schema.hook
def flatmap_case(_context: HookContext, case: Case[Any]) -> st.SearchStrategy[Case[Any]]:
    """Half of the schema-valid submissions name the demo model and carry a real image, so the
    fuzzer also reaches the accepting path (with its generated ids and keys), not only refusals."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return st.just(case)
    if "model" not in case.body and "model_name" not in case.body:
        return st.just(case)
    return st.sampled_from([case, _with_real_image(case)])


def _with_real_image(case: Case[Any]) -> Case[Any]:
    """`case` with the demo model and a real image. Built as a new case: schemathesis would
    relabel an edited multipart body (bytes) as schema-violating; a new case is judged by the
    response checks alone (no 5xx, documented status, content type and body)."""
    assert isinstance(case.body, dict)
    body: dict[str, Any] = dict(case.body)
    encoded = base64.b64encode(IMAGE).decode()
    for name in ("model", "model_name"):
        if name in body:
            body[name] = DEMO
    if "file" in body:
        body["file"] = IMAGE
    if "image" in body:
        body["image"] = encoded
    if isinstance(body.get("images"), list):
        body["images"] = [{**item, "image": encoded} for item in body["images"]]
    real: Case[Any] = case.operation.Case(
        path_parameters=case.path_parameters,
        headers=case.headers,
        query=case.query,
        body=body,
        media_type=case.media_type,
    )
    return real


@pytest.fixture()
def api_key(migrated: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A key with no rate limit, so the fuzzer reaches the routes instead of the limiter."""
    from onnxq.settings import get_settings

    monkeypatch.setenv("ONNXQ_RATE_LIMIT_PER_MINUTE", "0")
    monkeypatch.setenv("ONNXQ_FAILED_AUTH_PER_MINUTE", "0")  # schemathesis sends many bad keys
    # No worker runs here: the seed endpoint should give up waiting at once and answer 202.
    monkeypatch.setenv("ONNXQ_SYNC_WAIT_S", "0.1")
    get_settings.cache_clear()
    return create_key("fuzz").secret


@schema.parametrize()
@settings(
    max_examples=40,  # per operation: about 15 s for the whole document per database on 2 cores
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_answers_as_documented(case: Case[Any], api_key: str) -> None:
    case.call_and_validate(app=create_app(), headers={"Authorization": f"Bearer {api_key}"})


JSON = {"content-type": "application/json"}
PNG_B64 = base64.b64encode(IMAGE).decode()
EMPTY_MULTIPART = {"content-type": "multipart/form-data; boundary=xyz"}
TEXT = {"content-type": "text/plain"}
SUBMIT, BATCH = "/v1/jobs/inference", "/v1/jobs/inference:batch"
BAD_JSON_NUMBER = b'{"model": 1' + b"0" * 5000 + b"}"
LONE_SURROGATE = b'{"model": "\\ud800", "image": "eA=="}'


@pytest.mark.parametrize(
    ("method", "url", "request_args", "status", "code"),
    [
        ("POST", SUBMIT, {"json": {"model": 5, "image": ["x"]}}, 422, "validation_error"),
        ("POST", SUBMIT, {"json": [1, 2]}, 422, "validation_error"),
        ("POST", SUBMIT, {"content": BAD_JSON_NUMBER, "headers": JSON}, 400, "bad_request"),
        ("POST", SUBMIT, {"json": {"model": "a", "image": "eA==", "user_id": 10**400}}, 422, "validation_error"),
        ("POST", SUBMIT, {"content": LONE_SURROGATE, "headers": JSON}, 400, "bad_request"),
        ("POST", SUBMIT, {"json": {"model": DEMO, "image": PNG_B64, "user_id": "a\x00"}}, 422, "validation_error"),
        ("POST", SUBMIT, {"json": {"model": DEMO + "\x00", "image": PNG_B64}}, 422, "validation_error"),
        ("POST", SUBMIT, {"json": {"model": DEMO + "@" + "9" * 30, "image": PNG_B64}}, 404, "unknown_model"),
        ("POST", SUBMIT, {"content": b"", "headers": EMPTY_MULTIPART}, 422, "validation_error"),
        ("POST", SUBMIT, {"content": b"--xyz--\r\n", "headers": EMPTY_MULTIPART}, 422, "validation_error"),
        ("POST", SUBMIT, {"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_request"),
        (
            "POST",
            SUBMIT,
            {"files": {"file": IMAGE}, "data": {"model": DEMO, "user_id": "\x00"}},
            422,
            "validation_error",
        ),
        ("POST", SUBMIT, {"content": b"x", "headers": TEXT}, 415, "unsupported_media_type"),
        (
            "POST",
            BATCH,
            {"json": {"model": DEMO, "images": [{"image": PNG_B64}], "user_id": "\x00"}},
            422,
            "validation_error",
        ),
        ("POST", BATCH, {"content": b"x", "headers": TEXT}, 415, "unsupported_media_type"),
        ("GET", "/v1/jobs/%00", {}, 422, "validation_error"),
        ("GET", "/v1/jobs/%C3%A9%F0%9F%98%80", {}, 404, "job_not_found"),
        ("GET", "/v1/jobs/" + "a" * 5000, {}, 404, "job_not_found"),
        ("POST", "/v1/jobs/abc/feedback", {"json": {"label": 12}}, 422, "validation_error"),
        ("POST", "/v1/jobs/abc/feedback", {"json": {"label": "a\x00"}}, 422, "validation_error"),
        ("POST", "/v1/jobs/%00/feedback", {"json": {"label": "normal"}}, 422, "validation_error"),
        ("GET", BATCH + "/feedback", {}, 405, "method_not_allowed"),
        ("DELETE", "/v1/models", {}, 405, "method_not_allowed"),
        ("GET", "/no/such/route", {}, 404, "not_found"),
    ],
)
def test_awkward_input_gets_a_4xx_in_the_error_shape(
    api_key: str, method: str, url: str, request_args: dict[str, Any], status: int, code: str
) -> None:
    with TestClient(create_app(), headers={"Authorization": f"Bearer {api_key}"}) as client:
        answer = client.request(method, url, **request_args)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert answer.json()["error"]["message"]
