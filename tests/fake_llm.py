"""A stand-in for a paid LLM API: a real HTTP server on a loopback port that speaks the OpenAI
chat-completions protocol, with scripted answers, errors, hangs and dropped connections.

Tests get it through the `fake_llm` fixture (registered in conftest.py):

    fake_llm.script(FakeLLM.status(429, retry_after=1), FakeLLM.ok(content="Yes."))
    spec = OpenAIBackend(kind="openai", base_url=fake_llm.base_url, model="fake")

Each request takes the next scripted behaviour, or answers `ok()` once the script is used up.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one request."""

    kind: str  # "ok", "status", "raw", "hang", "trickle" or "close"
    content: str = "This is a fake answer."
    prompt_tokens: int | None = None  # None: one per word of the request's text
    completion_tokens: int | None = None  # None: one per word of the answer
    usage: bool = True
    status: int = 200
    retry_after: float | None = None
    body: bytes = b""
    seconds: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # the parsed JSON, or None if it was not JSON


@dataclass
class FakeLLM:
    """Controller of the running fake server."""

    base_url: str
    latency_s: float = 0.0  # added before every response
    api_key: str | None = None  # when set, requests without `Authorization: Bearer <it>` get 401
    requests: list[Received] = field(default_factory=list)
    _script: deque[Behaviour] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def ok(
        content: str = "This is a fake answer.",
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        usage: bool = True,
    ) -> Behaviour:
        """A chat completion with `content` and the given token counts (or no `usage` at all)."""
        return Behaviour("ok", content, prompt_tokens, completion_tokens, usage)

    @staticmethod
    def status(code: int, retry_after: float | None = None) -> Behaviour:
        """An OpenAI-style error body with this HTTP status (and a Retry-After header)."""
        return Behaviour("status", status=code, retry_after=retry_after)

    @staticmethod
    def raw(body: bytes, status: int = 200, content_type: str = "application/json") -> Behaviour:
        """Exactly these bytes as the response body."""
        return Behaviour("raw", status=status, body=body, content=content_type)

    @staticmethod
    def hang(seconds: float) -> Behaviour:
        """Say nothing for `seconds`, then answer ok (long after the client gave up)."""
        return Behaviour("hang", seconds=seconds)

    @staticmethod
    def trickle(seconds: float) -> Behaviour:
        """Answer ok, but send the body a byte at a time over `seconds` (each read is quick)."""
        return Behaviour("trickle", seconds=seconds)

    @staticmethod
    def close() -> Behaviour:
        """Drop the connection without a response."""
        return Behaviour("close")

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._script.extend(behaviours)

    def _next(self, received: Received) -> Behaviour:
        with self._lock:
            self.requests.append(received)
            return self._script.popleft() if self._script else self.ok()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs do: the client reuses connections
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows what matters

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        behaviour = fake._next(received)
        if fake.latency_s:
            fake._stopping.wait(fake.latency_s)
        if behaviour.kind == "close":
            self.close_connection = True
            return
        if behaviour.kind == "hang":
            fake._stopping.wait(behaviour.seconds)
        # A hung-up client (it gave up first, as a hang means it to) is not an error here.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._respond(fake, behaviour, received)

    def _respond(self, fake: FakeLLM, behaviour: Behaviour, received: Received) -> None:
        if self.path != "/v1/chat/completions":
            self._send(404, _error("Unknown path.", "invalid_request_error"))
        elif fake.api_key is not None and received.headers.get("authorization") != f"Bearer {fake.api_key}":
            self._send(401, _error("Incorrect API key provided.", "invalid_request_error"))
        elif behaviour.kind == "raw":
            self._send(behaviour.status, behaviour.body, behaviour.content)
        elif behaviour.kind == "status":
            headers = {"Retry-After": f"{behaviour.retry_after:g}"} if behaviour.retry_after is not None else {}
            self._send(behaviour.status, _error(f"Scripted HTTP {behaviour.status}.", "server_error"), headers=headers)
        elif not isinstance(received.body, dict) or not received.body.get("messages"):
            self._send(400, _error("'messages' is a required property.", "invalid_request_error"))
        elif behaviour.kind == "trickle":
            self._trickle(json.dumps(_completion(behaviour, received.body)).encode(), behaviour.seconds, fake)
        else:
            self._send(200, json.dumps(_completion(behaviour, received.body)).encode())

    def _trickle(self, body: bytes, seconds: float, fake: FakeLLM) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for byte in body:
            if fake._stopping.wait(seconds / len(body)):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def _send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test, a dropped connection) is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _error(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def _words(request: dict[str, Any]) -> int:
    """Words of the request's text parts: the fake's stand-in for a tokenizer."""
    words = 0
    for message in request["messages"]:
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        words += sum(len(part.get("text", "").split()) for part in parts if part.get("type") == "text")
    return words


def _completion(behaviour: Behaviour, request: dict[str, Any]) -> dict[str, Any]:
    prompt = behaviour.prompt_tokens if behaviour.prompt_tokens is not None else _words(request)
    completion = (
        behaviour.completion_tokens if behaviour.completion_tokens is not None else len(behaviour.content.split())
    )
    answer: dict[str, Any] = {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": behaviour.content}, "finish_reason": "stop"}
        ],
    }
    if behaviour.usage:
        answer["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return answer


@pytest.fixture()
def fake_llm() -> Iterator[FakeLLM]:
    """A running fake OpenAI-compatible server; `.base_url` ends in /v1."""
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    server.fake = FakeLLM(base_url=f"http://{host!s}:{port}/v1")
    thread = threading.Thread(target=server.serve_forever, name="fake-llm", daemon=True)
    thread.start()
    yield server.fake
    server.fake._stopping.set()  # wakes hanging handlers, so none outlives the test by long
    server.shutdown()
    server.server_close()
    thread.join(10)
