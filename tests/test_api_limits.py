"""Bounded bodies on a real uvicorn server (in a thread, on a loopback port): a stalled upload
gets 408, an oversized one 413, before the process holds it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from producer.keys import create_key
from producer.web.app import create_app

STALL_TIMEOUT_S = 1


@pytest.fixture()
def server(migrated: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int, str]]:
    """(host, port, key) of a live server with a 1 s body idle timeout and a 1 MiB body cap."""
    monkeypatch.setenv("ONNXQ_BODY_IDLE_TIMEOUT_S", str(STALL_TIMEOUT_S))
    monkeypatch.setenv("ONNXQ_MAX_BATCH_REQUEST_BYTES", str(1024 * 1024))
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    live = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not live.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield "127.0.0.1", port, create_key("limits").secret
    live.should_exit = True
    thread.join(30)


def _raw_request(host: str, port: int, head: str, body_start: bytes) -> bytes:
    """Send the head and the start of a body, then stall; return what the server answers."""
    with socket.create_connection((host, port), timeout=STALL_TIMEOUT_S * 10) as conn:
        conn.sendall(head.encode() + b"\r\n\r\n" + body_start)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize("path", ["/v1/jobs/inference", "/v1/jobs/" + "0" * 32 + "/feedback"])
def test_a_stalled_body_gets_408(server: tuple[str, int, str], path: str) -> None:
    host, port, key = server
    head = "\r\n".join(
        [
            f"POST {path} HTTP/1.1",
            f"Host: {host}",
            f"Authorization: Bearer {key}",
            "Content-Type: application/json",
            "Content-Length: 1000",
        ]
    )
    answer = _raw_request(host, port, head, b'{"model": ')
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer


def test_a_declared_oversized_body_is_refused_unread(server: tuple[str, int, str]) -> None:
    host, port, key = server
    head = "\r\n".join(
        [
            "POST /v1/jobs/inference:batch HTTP/1.1",
            f"Host: {host}",
            f"Authorization: Bearer {key}",
            "Content-Type: application/json",
            f"Content-Length: {10**9}",
        ]
    )
    answer = _raw_request(host, port, head, b"")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"input_too_large"' in answer


def test_an_oversized_chunked_body_is_cut_off(server: tuple[str, int, str]) -> None:
    host, port, key = server

    def chunks() -> Iterator[bytes]:
        yield b'{"label": "'
        for _ in range(40):  # 2.5 MiB, past the 1 MiB cap; no Content-Length (chunked)
            yield b"x" * 65536
        yield b'"}'

    answer = httpx.post(
        f"http://{host}:{port}/v1/jobs/{'0' * 32}/feedback",
        content=chunks(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "input_too_large"


def test_a_multipart_image_over_the_limit_is_refused_before_it_is_read(server: tuple[str, int, str]) -> None:
    # 11 MiB of "image" in a multipart body: the single-image route's bound, not the batch one's.
    host, port, key = server
    answer = httpx.post(
        f"http://{host}:{port}/v1/jobs/inference",
        files={"file": ("big.png", b"\x89PNG" + b"\x00" * (11 * 1024 * 1024))},
        data={"model": "chest-xray-classifier-demo"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "input_too_large"


def test_a_trickling_body_meets_the_overall_deadline(
    server: tuple[str, int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server whose bodies must be whole within 2 s, fed one byte every half second
    monkeypatch.setenv("ONNXQ_BODY_TIMEOUT_S", "2")
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    live = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    while not live.started:
        time.sleep(0.02)
    port = live.servers[0].sockets[0].getsockname()[1]
    _, _, key = server
    head = "\r\n".join(
        [
            "POST /v1/jobs/inference HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {key}",
            "Content-Type: application/json",
            "Content-Length: 1000",
        ]
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head.encode() + b"\r\n\r\n")
            conn.setblocking(False)
            answer = b""
            for _ in range(20):  # up to 10 s of trickling; each byte is within the 1 s idle timeout
                try:
                    conn.sendall(b" ")
                except OSError:
                    break
                time.sleep(0.5)
                try:
                    answer += conn.recv(65536)
                except BlockingIOError:
                    continue
                if answer:
                    break
    finally:
        live.should_exit = True
        thread.join(30)
    # Then it is cut off at the deadline, not kept open for as long as bytes keep coming
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
