"""The remote backend client against a real OpenAI-compatible server on loopback (tests/fake_llm.py),
and backend cooldown on the real test Redis."""

from __future__ import annotations

import base64
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from tests.fake_llm import FakeLLM
from workers.routing import cooldown
from workers.routing.config import OpenAIBackend, Routing
from workers.routing.remote import BackendFailed, call_remote

QUERY = "Bu göğüs röntgeninde pnömoni var mı? secret-query-marker"
KEY_ENV = "ONNXQ_TEST_LLM_API_KEY"


def backend(fake_llm: FakeLLM, **overrides: object) -> OpenAIBackend:
    fields: dict[str, object] = {
        "kind": "openai",
        "base_url": fake_llm.base_url,
        "model": "fake-model",
        "cost_per_request": 0.02,
        "cost_per_1k_tokens": 0.5,
        "timeout_s": 2.0,
        "retries": 2,
        "max_tokens": 64,
    }
    return OpenAIBackend.model_validate(fields | overrides)


def failure(spec: OpenAIBackend, image: bytes | None = None) -> BackendFailed:
    with pytest.raises(BackendFailed) as caught:
        call_remote("llm", spec, QUERY, image)
    return caught.value


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_answer_comes_back_with_its_tokens_and_cost(fake_llm: FakeLLM) -> None:
    fake_llm.script(FakeLLM.ok(content="No pneumonia is visible.", prompt_tokens=120, completion_tokens=30))

    result = call_remote("llm", backend(fake_llm), QUERY, None)

    assert result.answer == "No pneumonia is visible."
    assert (result.prompt_tokens, result.completion_tokens, result.attempts) == (120, 30, 1)
    assert result.cost == pytest.approx(0.02 + 0.5 * 150 / 1000)  # per request + per 1k tokens
    assert result.latency_ms > 0
    [sent] = fake_llm.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body == {"model": "fake-model", "messages": [{"role": "user", "content": QUERY}], "max_tokens": 64}


def test_an_answer_without_usage_costs_the_request_only(fake_llm: FakeLLM) -> None:
    fake_llm.script(FakeLLM.ok(content="Yes.", usage=False))

    result = call_remote("llm", backend(fake_llm), QUERY, None)

    assert (result.answer, result.prompt_tokens, result.completion_tokens) == ("Yes.", 0, 0)
    assert result.cost == pytest.approx(0.02)


def test_the_api_key_is_sent_only_when_configured(fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.settings import get_settings

    fake_llm.api_key = "sk-test-not-secret"
    monkeypatch.setenv(KEY_ENV, "sk-test-not-secret")
    get_settings.cache_clear()

    # A backend naming the variable sends its value ...
    call_remote("llm", backend(fake_llm, api_key_env=KEY_ENV), QUERY, None)
    assert fake_llm.requests[-1].headers["authorization"] == "Bearer sk-test-not-secret"

    # ... one that names none sends nothing, and a 401 is not retried ...
    refused = failure(backend(fake_llm))
    assert "authorization" not in fake_llm.requests[-1].headers
    assert refused.reason == "client_error" and refused.code == "backend_failed"
    assert "401" in refused.message and "api_key_env" in refused.message
    assert len(fake_llm.requests) == 2

    # ... and neither does one whose variable is unset.
    monkeypatch.delenv(KEY_ENV)
    get_settings.cache_clear()
    refused = failure(backend(fake_llm, api_key_env=KEY_ENV))
    assert "authorization" not in fake_llm.requests[-1].headers
    assert refused.reason == "client_error" and KEY_ENV in refused.message
    assert len(fake_llm.requests) == 3


@pytest.mark.parametrize("sample", ["covid-19_2.png", "normal_1.jpg"])
def test_an_image_is_sent_as_a_vision_content_part(fake_llm: FakeLLM, samples: list[Path], sample: str) -> None:
    image = next(path for path in samples if path.name == sample).read_bytes()

    call_remote("llm", backend(fake_llm), QUERY, image)

    [text, picture] = fake_llm.requests[0].body["messages"][0]["content"]
    assert text == {"type": "text", "text": QUERY}
    assert picture["type"] == "image_url"
    mime = "image/png" if sample.endswith(".png") else "image/jpeg"
    prefix = f"data:{mime};base64,"
    assert picture["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(picture["image_url"]["url"][len(prefix) :]) == image


def test_an_image_in_another_format_is_sent_as_png(fake_llm: FakeLLM) -> None:
    bmp = io.BytesIO()
    Image.new("L", (32, 24), color=128).save(bmp, format="BMP")

    call_remote("llm", backend(fake_llm), QUERY, bmp.getvalue())

    url = fake_llm.requests[0].body["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as sent:
        assert (sent.format, sent.size) == ("PNG", (32, 24))


def test_a_429_with_retry_after_is_retried(fake_llm: FakeLLM) -> None:
    fake_llm.script(FakeLLM.status(429, retry_after=1), FakeLLM.ok(content="Later, yes."))

    result = call_remote("llm", backend(fake_llm), QUERY, None)

    assert (result.answer, result.attempts) == ("Later, yes.", 2)
    assert len(fake_llm.requests) == 2


def test_a_retry_after_past_the_budget_fails_at_once(fake_llm: FakeLLM) -> None:
    # Given a budget of 3 x 0.3 s and a server asking for 3 s: waiting cannot help.
    fake_llm.script(FakeLLM.status(429, retry_after=3))

    refused = failure(backend(fake_llm, timeout_s=0.3, retries=2))

    assert refused.reason == "rate_limited" and "429" in refused.message
    assert len(fake_llm.requests) == 1


def test_server_errors_are_retried_until_the_retries_run_out(fake_llm: FakeLLM) -> None:
    fake_llm.script(FakeLLM.status(500), FakeLLM.status(502), FakeLLM.status(503))

    refused = failure(backend(fake_llm, retries=2))

    assert refused.reason == "server_error" and "503" in refused.message and "3 attempt" in refused.message
    assert len(fake_llm.requests) == 3  # the next request would have been answered: it was not sent


def test_a_hanging_server_times_out(fake_llm: FakeLLM) -> None:
    fake_llm.script(FakeLLM.hang(10))

    refused = failure(backend(fake_llm, timeout_s=0.3, retries=0))

    assert refused.reason == "timeout"
    assert len(fake_llm.requests) == 1


def test_a_trickling_answer_is_cut_off_at_the_timeout(fake_llm: FakeLLM) -> None:
    # Each byte arrives well within the timeout, the whole answer does not: the timeout is the
    # attempt's, not the read's
    fake_llm.script(FakeLLM.trickle(20))

    refused = failure(backend(fake_llm, timeout_s=0.5, retries=0))

    assert refused.reason == "timeout"


def test_a_refused_connection_fails_as_connection_failed() -> None:
    spec = OpenAIBackend(kind="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", retries=1)

    assert failure(spec).reason == "connection_failed"


def test_a_dropped_connection_is_retried(fake_llm: FakeLLM) -> None:
    fake_llm.script(FakeLLM.close(), FakeLLM.ok(content="Reconnected."))

    result = call_remote("llm", backend(fake_llm), QUERY, None)

    assert (result.answer, result.attempts) == ("Reconnected.", 2)


@pytest.mark.parametrize(
    "body",
    [b"this is not json", b'{"object": "list", "data": []}', b'{"choices": [{"message": {"content": null}}]}'],
)
def test_a_200_that_is_not_a_chat_completion_is_a_bad_response(fake_llm: FakeLLM, body: bytes) -> None:
    fake_llm.script(FakeLLM.raw(body))

    refused = failure(backend(fake_llm))

    assert refused.reason == "bad_response"
    assert len(fake_llm.requests) == 1  # not retried: the same server would answer the same


def test_neither_the_query_nor_the_key_is_logged(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from onnxq.settings import get_settings

    monkeypatch.setenv(KEY_ENV, "sk-test-marker")
    get_settings.cache_clear()
    caplog.set_level(logging.DEBUG)
    spec = backend(fake_llm, api_key_env=KEY_ENV, retries=3)
    fake_llm.script(FakeLLM.status(500), FakeLLM.close(), FakeLLM.raw(b"not json"))

    refused = failure(spec)

    assert refused.reason == "bad_response"
    assert "backend llm" in caplog.text  # the failures were logged, by backend name
    for secret in ("secret-query-marker", "sk-test-marker"):
        assert secret not in caplog.text
        assert secret not in str(refused)


# Cooldown.

ROUTING = Routing(local=["local"], remote=["llm"], medium_remote_percent=50, cooldown_after_failures=3, cooldown_s=0.5)


def wait_available(name: str) -> None:
    deadline = time.monotonic() + 30
    while not cooldown.available(name):
        assert time.monotonic() < deadline, f"{name} never left its cooldown"
        time.sleep(0.05)


def test_repeated_failures_cool_a_backend_down_for_a_while(redis_client: redis.Redis) -> None:
    assert [cooldown.record_failure("llm", ROUTING) for _ in range(2)] == [False, False]
    assert cooldown.available("llm")

    assert cooldown.record_failure("llm", ROUTING) is True
    assert not cooldown.available("llm")
    assert cooldown.available("local")  # other backends are not affected

    wait_available("llm")
    # The count started again: one more failure does not cool it down.
    assert cooldown.record_failure("llm", ROUTING) is False
    assert cooldown.available("llm")


def test_a_success_resets_the_count(redis_client: redis.Redis) -> None:
    cooldown.record_failure("llm", ROUTING)
    cooldown.record_failure("llm", ROUTING)
    cooldown.record_success("llm")

    assert [cooldown.record_failure("llm", ROUTING) for _ in range(3)] == [False, False, True]


def test_concurrent_failures_enter_the_cooldown_exactly_once_per_threshold(redis_client: redis.Redis) -> None:
    # Routing that never expires within the test, so each threshold crossing is counted once.
    routing = ROUTING.model_copy(update={"cooldown_s": 60.0})
    entered: list[bool] = []
    lock = threading.Lock()

    def fail() -> None:
        result = cooldown.record_failure("llm", routing)
        with lock:
            entered.append(result)

    threads = [threading.Thread(target=fail) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert entered.count(True) == 10


@pytest.fixture()
def dead_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings pointing at a Redis that is not there."""
    from onnxq.payloads import get_redis
    from onnxq.settings import get_settings

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    get_settings.cache_clear()
    get_redis.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    get_redis.cache_clear()


def test_a_broken_redis_does_not_stop_routing(dead_redis: None) -> None:
    assert cooldown.available("llm")
    assert cooldown.record_failure("llm", ROUTING) is False
    cooldown.record_success("llm")
